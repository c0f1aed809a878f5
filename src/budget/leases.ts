// Host-wide leases of CPUs and memory, shared by every worker and process through a directory.
// A lease names its holder by pid and start time, so a lease left by a dead process (SIGKILL,
// OOM) is reclaimed by the next process that looks, and a reused pid is never mistaken for it.
// Waiting guests queue first come, first served: only the oldest waiting request may be admitted.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortedError, GuestlabError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { currentIdentity, isAlive, type ProcessIdentity } from '../reaper/identity.ts';
import { makePrivateDir } from '../util/fs.ts';
import { withLock } from '../util/lock.ts';
import { detectLimits, QEMU_OVERHEAD_MIB, type BudgetLimits } from './limits.ts';
import { fits, type Usage } from './arithmetic.ts';

export interface LeaseRecord {
  id: string;
  owner: ProcessIdentity;
  guest: string;
  cpus: number;
  memoryMiB: number;
  createdAt: number;
}

export interface Lease {
  readonly id: string;
  readonly waitedMs: number;
  release(): Promise<void>;
}

export class BudgetExceededError extends GuestlabError {
  override name = 'BudgetExceededError';
  constructor(message: string) {
    super(message, { code: 'ERR_BUDGET' });
  }
}

export function budgetDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.GUESTLAB_BUDGET_DIR || path.join(os.tmpdir(), `guestlab-budget-${process.getuid?.() ?? 0}`));
}

const LEASES = 'leases';
const QUEUE = 'queue';
const SNAPSHOT = 'limits.json';

async function readRecords(dir: string): Promise<{ file: string; record: LeaseRecord }[]> {
  const entries = await fs.readdir(dir).catch(() => [] as string[]);
  const records: { file: string; record: LeaseRecord }[] = [];
  for (const entry of entries) {
    if (!entry.endsWith('.json')) continue;
    const file = path.join(dir, entry);
    const text = await fs.readFile(file, 'utf8').catch(() => undefined);
    try {
      if (text !== undefined) records.push({ file, record: JSON.parse(text) as LeaseRecord });
    } catch {
      await fs.rm(file, { force: true }); // torn write by a dead process
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

/** Live records of a directory; records of dead holders are deleted on the way. */
async function liveRecords(dir: string, log?: Logger): Promise<LeaseRecord[]> {
  return (await reclaimDead(dir, log)).live;
}

/** CPUs and memory held by `records`. */
export function usageOf(records: LeaseRecord[]): Usage {
  return records.reduce((sum, r) => ({ cpus: sum.cpus + r.cpus, memoryMiB: sum.memoryMiB + r.memoryMiB }), { cpus: 0, memoryMiB: 0 });
}

/**
 * The budget in force. Memory comes from MemAvailable, which running guests shrink, so it is
 * measured while no lease is held and kept until the budget is idle again.
 */
async function limitsInForce(dir: string, idle: boolean): Promise<BudgetLimits> {
  const snapshotFile = path.join(dir, SNAPSHOT);
  if (!idle) {
    const text = await fs.readFile(snapshotFile, 'utf8').catch(() => undefined);
    if (text) {
      const snapshot = JSON.parse(text) as BudgetLimits;
      // Explicit overrides of this process win over the snapshot. Only they are read here: this
      // runs at every poll of every waiting guest, and the host's own figures are in the snapshot.
      const overridden = process.env.GUESTLAB_BUDGET_CPUS || process.env.GUESTLAB_BUDGET_MEMORY_MIB;
      const fresh = overridden ? await detectLimits() : undefined;
      return {
        cpus: fresh?.source.cpus.startsWith('GUESTLAB_') ? fresh.cpus : snapshot.cpus,
        memoryMiB: fresh?.source.memory.startsWith('GUESTLAB_') ? fresh.memoryMiB : snapshot.memoryMiB,
        source: snapshot.source,
      };
    }
  }
  const limits = await detectLimits();
  await fs.writeFile(snapshotFile, JSON.stringify(limits), { mode: 0o600 });
  return limits;
}

export interface AcquireOptions {
  guest: string;
  cpus: number;
  /** Guest RAM; QEMU's own overhead is added. */
  memoryMiB: number;
  log: Logger;
  signal?: AbortSignal | undefined;
  pollMs?: number;
}

/** Wait for room in the budget and take a lease. Fails at once if the request can never fit. */
export async function acquireLease(options: AcquireOptions): Promise<Lease> {
  const dir = budgetDir();
  await makePrivateDir(path.join(dir, LEASES));
  await makePrivateDir(path.join(dir, QUEUE));
  const owner = currentIdentity();
  const id = `${Date.now().toString().padStart(15, '0')}-${process.pid}-${randomBytes(4).toString('hex')}`;
  const request: LeaseRecord = { id, owner, guest: options.guest, cpus: options.cpus, memoryMiB: options.memoryMiB + QEMU_OVERHEAD_MIB, createdAt: Date.now() };
  const ticket = path.join(dir, QUEUE, `${id}.json`);
  const leaseFile = path.join(dir, LEASES, `${id}.json`);
  const started = Date.now();
  let lastReport = 0;
  await fs.writeFile(ticket, JSON.stringify(request), { mode: 0o600 });
  try {
    for (;;) {
      if (options.signal?.aborted) throw new AbortedError(`Waiting for the CPU/memory budget for ${options.guest}`, { cause: options.signal.reason });
      const outcome = await withLock(`budget:${dir}`, { signal: options.signal }, async () => {
        const leases = await liveRecords(path.join(dir, LEASES), options.log);
        const limits = await limitsInForce(dir, leases.length === 0);
        if (request.cpus > limits.cpus || request.memoryMiB > limits.memoryMiB) {
          throw new BudgetExceededError(
            `Guest ${options.guest} asks for ${request.cpus} CPU(s) and ${options.memoryMiB} MiB (+${QEMU_OVERHEAD_MIB} MiB for QEMU), ` +
              `more than the whole budget of ${limits.cpus} CPU(s) and ${limits.memoryMiB} MiB (${limits.source.cpus}; ${limits.source.memory}). ` +
              'Ask for less, or raise GUESTLAB_BUDGET_CPUS / GUESTLAB_BUDGET_MEMORY_MIB.',
          );
        }
        const queue = (await liveRecords(path.join(dir, QUEUE))).sort((a, b) => a.id.localeCompare(b.id));
        const ahead = queue.findIndex((r) => r.id === id);
        const used = usageOf(leases);
        if (ahead === 0 && fits(request, used, limits)) {
          await fs.writeFile(leaseFile, JSON.stringify(request), { mode: 0o600 });
          await fs.rm(ticket, { force: true });
          return { admitted: true as const };
        }
        const own = leases.filter((l) => l.owner.pid === owner.pid && l.owner.start === owner.start).map((l) => l.guest);
        return { admitted: false as const, ahead, used, limits, holders: leases.length, own };
      });
      if (outcome.admitted) break;
      if (Date.now() - lastReport > 30_000) {
        lastReport = Date.now();
        options.log.info(
          `waiting for the budget: needs ${request.cpus} CPU/${request.memoryMiB} MiB; ${outcome.holders} guest(s) hold ` +
            `${outcome.used.cpus}/${outcome.limits.cpus} CPU, ${outcome.used.memoryMiB}/${outcome.limits.memoryMiB} MiB; ${Math.max(0, outcome.ahead)} request(s) ahead` +
            // The one wait that never ends by itself: a process holding the whole budget and waiting to start one more.
            (outcome.own.length === outcome.holders && outcome.holders > 0
              ? `. Every holder is a guest of this process (${outcome.own.join(', ')}): if it waits for ${options.guest} before stopping one of them, ` +
                'it waits forever. Start fewer guests at once, give them fewer cpus/memoryMiB, or raise GUESTLAB_BUDGET_CPUS / GUESTLAB_BUDGET_MEMORY_MIB.'
              : ''),
        );
      }
      await sleep(options.pollMs ?? 250, undefined, { signal: options.signal }).catch(() => undefined);
    }
  } catch (error) {
    await fs.rm(ticket, { force: true });
    throw error;
  }
  const waitedMs = Date.now() - started;
  if (waitedMs > 1000) options.log.info(`admitted after waiting ${(waitedMs / 1000).toFixed(1)}s for the budget`);
  let released = false;
  return {
    id,
    waitedMs,
    release: async () => {
      if (released) return;
      released = true;
      await fs.rm(leaseFile, { force: true });
    },
  };
}

/** Synchronous release for exit handlers. */
export function releaseLeaseSync(id: string): void {
  rmSync(path.join(budgetDir(), LEASES, `${id}.json`), { force: true });
}

/** Leases and queue entries of live holders, for `guestlab ps` and tests. */
export async function budgetState(): Promise<{ leases: LeaseRecord[]; queue: LeaseRecord[] }> {
  const dir = budgetDir();
  return { leases: await liveRecords(path.join(dir, LEASES)), queue: await liveRecords(path.join(dir, QUEUE)) };
}

/** Remove records of dead holders; returns what was removed. */
export async function sweepLeases(): Promise<LeaseRecord[]> {
  const dir = budgetDir();
  const removed: LeaseRecord[] = [];
  for (const sub of [LEASES, QUEUE]) removed.push(...(await reclaimDead(path.join(dir, sub))).dead);
  return removed;
}
