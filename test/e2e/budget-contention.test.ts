// The budget under contention between real processes (no guests: the processes take leases as
// startGuest does): three processes streaming small requests, one of them with a slowed writer,
// readers polling as `guestlab ps` and the sweep do, and one large request; then a hold-and-wait
// pair across two processes.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { budgetState, sweepLeases } from '../../src/budget/leases.ts';
import { MAX_BYPASSES } from '../../src/budget/policy.ts';

const leasesModule = JSON.stringify(path.resolve('src/budget/leases.ts'));
const logModule = JSON.stringify(path.resolve('src/log.ts'));

/** A node process running `body` with acquireLease, `log` and `record(line)` (appends to the shared log). */
function child(body: string, env: NodeJS.ProcessEnv, options: { slowWriter?: boolean } = {}) {
  const slow = options.slowWriter
    ? `
      // A slowed writer: every file is written in two halves, 20 ms apart.
      const fsp = (await import('node:fs/promises')).default;
      const write = fsp.writeFile;
      fsp.writeFile = async (file, data, opts) => {
        const text = String(data);
        await write(file, text.slice(0, text.length >> 1), opts);
        await new Promise((r) => setTimeout(r, 20));
        return write(file, text, opts);
      };`
    : '';
  const code = `${slow}
    const { appendFileSync } = await import('node:fs');
    const { acquireLease } = await import(${leasesModule});
    const { createLogger } = await import(${logModule});
    const lines = [];
    const log = createLogger('child', (line) => lines.push(line));
    const record = (line) => appendFileSync(process.env.ADMISSIONS, line + '\\n');
    ${body}
    process.stdout.write(JSON.stringify({ lines }) + '\\n');`;
  const proc = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], env });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d));
  return { proc, done: once(proc, 'exit').then(([code]) => ({ code: code as number, out })) };
}

let cleanup: () => Promise<void>;
let env: NodeJS.ProcessEnv;
let admissions: string;
const saved = { ...process.env };

beforeEach(async () => {
  let root: string;
  ({ path: root, cleanup } = await dir({ unsafeCleanup: true }));
  admissions = path.join(root, 'admissions.log');
  env = { ...process.env, GUESTLAB_BUDGET_DIR: path.join(root, 'budget'), GUESTLAB_BUDGET_CPUS: '4', GUESTLAB_BUDGET_MEMORY_MIB: '100000', ADMISSIONS: admissions };
  Object.assign(process.env, { GUESTLAB_BUDGET_DIR: env.GUESTLAB_BUDGET_DIR, GUESTLAB_BUDGET_CPUS: '4', GUESTLAB_BUDGET_MEMORY_MIB: '100000' });
});
afterEach(async () => {
  process.env = { ...saved };
  await cleanup();
});

test('three streaming processes (one with a slowed writer) and one large request: nothing lost, the large one admitted within a bound', async () => {
  const perStreamer = 25;
  const streamer = (name: string) => `
    for (let i = 0; i < ${perStreamer}; i++) {
      const lease = await acquireLease({ guest: '${name}-' + i, cpus: 1, memoryMiB: 64, log, pollMs: 10 });
      record('admit ${name}-' + i);
      await new Promise((r) => setTimeout(r, 15));
      await lease.release();
    }`;
  const streamers = [child(streamer('a'), env), child(streamer('b'), env, { slowWriter: true }), child(streamer('c'), env)];
  // Readers outside the lock, as `guestlab ps` and the sweep read: they must not destroy a request.
  let reading = true;
  const readers = Array.from({ length: 3 }, async () => {
    let reads = 0;
    while (reading) {
      await budgetState();
      await sweepLeases();
      reads++;
    }
    return reads;
  });
  await new Promise((r) => setTimeout(r, 400));
  const large = child(`
    record('ask large');
    const lease = await acquireLease({ guest: 'large', cpus: 4, memoryMiB: 64, log, pollMs: 10 });
    record('admit large');
    await lease.release();`, env);
  const results = await Promise.all([...streamers.map((s) => s.done), large.done]);
  reading = false;
  const reads = await Promise.all(readers);
  expect(results.map((r) => r.code)).toEqual([0, 0, 0, 0]);
  const log = (await fs.readFile(admissions, 'utf8')).trim().split('\n');
  expect(log.filter((l) => l.startsWith('admit ')).length).toBe(3 * perStreamer + 1);
  const asked = log.indexOf('ask large');
  const admitted = log.indexOf('admit large');
  const between = log.slice(asked + 1, admitted).filter((l) => l.startsWith('admit ')).length;
  console.log(`budget contention: large request admitted after ${between} other admission(s); readers made ${reads.join('/')} passes`);
  // Ahead of it at most one request per streaming process, plus the bounded hold-and-wait passes.
  expect(between).toBeLessThanOrEqual(3 + MAX_BYPASSES);
  expect(await budgetState()).toEqual({ leases: [], queue: [] });
}, 120_000);

test('a hold-and-wait pair across two processes resolves: the holder passes the large request it blocks', async () => {
  const lowBudget = { ...env, GUESTLAB_BUDGET_CPUS: '2' };
  process.env.GUESTLAB_BUDGET_CPUS = '2';
  const holder = child(`
    const first = await acquireLease({ guest: 'first', cpus: 1, memoryMiB: 64, log });
    record('holder has first');
    while (!(await import('node:fs')).readFileSync(process.env.ADMISSIONS, 'utf8').includes('ask large')) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 200));
    const second = await acquireLease({ guest: 'second', cpus: 1, memoryMiB: 64, log, pollMs: 10 });
    record('holder has second');
    await second.release();
    await first.release();`, lowBudget);
  while (!(await fs.readFile(admissions, 'utf8').catch(() => '')).includes('holder has first')) await new Promise((r) => setTimeout(r, 10));
  const large = child(`
    record('ask large');
    const lease = await acquireLease({ guest: 'large', cpus: 2, memoryMiB: 64, log, pollMs: 10 });
    record('admit large');
    await lease.release();`, lowBudget);
  const [h, l] = await Promise.all([holder.done, large.done]);
  expect([h.code, l.code]).toEqual([0, 0]);
  expect((await fs.readFile(admissions, 'utf8')).trim().split('\n')).toEqual(['holder has first', 'ask large', 'holder has second', 'admit large']);
  expect(h.out).toMatch(/admitted by the hold-and-wait rule/);
}, 60_000);
