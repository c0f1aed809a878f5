// The host-wide budget of CPUs and memory refused a guest.
import { GuestlabError } from './guestlab-error.ts';

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
