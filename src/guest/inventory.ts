// The inventory of what a configuration change can touch: files under the configuration trees
// (mode, owner, sha256 or link target), installed packages and enabled units, taken in one pass as
// root, and the difference between two inventories.
import { GuestCommandError } from '../errors.ts';
import { expectString } from '../util/validate.ts';
import type { ExecOptions, ExecResult } from './types.ts';

/** What an inventory needs of a guest. */
export interface InventoryGuest {
  readonly name: string;
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
}

export interface InventoryOptions {
  /** Trees whose files are listed with mode, owner and sha256 (default: DEFAULT_INVENTORY_PATHS). */
  paths?: string[];
  /** Files left out: exact paths, or prefixes ending in '/'. Default: DEFAULT_INVENTORY_IGNORE. */
  ignore?: string[];
}

export const DEFAULT_INVENTORY_PATHS = ['/etc', '/usr/local', '/opt', '/srv', '/var/www'];
/** Files that change without anyone changing the configuration. */
export const DEFAULT_INVENTORY_IGNORE = ['/etc/ld.so.cache', '/etc/resolv.conf', '/etc/adjtime', '/etc/machine-id'];

export interface FileEntry {
  type: 'file' | 'link' | 'dir';
  mode: string;
  owner: string;
  /** sha256 of a file, or the target of a link. */
  content: string;
}

export interface GuestInventory {
  files: Map<string, FileEntry>;
  packages: Map<string, string>;
  enabledUnits: Set<string>;
}

export interface InventoryDiff {
  files: { added: string[]; removed: string[]; changed: { path: string; what: string[] }[] };
  packages: { installed: string[]; removed: string[]; changed: { name: string; from: string; to: string }[] };
  units: { enabled: string[]; disabled: string[] };
}

// One pass, as root: files (with type, mode, owner, and sha256 or link target), packages from
// whichever package manager the guest has, and enabled systemd units. Paths come as arguments.
const INVENTORY_SCRIPT = `
echo '@files'
find "$@" -xdev \\( -type f -o -type l -o -type d \\) -printf '%y\\t%m\\t%u:%g\\t%p\\t%l\\n' 2>/dev/null || true
echo '@sha256'
find "$@" -xdev -type f -print0 2>/dev/null | xargs -0 -r sha256sum 2>/dev/null || true
echo '@packages'
if command -v dpkg-query >/dev/null; then dpkg-query -W -f='\${db:Status-Abbrev}\\t\${Package}\\t\${Version}\\n' | awk -F'\\t' '$1 ~ /^ii/ {print $2 "\\t" $3}'
elif command -v rpm >/dev/null; then rpm -qa --qf '%{NAME}\\t%{VERSION}-%{RELEASE}\\n'
elif command -v apk >/dev/null; then apk info -v 2>/dev/null | sed -E 's/^(.+)-([^-]+-r[0-9]+)$/\\1\\t\\2/'
fi
echo '@units'
if command -v systemctl >/dev/null; then
  # Offline (read from the unit files here, as systemd would): asked of PID 1, the listing took 15 s
  # under TCG and past the bus's 25 s timeout on a busy host ("Connection timed out"). A failure
  # is the inventory's failure: an empty list would read as every unit disabled.
  units=$(SYSTEMD_OFFLINE=1 systemctl list-unit-files --state=enabled --no-legend --plain) || { echo "guestlab inventory: systemctl list-unit-files failed (exit $?)" >&2; exit 3; }
  printf '%s\n' "$units" | awk 'NF {print $1}'
fi
`;

/** Takes the inventory of the guest's configuration, packages and enabled units. */
export async function takeInventory(guest: InventoryGuest, options: InventoryOptions = {}): Promise<GuestInventory> {
  const paths = (options.paths ?? DEFAULT_INVENTORY_PATHS).map((p, i) => expectString(`paths[${i}]`, p, /^\//, 'use absolute paths'));
  // The empty unit lists seen before were systemctl timing out on the bus (its error went to
  // /dev/null): the script now lists unit files offline, and a failing systemctl fails the inventory.
  const result = await guest.exec(['sh', '-c', INVENTORY_SCRIPT, 'sh', ...paths], { sudo: true, timeoutMs: 300_000 });
  if (result.exitCode !== 0) throw new GuestCommandError({ command: 'inventory', exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr, guest: guest.name });
  return parseInventory(result.stdout, options.ignore ?? DEFAULT_INVENTORY_IGNORE);
}

/** Pure: the inventory script's output -> inventory. */
export function parseInventory(output: string, ignore: string[] = DEFAULT_INVENTORY_IGNORE): GuestInventory {
  const sections = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of output.split('\n')) {
    if (/^@(files|sha256|packages|units)$/.test(line)) sections.set(line.slice(1), (current = []));
    else if (line && current) current.push(line);
  }
  const ignored = (p: string) => ignore.some((i) => (i.endsWith('/') ? p.startsWith(i) : p === i));
  const files = new Map<string, FileEntry>();
  for (const line of sections.get('files') ?? []) {
    const [type, mode, owner, file, target] = line.split('\t');
    if (!file || ignored(file)) continue;
    files.set(file, { type: type === 'l' ? 'link' : type === 'd' ? 'dir' : 'file', mode: mode!.padStart(4, '0'), owner: owner!, content: type === 'l' ? (target ?? '') : '' });
  }
  for (const line of sections.get('sha256') ?? []) {
    const m = /^([0-9a-f]{64}) {2}(.*)$/.exec(line);
    const entry = m && files.get(m[2]!);
    if (entry) entry.content = m[1]!;
  }
  const packages = new Map<string, string>();
  for (const line of sections.get('packages') ?? []) {
    const [name, version] = line.split('\t');
    if (name && version !== undefined) packages.set(name, version);
  }
  return { files, packages, enabledUnits: new Set(sections.get('units') ?? []) };
}

/** Pure: what changed from `before` to `after`, each list sorted. A directory changes with its mode or owner, not its entries. */
export function diffInventories(before: GuestInventory, after: GuestInventory): InventoryDiff {
  const sorted = (list: string[]) => list.sort();
  const changed: InventoryDiff['files']['changed'] = [];
  for (const [file, now] of after.files) {
    const then = before.files.get(file);
    if (!then) continue;
    const what = [
      then.type !== now.type && `type ${then.type} -> ${now.type}`,
      then.mode !== now.mode && `mode ${then.mode} -> ${now.mode}`,
      then.owner !== now.owner && `owner ${then.owner} -> ${now.owner}`,
      then.content !== now.content && now.type !== 'dir' && (now.type === 'link' ? `target ${then.content} -> ${now.content}` : 'content'),
    ].filter((w): w is string => typeof w === 'string');
    if (what.length) changed.push({ path: file, what });
  }
  const pkgChanged: InventoryDiff['packages']['changed'] = [];
  for (const [name, to] of after.packages) {
    const from = before.packages.get(name);
    if (from !== undefined && from !== to) pkgChanged.push({ name, from, to });
  }
  return {
    files: {
      added: sorted([...after.files.keys()].filter((f) => !before.files.has(f))),
      removed: sorted([...before.files.keys()].filter((f) => !after.files.has(f))),
      changed: changed.sort((a, b) => a.path.localeCompare(b.path)),
    },
    packages: {
      installed: sorted([...after.packages.keys()].filter((p) => !before.packages.has(p))),
      removed: sorted([...before.packages.keys()].filter((p) => !after.packages.has(p))),
      changed: pkgChanged.sort((a, b) => a.name.localeCompare(b.name)),
    },
    units: {
      enabled: sorted([...after.enabledUnits].filter((u) => !before.enabledUnits.has(u))),
      disabled: sorted([...before.enabledUnits].filter((u) => !after.enabledUnits.has(u))),
    },
  };
}

/** The diff as a few readable lines (for logs and test messages). */
export function formatDiff(diff: InventoryDiff): string {
  const lines = [
    ...diff.files.added.map((f) => `+ ${f}`),
    ...diff.files.removed.map((f) => `- ${f}`),
    ...diff.files.changed.map((c) => `~ ${c.path} (${c.what.join(', ')})`),
    ...diff.packages.installed.map((p) => `+ package ${p}`),
    ...diff.packages.removed.map((p) => `- package ${p}`),
    ...diff.packages.changed.map((p) => `~ package ${p.name} ${p.from} -> ${p.to}`),
    ...diff.units.enabled.map((u) => `+ enabled ${u}`),
    ...diff.units.disabled.map((u) => `- enabled ${u}`),
  ];
  return lines.length ? lines.join('\n') : '(no changes)';
}
