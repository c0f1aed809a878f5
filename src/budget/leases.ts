// Host-wide leases of CPUs and memory, shared by every worker and process of this user through a
// private directory. A lease names its holder by pid and start time, so a lease left by a dead
// process (SIGKILL, OOM) is reclaimed by the next process that looks, and a reused pid is never
// mistaken for it. Who is admitted next is policy.ts's decision, made under the budget's lock.
//
// Every record is written whole (temp file + rename) and never deleted for failing to parse: a
// reader outside the lock cannot destroy a request. A request whose ticket is gone anyway (removed
// by hand) writes it again at its next look.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readEnv } from '../env.ts';
import { AbortedError, BudgetDeadlockError, BudgetExceededError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { currentIdentity, isAlive, type ProcessIdentity } from '../host/process-identity.ts';
import { withFileLock } from './lock.ts';
import { ensureOwnedPrivateDir, writeFileAtomic } from '../util/owned-dir.ts';
import { detectCpus, memoryNow, QEMU_OVERHEAD_MIB, residentMiB } from './limits.ts';
import { decide, DEADLOCK_AFTER_MS, memoryFreeMiB, usedOf, type Held, type Request } from './policy.ts';

export { BudgetExceededError, BudgetDeadlockError };

export interface LeaseRecord {
  id: string;
  owner: ProcessIdentity;
  guest: string;
  cpus: number;
  memoryMiB: number;
  createdAt: number;
  /** The guest's QEMU, once it runs: its resident memory is measured at every admission. */
  qemuPid?: number | undefined;
  /**
   * Set when the guest was kept (GUESTLAB_KEEP): the lease is its QEMU's then (owner), until it
   * exits, and holds the guest's memory but no CPUs (an idle guest waiting for a user takes little
   * CPU, and a run that keeps guests must not starve its own later tests of CPUs).
   */
  keptAt?: string | undefined;
}

export interface Lease {
  readonly id: string;
  readonly waitedMs: number;
  /** Records the QEMU that uses this lease, so that its real memory use is counted. */
  attach(qemuPid: number): Promise<void>;
  release(): Promise<void>;
  /**
   * Gives the lease to a kept guest's QEMU, which outlives this process: it holds the guest's memory
   * (not its CPUs) while that process lives, and the next look after it exits reclaims it. This
   * process no longer holds it (release() does nothing then).
   */
  handOver(owner: ProcessIdentity): Promise<void>;
}

/**
 * The budget's directory: GUESTLAB_BUDGET_DIR, else `guestlab/budget` in $XDG_RUNTIME_DIR (a
 * per-user tmpfs) or in the user's cache directory. Not below GUESTLAB_CACHE_DIR: processes with
 * image caches of their own still share one host. Never a shared path in /tmp.
 */
export function budgetDir(env: NodeJS.ProcessEnv = process.env): string {
  const chosen = readEnv('GUESTLAB_BUDGET_DIR', env);
  if (chosen !== undefined) return chosen;
  const base = env.XDG_RUNTIME_DIR || env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'guestlab', 'budget');
}

const LEASES = 'leases';
const QUEUE = 'queue';
const LOCK = 'lock';
const STATE = 'state.json';
/** GUESTLAB_BUDGET_CPU_OVERCOMMIT: how far a process blocked only by its own guests may overcommit CPUs. */
const DEFAULT_CPU_OVERCOMMIT = 2;

interface BudgetState {
  /** The oldest request when `bypasses` was last counted. */
  headId?: string | undefined;
  bypasses: number;
}

async function prepareDir(dir: string): Promise<void> {
  await ensureOwnedPrivateDir(dir, 'GUESTLAB_BUDGET_DIR');
  await fs.mkdir(path.join(dir, LEASES), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.join(dir, QUEUE), { recursive: true, mode: 0o700 });
}

/** Runs `fn` under the budget's lock. */
export async function withBudgetLock<T>(fn: (dir: string) => Promise<T>, options: { signal?: AbortSignal | undefined; dir?: string } = {}): Promise<T> {
  const dir = options.dir ?? budgetDir();
  await prepareDir(dir);
  return withFileLock(path.join(dir, LOCK), { signal: options.signal }, () => fn(dir));
}

async function readRecords(dir: string): Promise<{ file: string; record: LeaseRecord }[]> {
  const entries = await fs.readdir(dir).catch(() => [] as string[]);
  const records: { file: string; record: LeaseRecord }[] = [];
  for (const entry of entries) {
    if (!entry.endsWith('.json')) continue; // temp files end in .tmp
    const file = path.join(dir, entry);
    const text = await fs.readFile(file, 'utf8').catch(() => undefined);
    try {
      if (text !== undefined) records.push({ file, record: JSON.parse(text) as LeaseRecord });
    } catch {
      // Records are renamed into place whole; an unreadable one is not ours to judge. Skip it.
    }
  }
  return records;
}

/** Splits a directory's records into live ones and those of dead holders, deleting the latter. */
async function reclaimDead(dir: string, log?: Logger): Promise<{ live: LeaseRecord[]; dead: LeaseRecord[] }> {
  const live: LeaseRecord[] = [];
  const dead: LeaseRecord[] = [];
  for (const { file, record } of await readRecords(dir)) {
    if (isAlive(record.owner)) {
      live.push(record);
    } else {
      log?.info(`reclaimed ${path.basename(dir) === LEASES ? 'lease' : 'queue entry'} of ${record.guest} held by dead process ${record.owner.pid}`);
      await fs.rm(file, { force: true });
      dead.push(record);
    }
  }
  return { live, dead };
}

const processKey = (owner: ProcessIdentity) => `${owner.pid}:${owner.start}`;

/** Leases with the memory their QEMU really uses now. */
async function measured(leases: LeaseRecord[]): Promise<Held[]> {
  return Promise.all(leases.map(async (l) => ({
    id: l.id,
    guest: l.guest,
    cpus: l.cpus,
    memoryMiB: l.memoryMiB,
    process: processKey(l.owner),
    measuredMiB: l.qemuPid === undefined ? undefined : await residentMiB(l.qemuPid),
  })));
}

/** What the budget holds now, measured: the input of every admission and of `guestlab budget`. */
export async function budgetSnapshot(dir: string, log?: Logger) {
  const live = (await reclaimDead(path.join(dir, LEASES), log)).live;
  const leases = await measured(live);
  const queueRecords = (await reclaimDead(path.join(dir, QUEUE), log)).live.sort((a, b) => a.id.localeCompare(b.id));
  const cpus = await detectCpus();
  const memory = await memoryNow();
  // A fixed budget counts leases as they were asked for; a measured one sees what QEMUs use.
  const free = memory.fixedMiB !== undefined ? Math.max(0, memory.fixedMiB - usedOf(leases).memoryMiB) : memoryFreeMiB(memory.availableMiB, memory.reserveMiB, leases);
  // All the memory guests could have if every running guest stopped.
  const wholeMemoryMiB = memory.fixedMiB ?? Math.max(0, memory.availableMiB - memory.reserveMiB + leases.reduce((sum, l) => sum + (l.measuredMiB ?? 0), 0));
  const kept = live.filter((l) => l.keptAt !== undefined).map((l) => l.guest);
  return { leases, queue: queueRecords, cpus, memory, memoryFreeMiB: free, wholeMemoryMiB, kept };
}

export interface AcquireOptions {
  guest: string;
  cpus: number;
  /** Guest RAM; QEMU's own overhead is added. */
  memoryMiB: number;
  log: Logger;
  signal?: AbortSignal | undefined;
  pollMs?: number;
  /** How long a hold-and-wait cycle may last before the request fails (default DEADLOCK_AFTER_MS). */
  deadlockAfterMs?: number;
}

/** Wait for room in the budget and take a lease. Fails at once if the request can never fit. */
export async function acquireLease(options: AcquireOptions): Promise<Lease> {
  const overcommit = readEnv('GUESTLAB_BUDGET_CPU_OVERCOMMIT') ?? DEFAULT_CPU_OVERCOMMIT;
  const owner = currentIdentity();
  const id = `${Date.now().toString().padStart(15, '0')}-${process.pid}-${randomBytes(4).toString('hex')}`;
  const request: LeaseRecord = { id, owner, guest: options.guest, cpus: options.cpus, memoryMiB: options.memoryMiB + QEMU_OVERHEAD_MIB, createdAt: Date.now() };
  const asked: Request = { id, guest: request.guest, cpus: request.cpus, memoryMiB: request.memoryMiB, process: processKey(owner) };
  const dir = budgetDir();
  const ticket = () => path.join(dir, QUEUE, `${id}.json`);
  const leaseFile = () => path.join(dir, LEASES, `${id}.json`);
  const started = Date.now();
  let lastReport = 0;
  let deadlockSince: number | undefined;
  await prepareDir(dir);
  await writeFileAtomic(ticket(), JSON.stringify(request));
  try {
    // Not retryUntil(): an admission has no deadline by design. A full budget empties as other
    // guests stop, however long their tests run; what ends a wait early is a request that can never
    // fit (BudgetExceededError), a deadlock (BudgetDeadlockError) or the caller's signal.
    for (;;) {
      if (options.signal?.aborted) throw new AbortedError(`Waiting for the CPU/memory budget for ${options.guest}`, { cause: options.signal.reason });
      const outcome = await withBudgetLock(async () => {
        if (!(await fs.stat(ticket()).catch(() => undefined))) {
          options.log.warn(`the budget's queue entry of ${options.guest} was gone; it is written again`);
          await writeFileAtomic(ticket(), JSON.stringify(request));
        }
        const now = await budgetSnapshot(dir, options.log);
        if (request.cpus > now.cpus.cpus || request.memoryMiB > now.wholeMemoryMiB) {
          throw new BudgetExceededError(
            `Guest ${options.guest} asks for ${request.cpus} CPU(s) and ${options.memoryMiB} MiB (+${QEMU_OVERHEAD_MIB} MiB for QEMU), ` +
              `more than the whole budget of ${now.cpus.cpus} CPU(s) and ${now.wholeMemoryMiB} MiB (${now.cpus.source}; ${now.memory.source}). ` +
              'Ask for less, or raise GUESTLAB_BUDGET_CPUS / GUESTLAB_BUDGET_MEMORY_MIB.',
          );
        }
        const statePath = path.join(dir, STATE);
        const state = await readState(statePath);
        const head = now.queue[0]?.id;
        const bypasses = state.headId === head ? state.bypasses : 0;
        const queue = now.queue.map((r): Request => ({ id: r.id, guest: r.guest, cpus: r.cpus, memoryMiB: r.memoryMiB, process: processKey(r.owner) }));
        const decision = decide(asked, { queue, leases: now.leases, cpus: now.cpus.cpus, memoryFreeMiB: now.memoryFreeMiB, bypasses, cpuOvercommit: overcommit });
        if (decision.admit) {
          await writeFileAtomic(leaseFile(), JSON.stringify(request));
          await fs.rm(ticket(), { force: true });
          if (decision.bypass) await writeFileAtomic(statePath, JSON.stringify({ headId: head, bypasses: bypasses + 1 } satisfies BudgetState));
          if (decision.rule !== 'fifo') options.log.info(`admitted by the ${decision.rule} rule (holds ${now.leases.filter((l) => l.process === asked.process).length} lease(s) already)`);
          return { decision };
        }
        return { decision, now };
      }, { signal: options.signal, dir });
      const { decision } = outcome;
      if (decision.admit) break;
      const now = outcome.now!;
      deadlockSince = decision.deadlock ? (deadlockSince ?? Date.now()) : undefined;
      const deadlockAfterMs = options.deadlockAfterMs ?? DEADLOCK_AFTER_MS;
      if (deadlockSince !== undefined && Date.now() - deadlockSince >= deadlockAfterMs) {
        throw new BudgetDeadlockError(options.guest, now.leases.map((l) => ({ guest: l.guest, pid: Number(l.process.split(':')[0]), cpus: l.cpus, memoryMiB: l.memoryMiB })), deadlockAfterMs);
      }
      if (Date.now() - lastReport > 30_000) {
        lastReport = Date.now();
        const used = usedOf(now.leases);
        const kept = now.kept.length ? `; kept guests (${now.kept.join(', ')}) hold their memory until they are stopped (guestlab stop GUEST, or guestlab gc --kept)` : '';
        options.log.info(
          `waiting for the budget: needs ${request.cpus} CPU/${request.memoryMiB} MiB; ${now.leases.length} guest(s) hold ` +
            `${used.cpus}/${now.cpus.cpus} CPU; ${now.memoryFreeMiB} MiB free for guests (${now.memory.source}); ${decision.ahead} request(s) ahead${kept}`,
        );
      }
      await sleep(options.pollMs ?? 250, undefined, { signal: options.signal }).catch(() => undefined);
    }
  } catch (error) {
    await fs.rm(ticket(), { force: true });
    throw error;
  }
  const waitedMs = Date.now() - started;
  if (waitedMs > 1000) options.log.info(`admitted after waiting ${(waitedMs / 1000).toFixed(1)}s for the budget`);
  let released = false;
  return {
    id,
    waitedMs,
    attach: async (qemuPid) => {
      if (released) return;
      await writeFileAtomic(leaseFile(), JSON.stringify({ ...request, qemuPid } satisfies LeaseRecord));
    },
    release: async () => {
      if (released) return;
      released = true;
      await fs.rm(leaseFile(), { force: true });
    },
    handOver: async (newOwner) => {
      if (released) return;
      released = true;
      const record = JSON.parse(await fs.readFile(leaseFile(), 'utf8')) as LeaseRecord;
      await writeFileAtomic(leaseFile(), JSON.stringify({ ...record, owner: newOwner, cpus: 0, keptAt: new Date().toISOString() } satisfies LeaseRecord));
    },
  };
}

async function readState(file: string): Promise<BudgetState> {
  const text = await fs.readFile(file, 'utf8').catch(() => undefined);
  try {
    return text ? (JSON.parse(text) as BudgetState) : { bypasses: 0 };
  } catch {
    return { bypasses: 0 };
  }
}

/** Synchronous release for exit handlers. */
export function releaseLeaseSync(id: string): void {
  rmSync(path.join(budgetDir(), LEASES, `${id}.json`), { force: true });
}

/** Leases and queue entries of live holders, read under the lock, for `guestlab ps` and tests. */
export async function budgetState(): Promise<{ leases: LeaseRecord[]; queue: LeaseRecord[] }> {
  return withBudgetLock(async (dir) => ({ leases: (await reclaimDead(path.join(dir, LEASES))).live, queue: (await reclaimDead(path.join(dir, QUEUE))).live }));
}

/** Remove records of dead holders and the temp files of dead writers, under the lock; returns the records removed. */
export async function sweepLeases(): Promise<LeaseRecord[]> {
  return withBudgetLock(async (dir) => {
    const removed: LeaseRecord[] = [];
    for (const sub of [LEASES, QUEUE]) {
      removed.push(...(await reclaimDead(path.join(dir, sub))).dead);
      for (const entry of await fs.readdir(path.join(dir, sub)).catch(() => [] as string[])) {
        // writeFileAtomic's temp files: NAME.PID.RANDOM.tmp
        const pid = Number(/\.(\d+)\.[a-z0-9]+\.tmp$/.exec(entry)?.[1]);
        if (pid && !processExists(pid)) await fs.rm(path.join(dir, sub, entry), { force: true });
      }
    }
    return removed;
  });
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
