// Rehearsing a configuration change on a throwaway guest: take a checkpoint and an inventory of
// what a change can touch (files under the configuration trees, installed packages, enabled units),
// apply the change, run the checks, report what changed, restore, try the next version.
import { GuestCommandError, GuestlabError } from '../errors.ts';
import { expectString, isPlainObject } from '../util/validate.ts';
import type { ExecOptions, ExecResult } from './started-guest.ts';

/** What rehearsal needs of a guest. StartedGuest is one. */
export interface RehearsalGuest {
  readonly name: string;
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
  writeFile(guestPath: string, content: string | Uint8Array, options?: { mode?: number | string; owner?: string; sudo?: boolean }): Promise<void>;
  checkpoint(label: string, options?: { inventory?: InventoryOptions | false }): Promise<CheckpointInfo>;
  restore(label: string): Promise<RestoreTimings>;
  diffSince(label: string): Promise<InventoryDiff>;
}

export interface CheckpointInfo {
  label: string;
  createdAt: Date;
  /** How long QEMU took to save the disk and memory state (the guest is paused meanwhile). */
  saveMs: number;
  /** Size of the saved memory state, from `info snapshots`, when QEMU reports it. */
  vmStateBytes?: number | undefined;
}

export interface RestoreTimings {
  /** QEMU loadvm. */
  loadMs: number;
  /** From the restored guest to an authenticated SSH session with the clock set right. */
  reconnectMs: number;
  totalMs: number;
}

/** A change to apply, in this order: files, then commands, then a script, then a playbook. All as root. */
export interface GuestChange {
  files?: { path: string; content: string | Uint8Array; mode?: number | string; owner?: string }[];
  /** argv lists run one after another; the first that fails ends the change. */
  commands?: string[][];
  /** A shell script run with `sh -e`. */
  script?: string;
  /** An Ansible playbook (YAML text) run inside the guest against itself (needs ansible-playbook there). */
  playbook?: string;
}

export interface ChangeStep {
  what: string;
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export interface AppliedChange {
  ok: boolean;
  steps: ChangeStep[];
}

/** A check: an argv that must exit 0, named or not, or a function that throws on failure. */
export type RehearsalCheck = string[] | { name: string; argv: string[] } | { name: string; run: (guest: RehearsalGuest) => Promise<unknown> };

export interface CheckResult {
  name: string;
  ok: boolean;
  /** Output of a command check, or the error message of a function check. */
  output: string;
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
if command -v systemctl >/dev/null; then systemctl list-unit-files --state=enabled --no-legend --plain 2>/dev/null | awk '{print $1}'; fi
`;

/** Takes the inventory of the guest's configuration, packages and enabled units. */
export async function takeInventory(guest: Pick<RehearsalGuest, 'exec' | 'name'>, options: InventoryOptions = {}): Promise<GuestInventory> {
  const paths = (options.paths ?? DEFAULT_INVENTORY_PATHS).map((p, i) => expectString(`paths[${i}]`, p, /^\//, 'use absolute paths'));
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

/** Applies a change as root, step by step; stops at the first failing step (ok: false, the step says why). */
export async function applyChange(guest: RehearsalGuest, change: GuestChange): Promise<AppliedChange> {
  if (!isPlainObject(change as unknown)) throw new TypeError('Expected a change such as { files: [...], commands: [[...]], script, playbook }');
  const unknown = Object.keys(change).filter((k) => !['files', 'commands', 'script', 'playbook'].includes(k));
  if (unknown.length) throw new TypeError(`Unknown change option \`${unknown[0]}\`; known: files, commands, script, playbook`);
  const steps: ChangeStep[] = [];
  const step = async (what: string, run: () => Promise<Pick<ExecResult, 'exitCode' | 'stdout' | 'stderr'>>) => {
    const started = performance.now();
    const result = await run();
    steps.push({ what, exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr, durationMs: Math.round(performance.now() - started) });
    return result.exitCode === 0;
  };
  for (const file of change.files ?? []) {
    const ok = await step(`write ${file.path}`, async () => {
      try {
        await guest.writeFile(file.path, file.content, { mode: file.mode, owner: file.owner ?? 'root:root', sudo: true });
        return { exitCode: 0, stdout: '', stderr: '' };
      } catch (error) {
        return { exitCode: 1, stdout: '', stderr: (error as Error).message };
      }
    });
    if (!ok) return { ok: false, steps };
  }
  for (const argv of change.commands ?? []) {
    if (!Array.isArray(argv) || argv.some((a) => typeof a !== 'string')) throw new TypeError('Expected `commands` to be a list of argv lists, e.g. [["systemctl", "reload", "ssh"]]');
    if (!(await step(argv.join(' '), () => guest.exec(argv, { sudo: true })))) return { ok: false, steps };
  }
  if (change.script !== undefined && !(await step('script', () => guest.exec(['sh', '-e'], { stdin: change.script, sudo: true })))) return { ok: false, steps };
  if (change.playbook !== undefined) {
    const ok = await step('playbook', () =>
      guest.exec(['sh', '-c', 'set -e; command -v ansible-playbook >/dev/null || { echo "ansible-playbook is not installed in this guest; add ansible to the image recipe" >&2; exit 127; }; f=$(mktemp --suffix=.yml); trap \'rm -f "$f"\' EXIT; cat > "$f"; ansible-playbook -i localhost, -c local "$f"'], {
        stdin: change.playbook,
        sudo: true,
      }),
    );
    if (!ok) return { ok: false, steps };
  }
  return { ok: true, steps };
}

/** Runs checks in order, all of them (a failing one does not stop the others). */
export async function runChecks(guest: RehearsalGuest, checks: RehearsalCheck[]): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  for (const check of checks) {
    if (Array.isArray(check)) {
      const r = await guest.exec(check, { sudo: true });
      results.push({ name: check.join(' '), ok: r.exitCode === 0, output: (r.stdout + r.stderr).trim() });
    } else if ('argv' in check) {
      const r = await guest.exec(check.argv, { sudo: true });
      results.push({ name: check.name, ok: r.exitCode === 0, output: (r.stdout + r.stderr).trim() });
    } else {
      try {
        const value = await check.run(guest);
        results.push({ name: check.name, ok: true, output: value === undefined ? '' : String(value) });
      } catch (error) {
        results.push({ name: check.name, ok: false, output: (error as Error).message });
      }
    }
  }
  return results;
}

export interface Attempt {
  /** The change applied and every check passed. */
  ok: boolean;
  applied: AppliedChange;
  checks: CheckResult[];
  /** What the change did, against the rehearsal's checkpoint. */
  diff: InventoryDiff;
}

/**
 * The sysadmin's loop on one guest: `attempt(change, checks)` applies a change and checks it,
 * `reset()` returns the guest to the checkpoint taken when the rehearsal began.
 */
export class Rehearsal {
  readonly guest: RehearsalGuest;
  readonly label: string;
  readonly checkpoint: CheckpointInfo;
  readonly attempts: Attempt[] = [];

  private constructor(guest: RehearsalGuest, label: string, checkpoint: CheckpointInfo) {
    this.guest = guest;
    this.label = label;
    this.checkpoint = checkpoint;
  }

  static async begin(guest: RehearsalGuest, label = 'rehearsal', inventory: InventoryOptions = {}): Promise<Rehearsal> {
    return new Rehearsal(guest, label, await guest.checkpoint(label, { inventory }));
  }

  async attempt(change: GuestChange, checks: RehearsalCheck[] = []): Promise<Attempt> {
    const applied = await applyChange(this.guest, change);
    const results = applied.ok ? await runChecks(this.guest, checks) : [];
    const attempt = { ok: applied.ok && results.every((c) => c.ok), applied, checks: results, diff: await this.guest.diffSince(this.label) };
    this.attempts.push(attempt);
    return attempt;
  }

  /** Back to the checkpoint: disk, memory, services, as they were. */
  reset(): Promise<RestoreTimings> {
    return this.guest.restore(this.label);
  }
}

/** Explains a failed attempt: the failing step or checks, and the diff. */
export function describeAttempt(attempt: Attempt): string {
  const failedStep = attempt.applied.steps.find((s) => s.exitCode !== 0);
  const lines = [attempt.ok ? 'change applied, all checks passed' : 'change failed'];
  if (failedStep) lines.push(`step "${failedStep.what}" exited ${failedStep.exitCode}: ${(failedStep.stderr || failedStep.stdout).trim()}`);
  for (const check of attempt.checks) lines.push(`${check.ok ? 'ok  ' : 'FAIL'} ${check.name}${check.ok || !check.output ? '' : `: ${check.output}`}`);
  lines.push('changes:', formatDiff(attempt.diff));
  return lines.join('\n');
}

export function checkpointLabel(label: unknown): string {
  const value = expectString('label', label, /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'use letters, digits, ".", "_" and "-" (at most 64)');
  if (/^\d+$/.test(value)) throw new GuestlabError(`Checkpoint label "${value}" is all digits, which QEMU would take for a snapshot id; add a letter`);
  return value;
}
