// A guest that does not come up: QEMU, SSH, cloud-init, a dead end seen on the console, the disk.
import { GuestlabError, type GuestlabErrorCode } from './guestlab-error.ts';

/** QEMU failed to start or died; carries the tail of its stderr and of the serial console. */
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

export type DeadEndKind = 'unit-failed' | 'emergency' | 'panic' | 'halted' | 'cpu-stuck';

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
  /** Since QEMU started. */
  readonly elapsedMs: number;
  constructor(guest: string, deadEnd: DeadEnd, phase: string, elapsedMs: number, consoleTail: string) {
    super(`Guest ${guest} ${describe(deadEnd)} (phase: ${phase}, ${(elapsedMs / 1000).toFixed(1)}s after QEMU started), so it will never be ready. ${nextStep(deadEnd)}\n` +
      `--- ${deadEnd.unit ? `${deadEnd.unit}: status and journal` : 'serial console around it'} ---\n${deadEnd.evidence || '(nothing reported)'}\n` +
      `--- serial console, last lines ---\n${consoleTail || '(empty)'}`, { code: 'ERR_GUEST_DEAD_END' });
    this.kind = deadEnd.kind;
    this.unit = deadEnd.unit;
    this.evidence = deadEnd.evidence;
    this.phase = phase;
    this.elapsedMs = elapsedMs;
  }
}

function describe(deadEnd: DeadEnd): string {
  switch (deadEnd.kind) {
    case 'unit-failed': return `reports that ${deadEnd.unit} failed for good during boot`;
    case 'emergency': return 'dropped into emergency mode during boot';
    case 'panic': return 'hit a kernel panic during boot';
    case 'halted': return 'halted during boot';
    case 'cpu-stuck': return 'has a CPU stuck in its kernel during boot (a soft lockup that did not end)';
  }
}

function nextStep(deadEnd: DeadEnd): string {
  if (deadEnd.kind === 'unit-failed') {
    return deadEnd.unit === 'ssh.service' || deadEnd.unit === 'sshd.service'
      ? 'Check what the spec writes into the guest (cloudConfig write_files, bootcmd) for sshd_config or ssh.service changes; the status below says what sshd refused.'
      : 'The status below says why; check what the spec changes in that unit or its configuration.';
  }
  if (deadEnd.kind === 'cpu-stuck') {
    return 'Under TCG this is a hang of the emulated CPU that a new boot does not repeat, and guestlab boots once more by itself: this error means the new boot hung too. Under KVM, the console lines below show the kernel stack it is stuck in.';
  }
  return 'The console lines below show what the guest did; check the image and what the spec changes in its boot (cloudConfig bootcmd, write_files under /etc).';
}

/** The host disk under a guest's overlay filled up and QEMU paused the guest. */
export class DiskFullError extends GuestlabError {
  override name = 'DiskFullError';
  constructor(guest: string, dir: string) {
    super(
      `The host disk holding guest ${guest}'s overlay (${dir}) is full; QEMU paused the guest. ` +
        'Free space there or point GUESTLAB_INSTANCES_DIR at a larger disk; the guest cannot continue.',
      { code: 'ERR_DISK_FULL' },
    );
  }
}
