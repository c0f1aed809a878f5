// Shared by the integration tests that check "nothing left behind" from the outside.
import fs from 'node:fs/promises';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach } from 'vitest';

/** Pids of processes (other than this one) whose command line mentions `needle`. */
export async function processesMentioning(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(needle) && Number(entry) !== process.pid) pids.push(Number(entry));
  }
  return pids;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Gives each test of the calling suite its own GUESTLAB_INSTANCES_DIR, so that "nothing left
 * behind" can be checked exactly. Returns a getter for the current test's directory.
 */
export function usePrivateInstancesDir(): () => string {
  let current = '';
  let cleanup: () => Promise<void> = async () => undefined;
  beforeEach(async () => {
    ({ path: current, cleanup } = await dir({ unsafeCleanup: true, prefix: 'gl-inst-' }));
    process.env.GUESTLAB_INSTANCES_DIR = current;
  });
  afterEach(async () => {
    delete process.env.GUESTLAB_INSTANCES_DIR;
    await cleanup();
  });
  return () => current;
}
