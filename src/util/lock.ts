// A host-wide mutex that cannot go stale: it is a listening abstract unix socket named after
// the lock, and the kernel releases the name the moment the holding process dies (SIGKILL,
// OOM, crash). Every process and vitest worker in this network namespace sees the same names.
import { createHash } from 'node:crypto';
import net from 'node:net';
import { AbortedError, LockTimeoutError } from '../errors.ts';
import { retryUntil } from './retry.ts';

export interface HeldLock {
  readonly name: string;
  release(): Promise<void>;
}

export interface LockOptions {
  /** Give up after this long (default: wait forever, or until `signal` aborts). */
  timeoutMs?: number;
  signal?: AbortSignal | undefined;
  /** Called once when the lock is busy and the caller has to wait. */
  onWait?: () => void;
  pollMs?: number;
}

function socketName(name: string): string {
  // Abstract names are limited to 107 bytes; a digest keeps any lock name within that.
  return '\0guestlab-lock-' + createHash('sha256').update(name).digest('hex').slice(0, 40);
}

function tryListen(address: string): Promise<net.Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EADDRINUSE') resolve(undefined);
      else reject(error);
    });
    server.listen(address, () => {
      server.unref();
      resolve(server);
    });
  });
}

/**
 * Take the lock `name` (any string, e.g. the path of what it guards), waiting while it is held: by
 * default for as long as it takes (the holder may be building an image), else until `timeoutMs`.
 */
export async function acquireLock(name: string, options: LockOptions = {}): Promise<HeldLock> {
  const address = socketName(name);
  const pollMs = options.pollMs ?? 250;
  const { signal } = options;
  let announced = false;
  if (signal?.aborted) throw new AbortedError(`Waiting for lock ${name}`, { cause: signal.reason });
  // Busy is retried until the deadline; any other error (the socket cannot be created) ends the wait.
  const busy = new LockTimeoutError(`Timed out after ${options.timeoutMs} ms waiting for lock ${name}; another guestlab process holds it.`);
  let server: net.Server;
  try {
    server = await retryUntil(async () => {
      const listening = await tryListen(address);
      if (listening) return listening;
      if (!announced) {
        announced = true;
        options.onWait?.();
      }
      throw busy;
    }, {
      deadline: options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs,
      signal,
      isFinal: (error) => error !== busy,
      minDelayMs: pollMs,
      maxDelayMs: pollMs,
      factor: 1,
    });
  } catch (error) {
    if (signal?.aborted && error === signal.reason) throw new AbortedError(`Waiting for lock ${name}`, { cause: signal.reason });
    throw error;
  }
  let released = false;
  return {
    name,
    release: () =>
      new Promise<void>((resolve) => {
        if (released) return resolve();
        released = true;
        server.close(() => resolve());
      }),
  };
}

/** Run `fn` while holding the lock `name`. */
export async function withLock<T>(name: string, options: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(name, options);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
