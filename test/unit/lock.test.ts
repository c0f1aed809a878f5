import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { acquireLock, withLock } from '../../src/util/lock.ts';

const unique = () => `test-lock-${process.pid}-${Math.random()}`;

describe('acquireLock', () => {
  test('serializes holders in one process', async () => {
    const name = unique();
    const order: string[] = [];
    await Promise.all([
      withLock(name, {}, async () => {
        order.push('a:in');
        await new Promise((r) => setTimeout(r, 100));
        order.push('a:out');
      }),
      new Promise((r) => setTimeout(r, 10)).then(() => withLock(name, { pollMs: 10 }, async () => void order.push('b:in'))),
    ]);
    expect(order).toEqual(['a:in', 'a:out', 'b:in']);
  });

  test('times out with a clear error while another holder keeps it', async () => {
    const name = unique();
    const held = await acquireLock(name);
    await expect(acquireLock(name, { timeoutMs: 200, pollMs: 20 })).rejects.toThrow(/Timed out after 200 ms waiting for lock/);
    await held.release();
    await (await acquireLock(name, { timeoutMs: 200 })).release();
  });

  test('a holder killed with SIGKILL releases the lock at once', async () => {
    const name = unique();
    const lockModule = path.resolve('src/util/lock.ts');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { acquireLock } = await import(${JSON.stringify(lockModule)});
      await acquireLock(${JSON.stringify(name)});
      process.stdout.write('held\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout!, 'data');
    await expect(acquireLock(name, { timeoutMs: 100, pollMs: 20 })).rejects.toThrow(/Timed out/);
    child.kill('SIGKILL');
    await once(child, 'exit');
    const lock = await acquireLock(name, { timeoutMs: 1000, pollMs: 20 });
    await lock.release();
  });
});
