// Waiting for a guest to reach a state: a poll loop with a deadline whose error shows what was
// last seen. Default deadlines are scaled by the accelerator (TCG runs guests several times
// slower than KVM), see timeoutScale().
import { setTimeout as sleep } from 'node:timers/promises';
import { readEnv } from '../env.ts';
import { AbortedError, WaitTimeoutError } from '../errors.ts';
import type { Accel } from '../qemu/argv.ts';
import { expectPositiveInteger } from '../util/validate.ts';

export interface WaitOptions {
  /** Give up after this long. Default: 30 s under KVM, times timeoutScale() otherwise. */
  timeoutMs?: number;
  /** Pause between two probes. Default 250 ms under KVM, 500 ms under TCG. */
  intervalMs?: number;
  signal?: AbortSignal;
}

export const DEFAULT_WAIT_MS = 30_000;
const TCG_SCALE = 5;

/**
 * How much slower than KVM this guest runs: 1 under KVM, 5 under TCG, or GUESTLAB_TIMEOUT_SCALE
 * (a positive number) when set.
 */
export function timeoutScale(accel: Accel): number {
  return readEnv('GUESTLAB_TIMEOUT_SCALE') ?? (accel === 'kvm' ? 1 : TCG_SCALE);
}

/** One look at the guest: either done (with a value) or not yet (with what was seen). */
export type Probe<T> = { done: true; value: T } | { done: false; seen: string };

export interface PollTarget {
  readonly name: string;
  readonly accel: Accel;
}

/** Probes until done, the deadline, or the signal. A probe that throws ends the wait with its error. */
export async function pollUntil<T>(guest: PollTarget, what: string, options: WaitOptions, probe: () => Promise<Probe<T>>): Promise<T> {
  const timeoutMs = options.timeoutMs === undefined ? Math.round(DEFAULT_WAIT_MS * timeoutScale(guest.accel)) : expectPositiveInteger('timeoutMs', options.timeoutMs);
  const intervalMs = options.intervalMs === undefined ? (guest.accel === 'kvm' ? 250 : 500) : expectPositiveInteger('intervalMs', options.intervalMs);
  const deadline = Date.now() + timeoutMs;
  let seen = '';
  for (;;) {
    if (options.signal?.aborted) throw new AbortedError(`Waiting for ${what} in guest ${guest.name}`, { cause: options.signal.reason });
    const result = await probe();
    if (result.done) return result.value;
    seen = result.seen;
    const left = deadline - Date.now();
    if (left <= 0) throw new WaitTimeoutError(guest.name, what, timeoutMs, seen);
    await sleep(Math.min(intervalMs, left), undefined, { signal: options.signal }).catch(() => undefined);
  }
}
