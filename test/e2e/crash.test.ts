// Whatever happens to the process that started a guest, no QEMU outlives it, and the next sweep
// removes what it left on disk.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { expect, test } from 'vitest';
import { plain, createSuite, GUEST_TEST_HEADER, parentPid, qemuPidsMentioning, waitFor, type Suite } from './helpers.ts';

const bootingSuite = {
  'boot.test.ts': `${GUEST_TEST_HEADER}
const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) });
test('boots', async ({ vm }) => {
  expect(await vm.succeed(['true'])).toBe('');
});
`,
};

async function gc(suite: Suite): Promise<string> {
  const { stdout } = await execa('node', ['bin/guestlab.js', 'gc'], { env: suite.env });
  return stdout;
}

async function killDuringBoot(which: 'worker' | 'main', signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  const suite = await createSuite(bootingSuite);
  try {
    const run = suite.run();
    const qemu = await waitFor('QEMU to start', 300_000, async () => (await qemuPidsMentioning(suite.instancesDir))[0]);
    const worker = await parentPid(qemu);
    const victim = which === 'worker' ? worker : run.pid!;
    expect(victim).not.toBe(process.pid);
    process.kill(victim, signal);
    const killedAt = Date.now();
    await waitFor('QEMU to die with its owner', 10_000, async () => ((await qemuPidsMentioning(suite.instancesDir)).length === 0 ? true : undefined));
    console.log(`${signal} of the ${which}: QEMU gone after ${Date.now() - killedAt} ms`);
    if (which === 'main') await waitFor('the worker to exit', 10_000, async () => (await fs.access(`/proc/${worker}`).then(() => undefined, () => true)));
    await run;

    // What the dead process left on disk goes at the next sweep, and only then.
    const left = await fs.readdir(suite.instancesDir);
    const report = await gc(suite);
    for (const entry of left) expect(report).toContain(`removed instance directory ${path.join(suite.instancesDir, entry)}`);
    expect(await fs.readdir(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(path.join(suite.budgetDir, 'leases'))).toEqual([]);
    expect(await gc(suite)).toBe('Nothing to remove: no guest of a dead session is left.');
  } finally {
    await suite.cleanup();
  }
}

test('SIGKILL of a vitest worker while its guest boots takes QEMU with it', () => killDuringBoot('worker'));

test('SIGKILL of the main vitest process while a guest boots takes QEMU with it', () => killDuringBoot('main'));

test('SIGTERM of the main vitest process while a guest boots takes QEMU with it', () => killDuringBoot('main', 'SIGTERM'));

test('SIGINT (Ctrl-C) of the main vitest process while a guest boots takes QEMU with it', () => killDuringBoot('main', 'SIGINT'));

test('a test whose timeout is shorter than the boot fails, and its guest is reaped', async () => {
  const suite = await createSuite({
    'slow.test.ts': `${GUEST_TEST_HEADER}
const test = base.extend({ vm: guestFixture({ image: 'debian-12' }, { scope: 'test' }) });
test('times out while booting', { timeout: 8000 }, async ({ vm }) => {
  await vm.succeed(['true']);
});
`,
  });
  try {
    const run = suite.run();
    await waitFor('QEMU to start', 300_000, async () => (await qemuPidsMentioning(suite.instancesDir))[0]);
    const result = await run;
    expect(result.exitCode, plain(result.all)).toBe(1);
    expect(plain(result.all)).toMatch(/Test timed out in 8000ms/);
    expect(await qemuPidsMentioning(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(path.join(suite.budgetDir, 'leases'))).toEqual([]);
  } finally {
    await suite.cleanup();
  }
});
