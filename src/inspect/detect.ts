// Which package manager, service manager and socket tool a guest has: found with one fixed
// script, once per executor, and remembered for the executor's lifetime.
import { InspectError } from '../errors.ts';
import { lines, query, type GuestExecutor } from './executor.ts';

export type PackageManager = 'dpkg' | 'rpm' | 'apk';
export type ServiceManager = 'systemd' | 'openrc';
export type SocketTool = 'ss' | 'netstat';

export interface GuestTools {
  packageManager: PackageManager | undefined;
  serviceManager: ServiceManager | undefined;
  socketTool: SocketTool | undefined;
  /** Absolute path of each tool found, by command name ('apk' -> '/sbin/apk'). */
  paths: Readonly<Record<string, string>>;
}

const TOOLS = ['dpkg-query', 'rpm', 'apk', 'systemctl', 'journalctl', 'rc-service', 'ss', 'netstat', 'getent'];

// Prints "tool=/path/to/tool" for each tool found, and "systemd=running" when systemd is the
// init (the test systemd itself uses). The sbin directories are added because a non-root SSH
// session often lacks them (Debian's default PATH; Alpine keeps apk and rc-service in /sbin),
// and the paths found are used as they are, so later commands do not depend on PATH either.
export const DETECT_SCRIPT = [
  'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"',
  `for tool in ${TOOLS.join(' ')}; do`,
  '  found=$(command -v "$tool") && echo "$tool=$found"',
  'done',
  'if [ -d /run/systemd/system ]; then echo systemd=running; fi',
].join('\n');

/** Reads DETECT_SCRIPT's output. The first tool found wins: dpkg before rpm before apk, ss before netstat. */
export function parseDetection(stdout: string): GuestTools {
  const found = new Map<string, string>();
  for (const line of lines(stdout)) {
    const at = line.indexOf('=');
    if (at > 0) found.set(line.slice(0, at), line.slice(at + 1));
  }
  const paths = Object.fromEntries([...found].filter(([tool, path]) => TOOLS.includes(tool) && path.startsWith('/')));
  const packageManager = paths['dpkg-query'] ? 'dpkg' : paths.rpm ? 'rpm' : paths.apk ? 'apk' : undefined;
  const serviceManager = found.get('systemd') === 'running' && paths.systemctl ? 'systemd' : paths['rc-service'] ? 'openrc' : undefined;
  const socketTool = paths.ss ? 'ss' : paths.netstat ? 'netstat' : undefined;
  return { packageManager, serviceManager, socketTool, paths };
}

const detected = new WeakMap<GuestExecutor, Promise<GuestTools>>();

/** The guest's tools, detected on first use; a failed detection is retried next time. */
export function detectTools(executor: GuestExecutor): Promise<GuestTools> {
  let tools = detected.get(executor);
  if (!tools) {
    tools = query(executor, ['sh', '-c', DETECT_SCRIPT], (output) => (output.exitCode === 0 ? parseDetection(output.stdout) : undefined));
    tools.catch(() => detected.delete(executor));
    detected.set(executor, tools);
  }
  return tools;
}

/** Throws an InspectError that says what was looked for when the guest has none of it. */
export function required<T>(executor: GuestExecutor, value: T | undefined, what: string, lookedFor: string): T {
  if (value === undefined) {
    throw new InspectError(`Guest ${executor.name} has no ${what} guestlab can use (looked for ${lookedFor}). Install one in the image or through cloudConfig.`);
  }
  return value;
}
