// Every error guestlab throws on purpose is a GuestlabError with a stable `code`, so callers
// can branch on fields instead of parsing text. Messages carry the evidence and the next step.

export type GuestlabErrorCode =
  | 'ERR_GUESTLAB'
  | 'ERR_HOST_REQUIREMENT'
  | 'ERR_UNKNOWN_IMAGE'
  | 'ERR_UNKNOWN_FIXTURE'
  | 'ERR_CONFIG_FILE'
  | 'ERR_IMAGE_BUILD'
  | 'ERR_IMAGE_CORRUPT'
  | 'ERR_IMAGE_ARCHIVE'
  | 'ERR_QEMU'
  | 'ERR_BOOT_TIMEOUT'
  | 'ERR_HOST_KEY_MISMATCH'
  | 'ERR_SSH'
  | 'ERR_CLOUD_INIT'
  | 'ERR_GUEST_COMMAND'
  | 'ERR_GUEST_STOPPED'
  | 'ERR_LOCK_TIMEOUT'
  | 'ERR_BUDGET'
  | 'ERR_BUDGET_DEADLOCK'
  | 'ERR_UNSAFE_DIRECTORY'
  | 'ERR_DISK_FULL'
  | 'ERR_WAIT_TIMEOUT'
  | 'ERR_UNIT_FAILED'
  | 'ERR_GUEST_DEAD_END'
  | 'ERR_ABORTED'
  | 'ERR_DOWNLOAD'
  | 'ERR_NOT_A_RECIPE';

export class GuestlabError extends Error {
  override name = 'GuestlabError';
  readonly code: GuestlabErrorCode;

  constructor(message: string, options: { code?: GuestlabErrorCode; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code ?? 'ERR_GUESTLAB';
  }
}

/** A host tool or capability is missing; the message is the doctor's line for it. */
export class HostRequirementError extends GuestlabError {
  override name = 'HostRequirementError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_HOST_REQUIREMENT' });
  }
}

/** A YAML recipe or fixture is unreadable or invalid; names the file and, when known, the line. */
export class ConfigFileError extends GuestlabError {
  override name = 'ConfigFileError';
  readonly file: string;
  readonly line: number | undefined;
  constructor(file: string, line: number | undefined, problem: string, options: { cause?: unknown } = {}) {
    super(`${file}${line === undefined ? '' : `:${line}`}: ${problem}`, { ...options, code: 'ERR_CONFIG_FILE' });
    this.file = file;
    this.line = line;
  }
}

export class ImageBuildError extends GuestlabError {
  override name = 'ImageBuildError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_IMAGE_BUILD' });
  }
}

/** QEMU failed to start or died; carries the tail of its stderr and of the serial console. */
/** A cached image's files do not match the digests recorded when it was built or imported. */
export class ImageCorruptError extends GuestlabError {
  override name = 'ImageCorruptError';
  constructor(message: string) {
    super(message, { code: 'ERR_IMAGE_CORRUPT' });
  }
}

/** An image archive (guestlab image export/import) is unreadable, unsafe or does not verify. */
export class ImageArchiveError extends GuestlabError {
  override name = 'ImageArchiveError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_IMAGE_ARCHIVE' });
  }
}

export class QemuError extends GuestlabError {
  override name = 'QemuError';
  constructor(message: string, options: { cause?: unknown; code?: GuestlabErrorCode } = {}) {
    super(message, { code: 'ERR_QEMU', ...options });
  }
}

export class BootTimeoutError extends GuestlabError {
  override name = 'BootTimeoutError';
  readonly timeoutMs: number;
  readonly phase: string;
  constructor(message: string, timeoutMs: number, phase: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_BOOT_TIMEOUT' });
    this.timeoutMs = timeoutMs;
    this.phase = phase;
  }
}

/** The guest served a host key other than the pinned one: the connection was refused. */
export class HostKeyMismatchError extends GuestlabError {
  override name = 'HostKeyMismatchError';
  readonly expectedFingerprint: string;
  readonly actualFingerprint: string;
  constructor(endpoint: string, expectedFingerprint: string, actualFingerprint: string) {
    super(
      `Host key mismatch at ${endpoint}: expected ${expectedFingerprint}, the server offered ${actualFingerprint}. ` +
        'The connection was refused. Another process may be listening on that port, or the guest did not take the ' +
        'host key from cloud-init (check that the image runs cloud-init before sshd).',
      { code: 'ERR_HOST_KEY_MISMATCH' },
    );
    this.expectedFingerprint = expectedFingerprint;
    this.actualFingerprint = actualFingerprint;
  }
}

export class SshError extends GuestlabError {
  override name = 'SshError';
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: 'ERR_SSH' });
  }
}

export class CloudInitError extends GuestlabError {
  override name = 'CloudInitError';
  readonly detail: string;
  constructor(message: string, detail: string) {
    super(message, { code: 'ERR_CLOUD_INIT' });
    this.detail = detail;
  }
}

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

export class LockTimeoutError extends GuestlabError {
  override name = 'LockTimeoutError';
  constructor(message: string) {
    super(message, { code: 'ERR_LOCK_TIMEOUT' });
  }
}

export class AbortedError extends GuestlabError {
  override name = 'AbortedError';
  constructor(what: string, options: { cause?: unknown } = {}) {
    super(`${what} was aborted`, { ...options, code: 'ERR_ABORTED' });
  }
}

/** The last `count` non-empty-trailing lines of a text, for error messages. */
export function tailLines(text: string, count: number): string {
  const lines = text.replace(/\s+$/, '').split('\n');
  return lines.slice(-count).join('\n');
}

export type DeadEndKind = 'unit-failed' | 'emergency' | 'panic' | 'halted';

/** A state a booting guest cannot get out of by itself, as its serial console told it. */
export interface DeadEnd {
  kind: DeadEndKind;
  /** The failed unit (unit-failed only). */
  unit?: string | undefined;
  /** What the guest said: the unit's status and journal lines, or the console lines around the event. */
  evidence: string;
}

/** The guest reached a state from which the boot cannot succeed; `deadEnd` holds its evidence. */
export class GuestDeadEndError extends GuestlabError {
  override name = 'GuestDeadEndError';
  readonly kind: DeadEndKind;
  readonly unit: string | undefined;
  readonly evidence: string;
  readonly phase: string;
  constructor(guest: string, deadEnd: DeadEnd, phase: string, elapsedMs: number, consoleTail: string) {
    super(`Guest ${guest} ${describe(deadEnd)} (phase: ${phase}, ${(elapsedMs / 1000).toFixed(1)}s after QEMU started), so it will never be ready. ${nextStep(deadEnd)}\n` +
      `--- ${deadEnd.unit ? `${deadEnd.unit}: status and journal` : 'serial console around it'} ---\n${deadEnd.evidence || '(nothing reported)'}\n` +
      `--- serial console, last lines ---\n${consoleTail || '(empty)'}`, { code: 'ERR_GUEST_DEAD_END' });
    this.kind = deadEnd.kind;
    this.unit = deadEnd.unit;
    this.evidence = deadEnd.evidence;
    this.phase = phase;
  }
}

function describe(deadEnd: DeadEnd): string {
  switch (deadEnd.kind) {
    case 'unit-failed': return `reports that ${deadEnd.unit} failed for good during boot`;
    case 'emergency': return 'dropped into emergency mode during boot';
    case 'panic': return 'hit a kernel panic during boot';
    case 'halted': return 'halted during boot';
  }
}

function nextStep(deadEnd: DeadEnd): string {
  if (deadEnd.kind === 'unit-failed') {
    return deadEnd.unit === 'ssh.service' || deadEnd.unit === 'sshd.service'
      ? 'Check what the spec writes into the guest (cloudConfig write_files, bootcmd) for sshd_config or ssh.service changes; the status below says what sshd refused.'
      : 'The status below says why; check what the spec changes in that unit or its configuration.';
  }
  return 'The console lines below show what the guest did; check the image and what the spec changes in its boot (cloudConfig bootcmd, write_files under /etc).';
}


/** A request that can never fit the whole budget. */
export class BudgetExceededError extends GuestlabError {
  override name = 'BudgetExceededError';
  constructor(message: string) {
    super(message, { code: 'ERR_BUDGET' });
  }
}

/**
 * Processes that hold leases and each wait for a lease that only the others' release would free:
 * nothing would ever move, so the waiting request fails instead.
 */
export class BudgetDeadlockError extends GuestlabError {
  override name = 'BudgetDeadlockError';
  readonly holders: readonly { guest: string; pid: number; cpus: number; memoryMiB: number }[];
  constructor(guest: string, holders: readonly { guest: string; pid: number; cpus: number; memoryMiB: number }[], afterMs: number) {
    super(
      `Guest ${guest} waited ${afterMs / 1000} s for the budget in a deadlock: its process holds leases and waits, and every other holder waits too. ` +
        `Holders: ${holders.map((h) => `${h.guest} (pid ${h.pid}, ${h.cpus} CPU, ${h.memoryMiB} MiB)`).join(', ')}. ` +
        'Start fewer guests at once per process (stop one before starting the next), give them fewer cpus/memoryMiB, ' +
        'or raise GUESTLAB_BUDGET_CPUS / GUESTLAB_BUDGET_MEMORY_MIB.',
      { code: 'ERR_BUDGET_DEADLOCK' },
    );
    this.holders = holders;
  }
}
