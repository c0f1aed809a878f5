// Six guest tests over three files, run by a real vitest with three workers, under a budget of
// two 1-vCPU guests: sampled from outside, never more than two QEMUs alive, and all six pass.
import fs from 'node:fs/promises';
import path from 'node:path';
import { expect, test } from 'vitest';
import { plain, createSuite, GUEST_TEST_HEADER, qemuPidsMentioning } from './helpers.ts';

const file = (n: number) => `${GUEST_TEST_HEADER}
const test = base.extend({ vm: guestFixture({ image: 'debian-12', cpus: 1, memoryMiB: 512 }, { scope: 'test' }) });
for (const t of ['a', 'b']) {
  test('file ${n} test ' + t, async ({ vm }) => {
    expect(await vm.succeed(['echo', 'ok'])).toBe('ok\\n');
  });
}
`;

test('a budget of two guests holds six guest tests to two at a time, and all pass', async () => {
  const suite = await createSuite({ 'one.test.ts': file(1), 'two.test.ts': file(2), 'three.test.ts': file(3) });
  try {
    const samples: number[] = [];
    const run = suite.run(['--maxWorkers=3', '--reporter=verbose'], { GUESTLAB_BUDGET_CPUS: '2', GUESTLAB_BUDGET_MEMORY_MIB: '8192' });
    let finished = false;
    void run.finally(() => (finished = true));
    while (!finished) {
      samples.push((await qemuPidsMentioning(suite.instancesDir)).length);
      await new Promise((r) => setTimeout(r, 250));
    }
    const result = await run;
    expect(result.exitCode, plain(result.all)).toBe(0);
    expect(plain(result.all)).toMatch(/Tests\s+6 passed \(6\)/);
    const peak = Math.max(...samples);
    console.log(`budget e2e: ${samples.length} samples, peak ${peak} QEMU(s), ${samples.filter((s) => s === 2).length} samples at two`);
    expect(peak).toBe(2);
    expect(plain(result.all)).toMatch(/waiting for the budget/);
    expect(await fs.readdir(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(path.join(suite.budgetDir, 'leases'))).toEqual([]);
  } finally {
    await suite.cleanup();
  }
});
