// Guests started by this process, so that an exiting process takes them down with it even when
// no test got to call stop() (uncaught error, process.exit). QEMU also carries a parent-death
// signal; this is the in-process half, which also removes the instance directories.
import { rmSync } from 'node:fs';

interface LiveGuest {
  /** QEMU's pid, once it runs. */
  pid?: number | undefined;
  dir: string;
}

const live = new Map<string, LiveGuest>();
let hooked = false;

export function registerLive(id: string, guest: LiveGuest): void {
  live.set(id, guest);
  if (!hooked) {
    hooked = true;
    process.once('exit', reapAllSync);
  }
}

export function unregisterLive(id: string): void {
  live.delete(id);
}

export function liveGuestCount(): number {
  return live.size;
}

function reapAllSync(): void {
  for (const guest of live.values()) {
    try {
      if (guest.pid) process.kill(guest.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    try {
      rmSync(guest.dir, { recursive: true, force: true });
    } catch {
      // best effort at exit
    }
  }
  live.clear();
}
