// A running guest that does not do what a test asked: a command failed, a wait ran out, a unit
// failed, an inspection could not read the answer, the guest is gone.
import { GuestlabError, tailLines } from './guestlab-error.ts';

/** A guest command exited non-zero (or timed out) where success was required. */
export class GuestCommandError extends GuestlabError {
  override name = 'GuestCommandError';
  readonly command: string;
  readonly exitCode: number;
  readonly signal: string | undefined;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  /** The first line of the message, without the output tails. */
  readonly shortMessage: string;

  constructor(fields: {
    command: string;
    exitCode: number;
    signal?: string | undefined;
    stdout: string;
    stderr: string;
    timedOut?: boolean | undefined;
    guest?: string;
    /** What the caller wanted instead, when it was not success (fail(): "to fail"). */
    expected?: string | undefined;
  }) {
    const how = fields.timedOut
      ? 'timed out'
      : fields.signal
        ? `was killed by ${fields.signal}`
        : `exited with code ${fields.exitCode}`;
    const shortMessage = `Command ${how}${fields.guest ? ` in guest ${fields.guest}` : ''}${fields.expected ? `, expected ${fields.expected}` : ''}: ${fields.command}`;
    const tail = tailLines(fields.stderr, 20);
    super(tail ? `${shortMessage}\n--- stderr (last lines) ---\n${tail}` : shortMessage, { code: 'ERR_GUEST_COMMAND' });
    this.shortMessage = shortMessage;
    this.command = fields.command;
    this.exitCode = fields.exitCode;
    this.signal = fields.signal;
    this.stdout = fields.stdout;
    this.stderr = fields.stderr;
    this.timedOut = fields.timedOut ?? false;
  }
}

export class GuestStoppedError extends GuestlabError {
  override name = 'GuestStoppedError';
  constructor(guest: string) {
    super(`Guest ${guest} is stopped; start a new guest with startGuest().`, { code: 'ERR_GUEST_STOPPED' });
  }
}

/** A wait ran out of time; `lastSeen` is what the last probe found. */
export class WaitTimeoutError extends GuestlabError {
  override name = 'WaitTimeoutError';
  readonly lastSeen: string;
  readonly timeoutMs: number;
  constructor(guest: string, what: string, timeoutMs: number, lastSeen: string) {
    super(`Guest ${guest}: timed out after ${timeoutMs} ms waiting for ${what}.\n--- last seen ---\n${lastSeen.trim() || '(nothing)'}`, { code: 'ERR_WAIT_TIMEOUT' });
    this.lastSeen = lastSeen;
    this.timeoutMs = timeoutMs;
  }
}

/** A systemd unit's or OpenRC service's state, as the inspections read it (and UnitFailedError carries it). */
export interface UnitState {
  manager: 'systemd' | 'openrc';
  /** systemd: ActiveState is active or reloading. OpenRC: the status is "started". */
  active: boolean;
  /** systemd's ActiveState ("active", "inactive", "failed", ...) or OpenRC's status ("started", "stopped", "crashed", ...). */
  state: string;
  /** systemd's SubState ("running", "dead", "exited", ...). */
  subState?: string;
  /** systemd's Result ("success", "exit-code", "signal", ...). */
  result?: string;
  /** systemd's LoadState ("loaded", "not-found", "masked", ...). */
  loadState?: string;
  /** False for a unit or service that does not exist (or, under systemd, one that is masked or broken). */
  loaded: boolean;
}

/** "ActiveState=failed, SubState=failed, Result=exit-code" (systemd) or "status: crashed" (OpenRC). */
export function describeUnitState(unit: UnitState): string {
  if (unit.manager === 'openrc') return unit.loaded ? `status: ${unit.state}` : 'no such service';
  const parts = [`ActiveState=${unit.state}`];
  if (unit.subState) parts.push(`SubState=${unit.subState}`);
  if (unit.result) parts.push(`Result=${unit.result}`);
  if (!unit.loaded) parts.push(`LoadState=${unit.loadState}`);
  return parts.join(', ');
}

/** A unit waited for entered the failed state (systemd) or crashed (OpenRC). */
export class UnitFailedError extends GuestlabError {
  override name = 'UnitFailedError';
  readonly unit: string;
  readonly state: UnitState;
  readonly diagnostics: string;
  constructor(guest: string, unit: string, state: UnitState, diagnostics: string) {
    super(`Guest ${guest}: unit ${unit} failed (${describeUnitState(state)}).\n${diagnostics}`, { code: 'ERR_UNIT_FAILED' });
    this.unit = unit;
    this.state = state;
    this.diagnostics = diagnostics;
  }
}

/** The guest lacks the tools an inspection needs, or printed something guestlab cannot read. */
export class InspectError extends GuestlabError {
  override name = 'InspectError';
}
