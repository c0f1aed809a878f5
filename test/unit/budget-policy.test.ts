// The budget's admission rules (src/budget/policy.ts), and the findings of the budget review, each
// as a test that failed before: lost tickets, hold and wait, leaking overrides, guessed memory,
// a predictable shared directory and a lock anyone could hold.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { acquireLease, budgetDir, budgetSnapshot, budgetState, sweepLeases, withBudgetLock } from '../../src/budget/leases.ts';
import { detectLimits, memoryNow, QEMU_OVERHEAD_MIB, residentMiB } from '../../src/budget/limits.ts';
import { decide, MAX_BYPASSES, memoryFreeMiB, type BudgetView, type Held, type Request } from '../../src/budget/policy.ts';
import { createLogger } from '../../src/log.ts';
import { withFileLock } from '../../src/budget/lock.ts';
import { ensureOwnedPrivateDir } from '../../src/util/owned-dir.ts';

const req = (id: string, process: string, cpus = 1, memoryMiB = 100): Request => ({ id, guest: id, process, cpus, memoryMiB });
const held = (id: string, process: string, cpus = 1, memoryMiB = 100): Held => ({ id, guest: id, process, cpus, memoryMiB });
const view = (over: Partial<BudgetView>): BudgetView => ({ queue: [], leases: [], cpus: 2, memoryFreeMiB: 10_000, bypasses: 0, cpuOvercommit: 2, ...over });

describe('admission rules', () => {
  test('first come, first served: only the oldest request is admitted when it fits', () => {
    const a = req('1', 'A');
    const b = req('2', 'B');
    expect(decide(a, view({ queue: [a, b] }))).toMatchObject({ admit: true, rule: 'fifo' });
    expect(decide(b, view({ queue: [a, b] }))).toMatchObject({ admit: false, reason: 'queued', ahead: 1 });
  });

  test('a process that holds a lease passes an older request that waits for that lease (hold and wait)', () => {
    const large = req('1', 'B', 2);
    const more = req('2', 'A');
    const v = view({ queue: [large, more], leases: [held('0', 'A')] });
    expect(decide(large, v)).toMatchObject({ admit: false, deadlock: false });
    expect(decide(more, v)).toMatchObject({ admit: true, rule: 'hold-and-wait', bypass: true });
  });

  test('a process\'s own requests keep their order: it passes only other processes\' requests', () => {
    const c = req('1', 'A');
    const d = req('2', 'A');
    const v = view({ queue: [c, d], leases: [held('0', 'A')] });
    expect(decide(d, v)).toMatchObject({ admit: false, reason: 'queued' });
    expect(decide(c, v)).toMatchObject({ admit: true, rule: 'fifo' });
  });

  test(`the oldest request is passed at most ${MAX_BYPASSES} times, then served first`, () => {
    const large = req('1', 'B', 2);
    const more = req('2', 'A');
    const v = (bypasses: number) => view({ queue: [large, more], leases: [held('0', 'A')], bypasses });
    expect(decide(more, v(MAX_BYPASSES - 1)).admit).toBe(true);
    expect(decide(more, v(MAX_BYPASSES))).toMatchObject({ admit: false, reason: 'queued' });
  });

  test('a process that holds every lease may overcommit CPUs (never memory) to start one more guest', () => {
    const more = req('2', 'A', 1, 500);
    const fixture = held('0', 'A', 2, 500);
    expect(decide(more, view({ queue: [more], leases: [fixture] }))).toMatchObject({ admit: true, rule: 'own-overcommit' });
    expect(decide(more, view({ queue: [more], leases: [fixture], cpuOvercommit: 1 })).admit).toBe(false);
    expect(decide(more, view({ queue: [more], leases: [fixture], memoryFreeMiB: 499 })).admit).toBe(false);
    // Someone else's lease among the holders: no overcommit.
    expect(decide(more, view({ queue: [more], leases: [fixture, held('9', 'B', 0, 1)] })).admit).toBe(false);
  });

  test('holders that all hold and wait are a deadlock; a holder waiting on a running guest is not', () => {
    const a = req('1', 'A');
    const b = req('2', 'B');
    const leases = [held('0a', 'A'), held('0b', 'B')];
    expect(decide(a, view({ queue: [a, b], leases }))).toMatchObject({ admit: false, deadlock: true });
    expect(decide(a, view({ queue: [a], leases }))).toMatchObject({ admit: false, deadlock: false });
  });

  test('memory free for a new guest is what the host has now, less what running guests may still grow into', () => {
    expect(memoryFreeMiB(8000, 1000, [{ ...held('0', 'A', 1, 1344), measuredMiB: 600 }, held('1', 'B', 1, 1344)])).toBe(8000 - 1000 - 744 - 1344);
    expect(memoryFreeMiB(1000, 1000, [held('0', 'A', 1, 1344)])).toBe(0);
  });

  test('a large request among a stream of small ones is admitted within a bounded number of admissions', () => {
    // Three processes each keep one small guest running and ask for one more as soon as they can
    // (hold and wait); one large request (the whole budget) arrives among them.
    let clock = 0;
    const leases: Held[] = [];
    let queue: Request[] = [];
    let bypasses = 0;
    let head: string | undefined;
    const processes = ['A', 'B', 'C'];
    for (const p of processes) queue.push(req(String(clock++).padStart(4, '0'), p));
    const large = req(String(clock++).padStart(4, '0'), 'L', 4);
    queue.push(large);
    let admissions = 0;
    let largeAdmittedAfter: number | undefined;
    while (largeAdmittedAfter === undefined && admissions < 100) {
      if (queue[0]?.id !== head) [head, bypasses] = [queue[0]?.id, 0];
      const next = queue.find((r) => decide(r, view({ queue, leases, cpus: 4, bypasses })).admit);
      if (!next) {
        // Nothing fits: the oldest running guest finishes.
        leases.shift();
        continue;
      }
      const decision = decide(next, view({ queue, leases, cpus: 4, bypasses }));
      if (decision.admit && decision.bypass) bypasses++;
      admissions++;
      queue = queue.filter((r) => r !== next);
      leases.push({ ...next });
      if (next === large) largeAdmittedAfter = admissions;
      else queue.push(req(String(clock++).padStart(4, '0'), next.process));
    }
    expect(largeAdmittedAfter).toBeDefined();
    expect(largeAdmittedAfter!).toBeLessThanOrEqual(processes.length + MAX_BYPASSES + 1);
  });
});

describe('the budget on disk', () => {
  let cleanup: () => Promise<void>;
  let budget: string;
  const saved = { ...process.env };
  const log = createLogger('test', () => undefined);

  beforeEach(async () => {
    ({ path: budget, cleanup } = await dir({ unsafeCleanup: true }));
    process.env.GUESTLAB_BUDGET_DIR = path.join(budget, 'budget');
    process.env.GUESTLAB_BUDGET_CPUS = '2';
    process.env.GUESTLAB_BUDGET_MEMORY_MIB = String(2 * (512 + QEMU_OVERHEAD_MIB));
  });
  afterEach(async () => {
    process.env = { ...saved };
    await cleanup();
  });

  test('a half-written or unreadable queue entry is never deleted by a reader (ps, sweep, admission)', async () => {
    await withBudgetLock(async () => undefined);
    const torn = path.join(budgetDir(), 'queue', '000000000000001-1-torn.json');
    await fs.writeFile(torn, '{"id":"000000000000001-1-to');
    for (let i = 0; i < 3; i++) {
      await budgetState();
      await sweepLeases();
    }
    const lease = await acquireLease({ guest: 'a', cpus: 1, memoryMiB: 512, log });
    await lease.release();
    expect(await fs.readFile(torn, 'utf8')).toBe('{"id":"000000000000001-1-to');
    // A temp file of a writer that died is swept; one of a live writer is not.
    const deadTemp = path.join(budgetDir(), 'queue', `x.json.${2 ** 22 + 7}.abc.tmp`);
    const liveTemp = path.join(budgetDir(), 'queue', `y.json.${process.pid}.abc.tmp`);
    await fs.writeFile(deadTemp, '{');
    await fs.writeFile(liveTemp, '{');
    await sweepLeases();
    expect((await fs.readdir(path.join(budgetDir(), 'queue'))).sort()).toEqual([path.basename(torn), path.basename(liveTemp)].sort());
  });

  test('a request whose queue entry was removed writes it again and is admitted', async () => {
    const blocker = await acquireLease({ guest: 'blocker', cpus: 2, memoryMiB: 512, log });
    process.env.GUESTLAB_BUDGET_CPU_OVERCOMMIT = '1';
    const waiting = acquireLease({ guest: 'waiting', cpus: 1, memoryMiB: 512, log, pollMs: 20 });
    await new Promise((r) => setTimeout(r, 100));
    const queueDir = path.join(budgetDir(), 'queue');
    for (const entry of await fs.readdir(queueDir)) await fs.rm(path.join(queueDir, entry));
    expect((await fs.readdir(queueDir)).filter((e) => e.endsWith('.json'))).toEqual([]);
    // Written again at the request's next look (every 20 ms; a loaded host may take longer).
    for (let i = 0; i < 250 && (await budgetState()).queue.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect((await budgetState()).queue.map((q) => q.guest)).toEqual(['waiting']);
    await blocker.release();
    const lease = await waiting;
    expect((await budgetState()).leases.map((l) => l.guest)).toEqual(['waiting']);
    await lease.release();
  });

  test('holders that each wait for the other fail with BudgetDeadlockError naming the holders', async () => {
    process.env.GUESTLAB_BUDGET_CPU_OVERCOMMIT = '1';
    const mine = await acquireLease({ guest: 'mine', cpus: 1, memoryMiB: 512, log });
    // Another process holds the other CPU and waits for one more, like this one.
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { acquireLease } = await import(${JSON.stringify(path.resolve('src/budget/leases.ts'))});
      const { createLogger } = await import(${JSON.stringify(path.resolve('src/log.ts'))});
      const log = createLogger('child', () => {});
      await acquireLease({ guest: 'theirs', cpus: 1, memoryMiB: 512, log });
      process.stdout.write('leased\\n');
      await acquireLease({ guest: 'theirs-2', cpus: 1, memoryMiB: 512, log, pollMs: 20 }).catch(() => {});
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
    try {
      await once(child.stdout!, 'data');
      const error = await acquireLease({ guest: 'mine-2', cpus: 1, memoryMiB: 512, log, pollMs: 20, deadlockAfterMs: 500 }).catch((e: unknown) => e);
      expect(error).toMatchObject({ name: 'BudgetDeadlockError', code: 'ERR_BUDGET_DEADLOCK' });
      expect((error as Error).message).toMatch(/Holders: .*mine \(pid \d+, 1 CPU/);
      expect((error as Error).message).toMatch(/theirs \(pid \d+, 1 CPU/);
    } finally {
      child.kill('SIGKILL');
      await mine.release();
    }
  });

  test('overrides are this process\'s own: another process with none sees the host', async () => {
    process.env.GUESTLAB_BUDGET_CPUS = '32';
    const lease = await acquireLease({ guest: 'a', cpus: 1, memoryMiB: 512, log });
    await lease.release();
    const env = { ...process.env };
    delete env.GUESTLAB_BUDGET_CPUS;
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { detectLimits } = await import(${JSON.stringify(path.resolve('src/budget/limits.ts'))});
      process.stdout.write(String((await detectLimits()).cpus));
    `], { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    await once(child, 'exit');
    expect(Number(out)).toBe(os.availableParallelism());
    expect(await fs.readdir(budgetDir())).not.toContain('limits.json');
  });

  test('bad override values are refused by name with the fix', async () => {
    for (const value of ['abc', '0x10', '-2', '1.5']) {
      await expect(detectLimits({ GUESTLAB_BUDGET_CPUS: value })).rejects.toThrow(new RegExp(`GUESTLAB_BUDGET_CPUS.*${JSON.stringify(value).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    }
    process.env.GUESTLAB_BUDGET_CPU_OVERCOMMIT = 'lots';
    await expect(acquireLease({ guest: 'a', cpus: 1, memoryMiB: 512, log })).rejects.toThrow(/GUESTLAB_BUDGET_CPU_OVERCOMMIT .*"lots"/);
  });

  test('memory is measured: MemAvailable at each admission, and a leased QEMU by its resident memory', async () => {
    delete process.env.GUESTLAB_BUDGET_MEMORY_MIB;
    const memory = await memoryNow();
    expect(memory.fixedMiB).toBeUndefined();
    expect(memory.availableMiB).toBeGreaterThan(0);
    expect(memory.source).toMatch(/MemAvailable now, minus 1024 MiB reserve|cgroup memory.max/);
    // A lease attached to a running process (here: this one) is counted by what it uses.
    const lease = await acquireLease({ guest: 'a', cpus: 1, memoryMiB: 100_000 - QEMU_OVERHEAD_MIB, log }).catch((e: unknown) => e);
    expect(lease).toMatchObject({ name: 'BudgetExceededError' });
    const small = await acquireLease({ guest: 'b', cpus: 1, memoryMiB: 64, log });
    await small.attach(process.pid);
    const snapshot = await withBudgetLock((d) => budgetSnapshot(d));
    const rss = (await residentMiB(process.pid))!;
    expect(snapshot.leases[0]!.measuredMiB).toBeGreaterThan(rss / 2);
    expect(snapshot.memoryFreeMiB).toBe(Math.max(0, snapshot.memory.availableMiB - snapshot.memory.reserveMiB - Math.max(0, 64 + QEMU_OVERHEAD_MIB - snapshot.leases[0]!.measuredMiB!)));
    await small.release();
  });
});

describe('a private budget directory and lock', () => {
  const saved = { ...process.env };
  afterEach(() => {
    process.env = { ...saved };
  });

  test('the default is the user\'s runtime or cache directory, whatever the image cache, never a shared path in /tmp', () => {
    expect(budgetDir({ XDG_RUNTIME_DIR: '/run/user/1000' })).toBe('/run/user/1000/guestlab/budget');
    expect(budgetDir({ XDG_CACHE_HOME: '/home/u/.cache' })).toBe('/home/u/.cache/guestlab/budget');
    // Processes with image caches of their own (GUESTLAB_CACHE_DIR) still share the host's budget.
    expect(budgetDir({ XDG_CACHE_HOME: '/home/u/.cache', GUESTLAB_CACHE_DIR: '/tmp/ci-cache' })).toBe('/home/u/.cache/guestlab/budget');
    expect(budgetDir({ GUESTLAB_BUDGET_DIR: 'rel/b' })).toBe(path.resolve('rel/b'));
  });

  test('a symlink or a directory of another user is refused; a loose mode of our own is tightened', async () => {
    const { path: root, cleanup } = await dir({ unsafeCleanup: true });
    try {
      await fs.mkdir(path.join(root, 'elsewhere'));
      await fs.symlink(path.join(root, 'elsewhere'), path.join(root, 'link'));
      await expect(ensureOwnedPrivateDir(path.join(root, 'link'), 'GUESTLAB_BUDGET_DIR')).rejects.toThrow(/link is a symbolic link; .*GUESTLAB_BUDGET_DIR/);
      await fs.mkdir(path.join(root, 'loose'), { mode: 0o777 });
      await fs.chmod(path.join(root, 'loose'), 0o777);
      await ensureOwnedPrivateDir(path.join(root, 'loose'), 'GUESTLAB_BUDGET_DIR');
      expect((await fs.stat(path.join(root, 'loose'))).mode & 0o777).toBe(0o700);
      if (process.getuid?.() === 0) {
        await fs.mkdir(path.join(root, 'theirs'));
        await fs.chown(path.join(root, 'theirs'), 65534, 65534);
        await expect(ensureOwnedPrivateDir(path.join(root, 'theirs'), 'GUESTLAB_BUDGET_DIR')).rejects.toThrow(/belongs to uid 65534, not to this user/);
      }
    } finally {
      await cleanup();
    }
  });

  test('the lock excludes, and a lock left by a killed process is taken over', async () => {
    const { path: root, cleanup } = await dir({ unsafeCleanup: true });
    try {
      const file = path.join(root, 'lock');
      let inside = 0;
      let most = 0;
      await Promise.all(Array.from({ length: 20 }, () => withFileLock(file, {}, async () => {
        most = Math.max(most, ++inside);
        await new Promise((r) => setTimeout(r, 2));
        inside--;
      })));
      expect(most).toBe(1);
      const child = spawn(process.execPath, ['--input-type=module', '-e', `
        const { withFileLock } = await import(${JSON.stringify(path.resolve('src/budget/lock.ts'))});
        setInterval(() => {}, 1000);
        await withFileLock(${JSON.stringify(file)}, {}, async () => { process.stdout.write('held\\n'); await new Promise(() => {}); });
      `], { stdio: ['ignore', 'pipe', 'inherit'] });
      await once(child.stdout!, 'data');
      await expect(withFileLock(file, { timeoutMs: 200 }, async () => 'got it')).rejects.toThrow(new RegExp(`held by process ${child.pid}`));
      child.kill('SIGKILL');
      await once(child, 'exit');
      expect(await withFileLock(file, { timeoutMs: 2000 }, async () => 'got it')).toBe('got it');
    } finally {
      await cleanup();
    }
  });
});

describe('guestlab budget: how many guests fit', () => {
  test('the smaller of what the CPUs and the memory carry, now and in total, with the arithmetic', async () => {
    const { capacity } = await import('../../src/budget/capacity.ts');
    const fit = capacity({ cpus: 8, usedCpus: 3, memoryFreeMiB: 4000, wholeMemoryMiB: 20_000, cpuSource: 'os', memorySource: 'MemAvailable' }, { cpus: 2, memoryMiB: 1024 });
    expect(fit).toMatchObject({ total: 4, now: 2, perGuest: { cpus: 2, memoryMiB: 1024 + QEMU_OVERHEAD_MIB } });
    expect(fit.lines.join('\n')).toContain('8 / 2 = 4 in total, (8 - 3) / 2 = 2 now');
    expect(fit.lines.join('\n')).toContain(`20000 / ${1024 + QEMU_OVERHEAD_MIB} = 14 in total, 4000 / ${1024 + QEMU_OVERHEAD_MIB} = 2 now`);
    expect(capacity({ cpus: 2, usedCpus: 2, memoryFreeMiB: 0, wholeMemoryMiB: 100, cpuSource: '', memorySource: '' }, { cpus: 1, memoryMiB: 512 })).toMatchObject({ total: 0, now: 0 });
  });
});
