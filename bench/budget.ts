// npm run bench:budget [-- --streams 3 --requests 200 --guests 3 --json]
// 1. Admissions under contention: N processes take and release 1-CPU leases as fast as they can
//    (what startGuest does before a boot) on a 4-CPU budget, while one process asks for all 4
//    CPUs: admissions per second, and the large request's wait in time and in admissions.
// 2. Memory accounted vs measured: G guests booted with startGuest, then `guestlab budget --json`
//    (the public command) shows what each lease asked for beside what its QEMU really uses.
// Asserts nothing. Part 2 boots real guests (about a minute each under TCG); --guests 0 skips it.
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { startGuest, type StartedGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    streams: { type: 'string', default: '3' },
    requests: { type: 'string', default: '200' },
    guests: { type: 'string', default: '3' },
    image: { type: 'string', default: 'debian-12' },
    json: { type: 'boolean', default: false },
  },
  strict: true,
});
process.env.GUESTLAB_QUIET ??= '1';
const streams = Number(values.streams);
const requests = Number(values.requests);
const guestCount = Number(values.guests);
const root = path.resolve(import.meta.dirname, '..');

async function contention() {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-bench-budget-'));
  const env = { ...process.env, GUESTLAB_BUDGET_DIR: path.join(work, 'budget'), GUESTLAB_BUDGET_CPUS: '4', GUESTLAB_BUDGET_MEMORY_MIB: '100000' };
  const program = (body: string) => `
    const { acquireLease } = await import(${JSON.stringify(path.join(root, 'src/budget/leases.ts'))});
    const { createLogger } = await import(${JSON.stringify(path.join(root, 'src/log.ts'))});
    const log = createLogger('bench', () => {});
    ${body}`;
  const run = (body: string) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', program(body)], { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    return once(child, 'exit').then(() => out);
  };
  try {
    const t0 = performance.now();
    const streaming = Array.from({ length: streams }, (_, s) => run(`
      for (let i = 0; i < ${requests}; i++) {
        const lease = await acquireLease({ guest: 's${s}-' + i, cpus: 1, memoryMiB: 64, log, pollMs: 5 });
        process.stdout.write(Date.now() + '\\n');
        await lease.release();
      }`));
    await new Promise((r) => setTimeout(r, 500));
    const large = run(`
      const asked = Date.now();
      const lease = await acquireLease({ guest: 'large', cpus: 4, memoryMiB: 64, log, pollMs: 5 });
      process.stdout.write(JSON.stringify({ asked, admitted: Date.now() }) + '\\n');
      await lease.release();`);
    const outs = await Promise.all(streaming);
    const wallMs = performance.now() - t0;
    const { asked, admitted } = JSON.parse((await large).trim()) as { asked: number; admitted: number };
    const times = outs.flatMap((o) => o.trim().split('\n').map(Number));
    const before = times.filter((t) => t > asked && t < admitted).length;
    return { streams, requests: streams * requests, admissionsPerSecond: (times.length + 1) / (wallMs / 1000), largeWaitMs: admitted - asked, admissionsBeforeLarge: before };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

async function memory() {
  if (guestCount === 0) return undefined;
  // Three 1-CPU guests on this host's cores: this process's own override, shared with no other.
  process.env.GUESTLAB_BUDGET_CPUS = String(Math.max(guestCount, os.availableParallelism()));
  const guests: StartedGuest[] = [];
  try {
    for (const [i] of Array.from({ length: guestCount }).entries()) guests.push(await startGuest({ image: values.image, cpus: 1, memoryMiB: 1024, name: `budget-${i}` }));
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(root, 'bin/guestlab.js'), 'budget', '--json'], { env: process.env });
    const report = JSON.parse(stdout) as { leases: { guest: string; memoryMiB: number; measuredMiB?: number }[]; lines: string[] };
    return { leases: report.leases.map((l) => ({ guest: l.guest, leasedMiB: l.memoryMiB, residentMiB: l.measuredMiB ?? NaN })), lines: report.lines };
  } finally {
    await Promise.all(guests.map((g) => g.stop()));
  }
}

const load = await contention();
const mem = await memory();
if (values.json) {
  console.log(JSON.stringify({ contention: load, memory: mem }, null, 2));
} else {
  console.log(`\nguestlab budget bench`);
  console.log(`contention: ${load.streams} processes x ${load.requests / load.streams} leases, and one request for the whole budget`);
  console.log(`  admissions per second: ${load.admissionsPerSecond.toFixed(1)}`);
  console.log(`  the large request waited ${load.largeWaitMs} ms, behind ${load.admissionsBeforeLarge} admission(s)`);
  if (mem) {
    console.log(`memory of ${mem.leases.length} running guests (1 GiB each): leased vs resident (QEMU RSS)`);
    for (const l of mem.leases) console.log(`  ${l.guest.padEnd(12)} leased ${String(l.leasedMiB).padStart(6)} MiB   resident ${String(l.residentMiB).padStart(6)} MiB`);
    for (const line of mem.lines) console.log(`  ${line}`);
  }
}
