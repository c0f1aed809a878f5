// Guests started by this process, so that an exiting process takes them down with it even when
// no test got to call stop() (uncaught error, process.exit, SIGTERM from a pool). QEMU also
// carries a parent-death signal; this is the in-process half: it also removes the instance
// directories and releases the budget leases.
import { rmSync } from 'node:fs';
import { releaseLeaseSync } from '../budget/leases.ts';

interface LiveGuest {
  /** QEMU's pid, once it runs. */
  pid?: number | undefined;
  dir: string;
  leaseId?: string | undefined;
}

const live = new Map<string, LiveGuest>();
let hooked = false;
const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

export function registerLive(id: string, guest: LiveGuest): void {
  live.set(id, { ...live.get(id), ...guest });
  if (!hooked) {
    hooked = true;
    process.once('exit', reapAllSync);
    for (const signal of SIGNALS) process.once(signal, onSignal);
  }
}

export function unregisterLive(id: string): void {
  live.delete(id);
}

function onSignal(signal: NodeJS.Signals): void {
  reapAllSync();
  // If nobody else handles the signal, die of it as the process would have without us.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function reapAllSync(): void {
  for (const guest of live.values()) {
    try {
      if (guest.pid) process.kill(guest.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    // QEMU, just sent SIGKILL, can still add a file while the directory is removed (ENOTEMPTY):
    // retry, and release the lease whatever happens to the directory. A half-removed directory
    // has lost its owner record, and the sweep would leave it alone for a minute.
    try {
      rmSync(guest.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
    } catch {
      // best effort at exit
    }
    try {
      if (guest.leaseId) releaseLeaseSync(guest.leaseId);
    } catch {
      // best effort at exit
    }
  }
  live.clear();
}
