// A mutex kept as a file in a private directory (ensureOwnedPrivateDir), so that no other user can
// take or hold it, unlike an abstract unix socket, whose name any local user can bind. The lock
// file names its holder by pid and start time: a lock left by a dead process is taken over by the
// next one that waits, and a reused pid is never mistaken for the holder.
//
// Taking: write the holder record to a temp file, then link() it to the lock's name, which fails
// while the name exists, so the lock appears whole or not at all. Taking over a dead holder's
// lock: rename it aside (only one waiter can), check that what was moved is the dead record seen
// (else put the live one back), then take the lock as usual.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { AbortedError, LockTimeoutError } from '../errors.ts';
import { currentIdentity, isAlive, type ProcessIdentity } from '../host/process-identity.ts';
import { retryUntil } from '../util/retry.ts';

interface LockRecord {
  owner: ProcessIdentity;
  token: string;
}

export interface FileLockOptions {
  timeoutMs?: number;
  signal?: AbortSignal | undefined;
  pollMs?: number;
}

const DEFAULT_TIMEOUT_MS = 120_000;

async function readRecord(file: string): Promise<LockRecord | undefined> {
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as LockRecord;
  } catch {
    return undefined;
  }
}

async function tryTake(file: string, record: LockRecord): Promise<boolean> {
  const temp = `${file}.${record.token}.tmp`;
  await fs.writeFile(temp, JSON.stringify(record), { mode: 0o600 });
  try {
    await fs.link(temp, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await fs.rm(temp, { force: true });
  }
}

/** Moves a dead holder's lock aside; a live record moved by a race is put back. */
async function takeOverIfDead(file: string): Promise<void> {
  const seen = await readRecord(file);
  if (!seen || isAlive(seen.owner)) return;
  const aside = `${file}.${randomBytes(6).toString('hex')}.stale`;
  try {
    await fs.rename(file, aside);
  } catch {
    return; // another waiter moved it first
  }
  const moved = await readRecord(aside);
  if (moved && moved.token !== seen.token) await fs.link(aside, file).catch(() => undefined);
  await fs.rm(aside, { force: true });
}

/** Runs `fn` holding the lock kept at `file`. */
export async function withFileLock<T>(file: string, options: FileLockOptions, fn: () => Promise<T>): Promise<T> {
  const record: LockRecord = { owner: currentIdentity(), token: randomBytes(8).toString('hex') };
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // Each waiter polls at its own pace (5-25 ms), so that waiters do not retry in lockstep.
  const pollMs = options.pollMs ?? 5 + Math.random() * 20;
  const { signal } = options;
  // Busy is retried until the deadline; any other error (the directory is gone, EACCES) ends the wait.
  const busy = new Error('the lock is held');
  if (signal?.aborted) throw new AbortedError(`Waiting for lock ${file}`, { cause: signal.reason });
  try {
    await retryUntil(async () => {
      if (await tryTake(file, record)) return;
      await takeOverIfDead(file);
      throw busy;
    }, { deadline: Date.now() + timeoutMs, signal, isFinal: (error) => error !== busy, minDelayMs: pollMs, maxDelayMs: pollMs, factor: 1 });
  } catch (error) {
    if (signal?.aborted && error === signal.reason) throw new AbortedError(`Waiting for lock ${file}`, { cause: signal.reason });
    if (error !== busy) throw error;
    const holder = await readRecord(file);
    throw new LockTimeoutError(`Timed out after ${timeoutMs} ms waiting for lock ${file}, held by process ${holder?.owner.pid ?? '(unknown)'}.`);
  }
  try {
    return await fn();
  } finally {
    // Only our own record: never a lock that was taken over from us.
    if ((await readRecord(file))?.token === record.token) await fs.rm(file, { force: true });
  }
}
