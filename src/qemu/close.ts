// Ending a QEMU, the one way: ask it to quit over its monitor, give it a grace period, then SIGKILL.
// Guests, templates and `guestlab stop` all end their QEMUs through here.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import { QemuMonitor } from './monitor.ts';
import type { QemuProcess } from './process.ts';
import { QmpClient } from './qmp.ts';

export const QUIT_GRACE_MS = 5_000;

export type CloseOutcome = 'quit' | 'killed' | 'already gone';

interface Closable {
  /** Asks QEMU to quit; resolves when asked (or when asking is impossible). */
  quit(): Promise<void>;
  /** Resolves true once QEMU is gone, false if it is still there after `ms`. */
  goneWithin(ms: number): Promise<boolean>;
  /** SIGKILL, then resolves once it is gone. */
  kill(): Promise<void>;
}

async function gracefulClose(qemu: Closable, graceMs: number): Promise<'quit' | 'killed'> {
  await Promise.race([qemu.quit().catch(() => undefined), sleep(graceMs)]);
  if (await qemu.goneWithin(graceMs)) return 'quit';
  await qemu.kill();
  return 'killed';
}

/** Ends a QEMU this process started. Never throws; resolves once it has exited. */
export async function closeQemu(qemu: QemuProcess, monitor: QemuMonitor | undefined, log: Logger, graceMs = QUIT_GRACE_MS): Promise<CloseOutcome> {
  if (qemu.hasExited) return 'already gone';
  const outcome = await gracefulClose({
    quit: async () => {
      if (monitor && !monitor.closed) await monitor.quit();
    },
    goneWithin: (ms) => Promise.race([qemu.exited.then(() => true), sleep(ms, false)]),
    kill: async () => {
      qemu.kill('SIGKILL');
      await qemu.exited;
    },
  }, graceMs);
  if (outcome === 'killed') log.warn(`QEMU (pid ${qemu.pid}) did not quit within ${graceMs} ms; killed it`);
  return outcome;
}

/**
 * Ends a QEMU another process started (`guestlab stop`), known by its pid and QMP socket.
 * `isRunning` must tell this QEMU from a process that reused its pid (e.g. by its tag).
 */
export async function closeQemuByPid(pid: number, qmpSocket: string, isRunning: () => Promise<boolean>, graceMs = QUIT_GRACE_MS): Promise<CloseOutcome> {
  if (!(await isRunning())) return 'already gone';
  const goneWithin = async (ms: number) => {
    for (const until = Date.now() + ms; Date.now() < until; await sleep(100)) if (!(await isRunning())) return true;
    return !(await isRunning());
  };
  return gracefulClose({
    quit: async () => {
      const qmp = await QmpClient.connect(qmpSocket, 2000).catch(() => undefined);
      await qmp?.execute('quit').catch(() => undefined);
      qmp?.close();
    },
    goneWithin,
    kill: async () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return; // it went meanwhile
      }
      await goneWithin(graceMs);
    },
  }, graceMs);
}
