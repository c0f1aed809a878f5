// Who is admitted next: a pure decision over the queue and the leases, so that every rule can be
// tested without processes or files.
//
// The rules, in order:
// 1. First come, first served: the oldest waiting request is admitted once it fits.
// 2. Hold and wait: a request from a process that already holds a lease may go ahead of older
//    requests of other processes when it fits (its own requests keep their order). Its own leases block the others until it gets what it waits for, so
//    making it wait behind them is a deadlock (process A holds and waits behind B, B waits for A's
//    lease). The oldest request can be passed this way at most MAX_BYPASSES times; after that it
//    is served first, and a hold-and-wait cycle that is left is reported (rule 4).
// 3. Blocked only by itself: a request whose process holds every lease there is (a file-scoped
//    fixture holding the whole budget, and a test in the same file starting one more guest) may
//    overcommit CPUs up to `cpuOvercommit` times the budget; memory is never overcommitted.
// 4. A request from a holding process that still cannot be admitted, while every other holder is
//    itself waiting, is a deadlock: the caller fails it after DEADLOCK_AFTER_MS with the holders named.

/** CPUs and memory, of a request, a lease or a sum of them. */
export interface Usage {
  cpus: number;
  memoryMiB: number;
}

export interface Holder {
  /** "pid:start" of the process that holds or asks. */
  process: string;
}

export interface Request extends Usage, Holder {
  id: string;
  guest: string;
}

export interface Held extends Usage, Holder {
  id: string;
  guest: string;
  /** Memory this guest's QEMU really uses now (RSS), when known. */
  measuredMiB?: number | undefined;
}

export interface BudgetView {
  /** Waiting requests, oldest first. */
  queue: readonly Request[];
  leases: readonly Held[];
  /** CPUs of the budget. */
  cpus: number;
  /** Memory free for a new guest now (memoryFreeMiB()): leased memory is already counted in it. */
  memoryFreeMiB: number;
  /** How often the oldest request has been passed by rule 2 or 3. */
  bypasses: number;
  cpuOvercommit: number;
}

export const MAX_BYPASSES = 4;
export const DEADLOCK_AFTER_MS = 60_000;

export type Decision =
  | { admit: true; rule: 'fifo' | 'hold-and-wait' | 'own-overcommit'; bypass: boolean }
  | { admit: false; reason: 'queued' | 'full'; ahead: number; deadlock: boolean };

export function decide(request: Request, view: BudgetView): Decision {
  const position = view.queue.findIndex((r) => r.id === request.id);
  const ahead = Math.max(0, position);
  const usedCpus = usedOf(view.leases).cpus;
  const memoryFits = request.memoryMiB <= view.memoryFreeMiB;
  const holds = view.leases.some((l) => l.process === request.process);
  const fitsNow = memoryFits && usedCpus + request.cpus <= view.cpus;
  if (ahead === 0 && fitsNow) return { admit: true, rule: 'fifo', bypass: false };
  // Passing is for other processes' requests: a process's own requests keep their order.
  const passesOwn = view.queue.slice(0, ahead).some((r) => r.process === request.process);
  const mayPass = ahead === 0 || (!passesOwn && view.bypasses < MAX_BYPASSES);
  if (holds && fitsNow && mayPass) return { admit: true, rule: 'hold-and-wait', bypass: ahead > 0 };
  const onlyOwn = view.leases.length > 0 && view.leases.every((l) => l.process === request.process);
  if (onlyOwn && mayPass && memoryFits && usedCpus + request.cpus <= view.cpus * view.cpuOvercommit) {
    return { admit: true, rule: 'own-overcommit', bypass: ahead > 0 };
  }
  // A cycle: this process holds and waits, and so does every other holder.
  const waiting = new Set(view.queue.map((r) => r.process));
  const deadlock = holds && view.leases.every((l) => l.process === request.process || waiting.has(l.process));
  return { admit: false, reason: ahead > 0 ? 'queued' : 'full', ahead, deadlock };
}

export function usedOf(leases: readonly Usage[]): Usage {
  return leases.reduce((sum, l) => ({ cpus: sum.cpus + l.cpus, memoryMiB: sum.memoryMiB + l.memoryMiB }), { cpus: 0, memoryMiB: 0 });
}

/**
 * Memory free for a new guest: what the host has available now (which already lacks what running
 * guests use), less what leased guests may still grow into (their lease minus their measured use).
 */
export function memoryFreeMiB(availableMiB: number, reserveMiB: number, leases: readonly Held[]): number {
  const growth = leases.reduce((sum, l) => sum + Math.max(0, l.memoryMiB - (l.measuredMiB ?? 0)), 0);
  return Math.max(0, availableMiB - reserveMiB - growth);
}
