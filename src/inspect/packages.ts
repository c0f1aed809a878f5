// Is a package installed, and which version: dpkg-query (Debian, Ubuntu), rpm (Fedora, Alma),
// apk (Alpine).
import { expectString } from '../util/validate.ts';
import { detectTools, required, type PackageManager } from './detect.ts';
import { lines, query, type ExecOutput, type GuestExecutor } from './executor.ts';

export interface PackageInfo {
  installed: boolean;
  /** The installed version as the package manager prints it ("1.22.1-9", "1.24.0-1.fc39", "1.24.0-r15"). */
  version?: string;
  manager: PackageManager;
}

// No globs (dpkg-query and apk would match several packages), no leading dash (an option);
// ":arch" is dpkg's multiarch qualifier.
const PACKAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*(?::[A-Za-z0-9_-]+)?$/;

export function packageQueryArgv(manager: PackageManager, tool: string, name: string): string[] {
  switch (manager) {
    case 'dpkg':
      return [tool, '-W', '-f', '${Status}\\t${Version}\\n', name];
    case 'rpm':
      return [tool, '-q', '--qf', '%{VERSION}-%{RELEASE}\\n', name];
    case 'apk':
      // -v makes `info -e` print name-version instead of the bare name.
      return [tool, '-v', 'info', '-e', name];
  }
}

/** `dpkg-query -W -f '${Status}\t${Version}\n'`: installed only in state "installed" (held or not). */
export function parseDpkgQuery(output: ExecOutput): PackageInfo | undefined {
  const manager = 'dpkg';
  if (output.exitCode === 1 && /no packages found matching/i.test(output.stderr)) return { installed: false, manager };
  if (output.exitCode !== 0) return undefined;
  // One row per architecture for a multiarch package: "want ok state<TAB>version", e.g.
  // "hold ok installed". A package that is not installed has an empty version (trimmed away).
  const rows = lines(output.stdout).map((line) => line.split('\t'));
  if (rows.length === 0 || rows.some((row) => row.length > 2 || row[0]!.split(' ').length !== 3)) return undefined;
  const installed = rows.find(([status]) => status!.split(' ')[2] === 'installed');
  return installed?.[1] ? { installed: true, version: installed[1], manager } : { installed: false, manager };
}

/** `rpm -q --qf '%{VERSION}-%{RELEASE}\n'`; with several versions installed (kernels), the first. */
export function parseRpmQuery(output: ExecOutput): PackageInfo | undefined {
  const manager = 'rpm';
  // rpm says "package X is not installed" on stdout.
  if (output.exitCode !== 0) return /is not installed/.test(output.stdout + output.stderr) ? { installed: false, manager } : undefined;
  const [version] = lines(output.stdout);
  return version === undefined ? undefined : { installed: true, version, manager };
}

/** `apk -v info -e NAME`: "name-version" when installed; nothing and exit 1 when not. */
export function parseApkInfo(output: ExecOutput): PackageInfo | undefined {
  const manager = 'apk';
  const [line] = lines(output.stdout);
  if (output.exitCode !== 0) return line === undefined && output.stderr.trim() === '' ? { installed: false, manager } : undefined;
  if (line === undefined) return undefined;
  const version = splitApkPackage(line.trim()).version;
  return version === undefined ? { installed: true, manager } : { installed: true, version, manager };
}

/**
 * Splits apk's "name-version" ("font-adobe-100dpi-1.0.4-r0"). Names may hold dashes and digits,
 * so the version is the last dash-separated part that starts with a digit, together with the
 * "-rN" package release after it.
 */
export function splitApkPackage(text: string): { name: string; version?: string } {
  const parts = text.split('-');
  const release = parts.length > 2 && /^r\d+$/.test(parts.at(-1)!) ? 2 : 1;
  const start = parts.length - release;
  if (start < 1 || !/^\d/.test(parts[start]!)) return { name: text };
  return { name: parts.slice(0, start).join('-'), version: parts.slice(start).join('-') };
}

const PARSERS = { dpkg: parseDpkgQuery, rpm: parseRpmQuery, apk: parseApkInfo };
const TOOL = { dpkg: 'dpkg-query', rpm: 'rpm', apk: 'apk' };

export async function packageInfo(executor: GuestExecutor, name: string): Promise<PackageInfo> {
  expectString('name', name, PACKAGE_NAME, 'a package name has no spaces or wildcards and does not start with "-"');
  const tools = await detectTools(executor);
  const manager = required(executor, tools.packageManager, 'package manager', 'dpkg-query, rpm, apk');
  return query(executor, packageQueryArgv(manager, tools.paths[TOOL[manager]]!, name), PARSERS[manager]);
}

/**
 * The version without its epoch ("2:" in "2:9.0.1378-2") and without the packaging revision after
 * the last dash (Debian revision, rpm release, apk "-rN"): the upstream version.
 */
export function upstreamVersion(version: string): string {
  const withoutEpoch = version.replace(/^\d+:/, '');
  const dash = withoutEpoch.lastIndexOf('-');
  return dash > 0 ? withoutEpoch.slice(0, dash) : withoutEpoch;
}
