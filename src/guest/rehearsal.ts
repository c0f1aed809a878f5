// Rehearsing a configuration change on a throwaway guest: take a checkpoint and an inventory of
// what a change can touch (files under the configuration trees, installed packages, enabled units),
// apply the change, run the checks, report what changed, restore, try the next version.
import { GuestCommandError, GuestlabError } from '../errors.ts';
import { expectString, isPlainObject } from '../util/validate.ts';
import type { CheckpointInfo, RestoreTimings } from './checkpoints.ts';
import { formatDiff, type InventoryDiff, type InventoryOptions } from './inventory.ts';
import type { ExecOptions, ExecResult } from './types.ts';

export type { CheckpointInfo, RestoreTimings } from './checkpoints.ts';
export { DEFAULT_INVENTORY_IGNORE, DEFAULT_INVENTORY_PATHS, formatDiff, type InventoryDiff, type InventoryOptions } from './inventory.ts';

/** What rehearsal needs of a guest. StartedGuest is one. */
export interface RehearsalGuest {
  readonly name: string;
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
  writeFile(guestPath: string, content: string | Uint8Array, options?: { mode?: number | string; owner?: string; sudo?: boolean }): Promise<void>;
  checkpoint(label: string, options?: { inventory?: InventoryOptions | false }): Promise<CheckpointInfo>;
  restore(label: string): Promise<RestoreTimings>;
  diffSince(label: string): Promise<InventoryDiff>;
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
