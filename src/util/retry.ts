// Retrying an attempt until it succeeds, a deadline passes, or retrying has become pointless (the
// guest's QEMU died). Every retry loop in guestlab goes through here, so that each has an overall
// deadline and ends at once when the thing it waits on is gone.
import pRetry, { AbortError } from 'p-retry';

export interface RetryOptions {
  /** Epoch ms: no attempt starts after it; the last attempt's error is thrown then. */
  deadline: number;
  /**
   * Checked before every attempt and after every failure: an Error ends the retries at once and is
   * thrown (e.g. "QEMU exited"), instead of retrying until the deadline.
   */
  stopWhen?: (() => Error | undefined) | undefined;
  /** An error no retry can fix (a host key mismatch): thrown at once. */
  isFinal?: ((error: unknown) => boolean) | undefined;
  signal?: AbortSignal | undefined;
  /** First delay between attempts (default 100 ms), growing by `factor` (default 1.5) up to `maxDelayMs` (default 2 s). */
  minDelayMs?: number;
  maxDelayMs?: number;
  factor?: number;
  /** Called after each failed attempt that will be retried. */
  onRetry?: ((error: unknown, attempt: number) => void) | undefined;
}

export async function retryUntil<T>(attempt: (attemptNumber: number) => Promise<T>, options: RetryOptions): Promise<T> {
  const { stopWhen, isFinal, onRetry, signal } = options;
  const stop = () => {
    const reason = stopWhen?.();
    if (reason) throw new AbortError(reason);
  };
  const before = stopWhen?.();
  if (before) throw before;
  signal?.throwIfAborted();
  // p-retry, given the caller's signal, throws the abort reason even after an attempt that
  // succeeded, and what that attempt took (a lock, a connection) would be lost. So the caller's
  // signal ends only the waits between attempts; an abort during an attempt is seen after it
  // fails, and an attempt that succeeds returns its result.
  const between = new AbortController();
  let attempting = false;
  const onAbort = () => {
    if (!attempting) between.abort(signal!.reason);
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await pRetry(
      async (n) => {
        stop();
        attempting = true;
        try {
          return await attempt(n);
        } catch (error) {
          if (isFinal?.(error)) throw new AbortError(error as Error);
          throw error;
        } finally {
          attempting = false;
        }
      },
      {
        retries: Number.POSITIVE_INFINITY,
        maxRetryTime: Math.max(0, options.deadline - Date.now()),
        minTimeout: options.minDelayMs ?? 100,
        maxTimeout: options.maxDelayMs ?? 2000,
        factor: options.factor ?? 1.5,
        randomize: false,
        signal: between.signal,
        onFailedAttempt: ({ error, attemptNumber }) => {
          // A callback's error ends the retries and is thrown as it is.
          signal?.throwIfAborted();
          const reason = stopWhen?.();
          if (reason) throw reason;
          onRetry?.(error, attemptNumber);
        },
      },
    );
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Polls `check` until it yields a value (not undefined), under the same rules as retryUntil(): the
 * deadline error comes from `onDeadline`.
 */
export async function pollFor<T>(check: () => Promise<T | undefined>, options: RetryOptions & { onDeadline: () => Error }): Promise<T> {
  const notYet = Symbol('not yet');
  try {
    return await retryUntil(async () => {
      const value = await check();
      if (value === undefined) throw Object.assign(new Error('not yet'), { [notYet]: true });
      return value;
    }, options);
  } catch (error) {
    if (error instanceof Error && notYet in error) throw options.onDeadline();
    throw error;
  }
}
