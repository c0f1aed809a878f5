import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, onTestFinished, test } from 'vitest';
import { acquireLease, budgetState, sweepLeases } from '../../src/budget/leases.ts';
import { parseCgroupPath, parseCpuMax, parseMemoryMax, QEMU_OVERHEAD_MIB } from '../../src/budget/limits.ts';
import { createLogger } from '../../src/log.ts';
import { currentIdentity, isAlive, parseStatStartTime, processStartTime } from '../../src/host/process-identity.ts';

// Whether a request fits (CPUs and memory) is the admission policy's: test/unit/budget-policy.test.ts.
describe('budget limits', () => {
  test('cgroup v2 files', () => {
    expect(parseCpuMax('max 100000\n')).toBeUndefined();
    expect(parseCpuMax('200000 100000\n')).toBe(2);
    expect(parseCpuMax('50000 100000\n')).toBe(1);
    expect(parseMemoryMax('max\n')).toBeUndefined();
    expect(parseMemoryMax(`${4 * 1024 ** 3}\n`)).toBe(4096);
    expect(parseCgroupPath('0::/system.slice/ci.service\n')).toBe('/system.slice/ci.service');
  });
});

describe('process identity', () => {
  test('start time survives a command name with spaces and parentheses', () => {
    const stat = '1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100';
    expect(parseStatStartTime(stat)).toBe(987654);
  });

  test('a pid with another start time is not the recorded process', () => {
    const me = currentIdentity();
    expect(isAlive(me)).toBe(true);
    expect(isAlive({ pid: me.pid, start: me.start + 1 })).toBe(false);
    expect(processStartTime(2 ** 22 + 12345)).toBeUndefined();
  });

  test('a zombie (exited, not reaped) is dead', async () => {
    // sh starts a child that exits at once, then becomes `sleep`, which never reaps it.
    const parent = spawn('sh', ['-c', 'true & exec sleep 30']);
    onTestFinished(() => {
      parent.kill('SIGKILL');
    });
    await once(parent, 'spawn');
    let zombie: number | undefined;
    for (let i = 0; i < 100 && zombie === undefined; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const children = await fs.readFile(`/proc/${parent.pid}/task/${parent.pid}/children`, 'utf8').catch(() => '');
      const pid = Number(children.trim().split(' ')[0]);
      if (pid && (await fs.readFile(`/proc/${pid}/stat`, 'utf8')).includes(') Z ')) zombie = pid;
    }
    expect(zombie).toBeDefined();
    const start = processStartTime(zombie!);
    expect(start).toBeDefined();
    expect(isAlive({ pid: zombie!, start: start! })).toBe(false);
    expect(isAlive({ pid: parent.pid!, start: processStartTime(parent.pid!)! })).toBe(true);
  });
});

describe('leases', () => {
  let cleanup: () => Promise<void>;
  let budget: string;
  const saved = { ...process.env };
  const log = createLogger('test', () => undefined);
  const children: ChildProcess[] = [];

  beforeEach(async () => {
    ({ path: budget, cleanup } = await dir({ unsafeCleanup: true }));
    process.env.GUESTLAB_BUDGET_DIR = budget;
    process.env.GUESTLAB_BUDGET_CPUS = '2';
    process.env.GUESTLAB_BUDGET_MEMORY_MIB = String(2 * (512 + QEMU_OVERHEAD_MIB));
  });
  afterEach(async () => {
    process.env = { ...saved };
    for (const child of children.splice(0)) child.kill('SIGKILL');
    await cleanup();
  });

  test('a request larger than the whole budget fails at once, naming the numbers', async () => {
    await expect(acquireLease({ guest: 'big', cpus: 3, memoryMiB: 512, log })).rejects.toThrow(
      /asks for 3 CPU\(s\) and 512 MiB \(\+\d+ MiB for QEMU\), more than the whole budget of 2 CPU\(s\)/,
    );
    expect((await budgetState()).queue).toEqual([]);
  });

  test('a full budget makes the next guest wait, first come first served', async () => {
    const a = await acquireLease({ guest: 'a', cpus: 1, memoryMiB: 512, log });
    const b = await acquireLease({ guest: 'b', cpus: 1, memoryMiB: 512, log });
    const order: string[] = [];
    const c = acquireLease({ guest: 'c', cpus: 1, memoryMiB: 512, log, pollMs: 20 }).then((l) => (order.push('c'), l));
    await new Promise((r) => setTimeout(r, 50));
    const d = acquireLease({ guest: 'd', cpus: 1, memoryMiB: 512, log, pollMs: 20 }).then((l) => (order.push('d'), l));
    await new Promise((r) => setTimeout(r, 200));
    expect(order).toEqual([]);
    expect((await budgetState()).queue.map((q) => q.guest)).toEqual(['c', 'd']);
    await a.release();
    const leaseC = await c;
    expect(order).toEqual(['c']);
    await b.release();
    const leaseD = await d;
    expect(order).toEqual(['c', 'd']);
    expect(leaseC.waitedMs).toBeGreaterThan(100);
    await leaseC.release();
    await leaseD.release();
    expect(await budgetState()).toEqual({ leases: [], queue: [] });
  });

  test('a waiting request can be aborted and leaves no queue entry', async () => {
    process.env.GUESTLAB_BUDGET_CPU_OVERCOMMIT = '1';
    onTestFinished(() => {
      delete process.env.GUESTLAB_BUDGET_CPU_OVERCOMMIT;
    });
    const a = await acquireLease({ guest: 'a', cpus: 2, memoryMiB: 512, log });
    const controller = new AbortController();
    const waiting = acquireLease({ guest: 'b', cpus: 1, memoryMiB: 512, log, signal: controller.signal, pollMs: 20 });
    setTimeout(() => controller.abort(), 100);
    await expect(waiting).rejects.toThrow(/aborted/);
    expect((await budgetState()).queue).toEqual([]);
    await a.release();
  });

  test('a lease of a process killed with SIGKILL is reclaimed by the next process that looks', async () => {
    const leasesModule = path.resolve('src/budget/leases.ts');
    const logModule = path.resolve('src/log.ts');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { acquireLease } = await import(${JSON.stringify(leasesModule)});
      const { createLogger } = await import(${JSON.stringify(logModule)});
      await acquireLease({ guest: 'doomed', cpus: 2, memoryMiB: 512, log: createLogger('child', () => {}) });
      process.stdout.write('leased\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
    children.push(child);
    await once(child.stdout!, 'data');
    expect((await budgetState()).leases.map((l) => l.guest)).toEqual(['doomed']);
    child.kill('SIGKILL');
    await once(child, 'exit');
    const lease = await acquireLease({ guest: 'next', cpus: 2, memoryMiB: 512, log });
    expect((await budgetState()).leases.map((l) => l.guest)).toEqual(['next']);
    await lease.release();
  });

  test("a kept guest's lease is its QEMU's: it holds the guest's memory but no CPUs until QEMU exits", async () => {
    const qemu = spawn('sleep', ['300']);
    children.push(qemu);
    await once(qemu, 'spawn');
    const kept = await acquireLease({ guest: 'kept', cpus: 2, memoryMiB: 512, log });
    await kept.handOver({ pid: qemu.pid!, start: processStartTime(qemu.pid!)! });
    await kept.release(); // no longer this process's to release
    expect((await budgetState()).leases).toMatchObject([{ guest: 'kept', owner: { pid: qemu.pid }, cpus: 0, keptAt: expect.any(String) }]);
    // Its CPUs are free: a 1-CPU guest fits at once. Its memory is not: the budget holds two guests.
    const a = await acquireLease({ guest: 'a', cpus: 1, memoryMiB: 512, log });
    const lines: string[] = [];
    const waiting = acquireLease({ guest: 'b', cpus: 1, memoryMiB: 512, log: createLogger('test', (line) => lines.push(line)), pollMs: 20 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(lines.join('\n')).toMatch(/waiting for the budget: .*kept guests \(kept\) hold their memory until they are stopped \(guestlab stop GUEST, or guestlab gc --kept\)/);
    // The user stops the kept guest: its QEMU exits, and the next look reclaims the lease.
    qemu.kill('SIGKILL');
    const b = await waiting;
    expect((await budgetState()).leases.map((l) => l.guest).sort()).toEqual(['a', 'b']);
    await Promise.all([a.release(), b.release()]);
  });

  test('a stale lease naming a live, unrelated process (reused pid) is cleaned without signalling it', async () => {
    const bystander = spawn('sleep', ['300']);
    children.push(bystander);
    await once(bystander, 'spawn');
    const start = processStartTime(bystander.pid!)!;
    await fs.mkdir(path.join(budget, 'leases'), { recursive: true });
    const stale = { id: '0-stale', owner: { pid: bystander.pid, start: start - 1 }, guest: 'ghost', cpus: 2, memoryMiB: 100, createdAt: 0 };
    await fs.writeFile(path.join(budget, 'leases', '0-stale.json'), JSON.stringify(stale));
    const removed = await sweepLeases();
    expect(removed.map((r) => r.guest)).toEqual(['ghost']);
    expect(bystander.exitCode).toBeNull();
    expect(bystander.signalCode).toBeNull();
    expect(processStartTime(bystander.pid!)).toBe(start);
  });
});
