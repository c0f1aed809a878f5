import { describe, expect, it } from 'vitest';
import { pollFor, retryUntil } from '../../src/util/retry.ts';

describe('retryUntil', () => {
  it('retries until the attempt succeeds', async () => {
    let calls = 0;
    const value = await retryUntil(async () => {
      calls++;
      if (calls < 3) throw new Error(`attempt ${calls}`);
      return 'ok';
    }, { deadline: Date.now() + 5000, minDelayMs: 1 });
    expect(value).toBe('ok');
    expect(calls).toBe(3);
  });

  it('throws the last error once the deadline has passed', async () => {
    let calls = 0;
    const started = Date.now();
    await expect(retryUntil(async () => {
      calls++;
      throw new Error(`attempt ${calls}`);
    }, { deadline: Date.now() + 300, minDelayMs: 20, maxDelayMs: 50 })).rejects.toThrow(/^attempt \d+$/);
    expect(calls).toBeGreaterThan(1);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('ends at once with the stop reason when stopWhen says so, before or between attempts', async () => {
    const dead = new Error('QEMU exited with code 1');
    await expect(retryUntil(async () => 'never', { deadline: Date.now() + 60_000, stopWhen: () => dead })).rejects.toBe(dead);
    let calls = 0;
    let gone = false;
    await expect(retryUntil(async () => {
      calls++;
      gone = true;
      throw new Error('connection refused');
    }, { deadline: Date.now() + 60_000, minDelayMs: 1, stopWhen: () => (gone ? dead : undefined) })).rejects.toBe(dead);
    expect(calls).toBe(1);
  });

  it('does not retry a final error', async () => {
    let calls = 0;
    const mismatch = new Error('host key mismatch');
    await expect(retryUntil(async () => {
      calls++;
      throw mismatch;
    }, { deadline: Date.now() + 60_000, isFinal: (e) => e === mismatch })).rejects.toBe(mismatch);
    expect(calls).toBe(1);
  });

  it('stops when the signal aborts', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('test over')), 50);
    await expect(retryUntil(async () => {
      throw new Error('not yet');
    }, { deadline: Date.now() + 60_000, minDelayMs: 10, signal: controller.signal })).rejects.toThrow('test over');
  });
});

describe('retryUntil and an abort during an attempt', () => {
  it('keeps what a succeeding attempt took instead of throwing it away', async () => {
    const controller = new AbortController();
    const taken: string[] = [];
    const value = await retryUntil(async () => {
      controller.abort(new Error('test over'));
      taken.push('lock');
      return 'lock';
    }, { deadline: Date.now() + 5000, signal: controller.signal });
    expect(value).toBe('lock');
    expect(taken).toEqual(['lock']);
  });

  it('ends after a failing attempt with the abort reason, without another attempt', async () => {
    const controller = new AbortController();
    let calls = 0;
    await expect(retryUntil(async () => {
      calls++;
      controller.abort(new Error('test over'));
      throw new Error('busy');
    }, { deadline: Date.now() + 5000, minDelayMs: 1, signal: controller.signal })).rejects.toThrow('test over');
    expect(calls).toBe(1);
  });
});

describe('pollFor', () => {
  it('returns the first defined value, or the deadline error', async () => {
    let n = 0;
    expect(await pollFor(async () => (++n >= 3 ? n : undefined), { deadline: Date.now() + 5000, minDelayMs: 1, onDeadline: () => new Error('late') })).toBe(3);
    await expect(pollFor(async () => undefined, { deadline: Date.now() + 100, minDelayMs: 10, onDeadline: () => new Error('late') })).rejects.toThrow('late');
  });
});
