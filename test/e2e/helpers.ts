// Helpers for end-to-end tests that run a real vitest on generated suites.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { dir } from 'tmp-promise';

export interface Suite {
  dir: string;
  /** A private instances directory: every QEMU of this suite has it in its command line. */
  instancesDir: string;
  /** A private template cache: the suite's first start of a spec boots (and saves) it, as on a fresh machine. */
  templatesDir: string;
  budgetDir: string;
  env: Record<string, string>;
  run(args?: string[], env?: Record<string, string>): ResultPromise<{ reject: false; all: true; stripFinalNewline: true }>;
  cleanup(): Promise<void>;
}

/** Writes `files` into a fresh directory inside the repository (so 'guestlab' resolves as in a user's project). */
export async function createSuite(files: Record<string, string>): Promise<Suite> {
  await fs.mkdir(path.resolve('.guestlab'), { recursive: true });
  const suiteDir = await fs.mkdtemp(path.resolve('.guestlab/e2e-'));
  const state = await dir({ unsafeCleanup: true, prefix: 'gl-e2e-' });
  const instancesDir = path.join(state.path, 'instances');
  const budgetDir = path.join(state.path, 'budget');
  const templatesDir = path.join(state.path, 'templates');
  await fs.writeFile(path.join(suiteDir, 'vitest.config.ts'), `export default { test: { include: ['*.test.ts'], testTimeout: 900000, hookTimeout: 900000 } };\n`);
  for (const [name, text] of Object.entries(files)) await fs.writeFile(path.join(suiteDir, name), text);
  const env = { GUESTLAB_INSTANCES_DIR: instancesDir, GUESTLAB_BUDGET_DIR: budgetDir, GUESTLAB_TEMPLATES_DIR: templatesDir, NO_COLOR: '1' };
  return {
    dir: suiteDir,
    instancesDir,
    templatesDir,
    budgetDir,
    env,
    run: (args = [], extraEnv = {}) =>
      execa('node_modules/.bin/vitest', ['run', '--root', suiteDir, '--config', path.join(suiteDir, 'vitest.config.ts'), ...args], {
        reject: false,
        all: true,
        stripFinalNewline: true,
        env: { ...withoutColor(process.env), ...env, ...extraEnv },
      }),
    cleanup: async () => {
      await fs.rm(suiteDir, { recursive: true, force: true });
      await state.cleanup();
    },
  };
}

function withoutColor(env: NodeJS.ProcessEnv): Record<string, string> {
  const { FORCE_COLOR: _force, ...rest } = env;
  return rest as Record<string, string>;
}

/** Text without ANSI colour codes, for assertions on a reporter's output. */
export function plain(text: string | undefined): string {
  return (text ?? '').replace(/\x1b\[[0-9;]*m/g, '');
}

/** Pids of QEMU processes whose command line mentions `needle`. */
export async function qemuPidsMentioning(needle: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.startsWith('/usr/bin/qemu-system') || cmdline.split('\0')[0]?.endsWith('qemu-system-x86_64')) {
      if (cmdline.includes(needle)) pids.push(Number(entry));
    }
  }
  return pids;
}

export async function parentPid(pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export const GUEST_TEST_HEADER = `
import { expect, test as base } from 'vitest';
import { guestFixture } from 'guestlab/vitest';
`;
