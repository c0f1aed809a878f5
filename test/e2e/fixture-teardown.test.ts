// Runs a real vitest on a small suite whose guest test fails, and checks from the outside that the
// fixture still stopped the guest: QEMU gone, instance directory gone.
import fs from 'node:fs/promises';
import path from 'node:path';
import { expect, test } from 'vitest';
import { plain, createSuite, GUEST_TEST_HEADER } from './helpers.ts';

test('a file-scoped guest fixture is torn down when its test fails', async () => {
  const suite = await createSuite({});
  const pidFile = path.join(suite.dir, 'qemu.pid');
  await fs.writeFile(path.join(suite.dir, 'failing.test.ts'), `${GUEST_TEST_HEADER}
import { writeFileSync } from 'node:fs';
const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) });

test('fails on purpose', async ({ vm }) => {
  writeFileSync(${JSON.stringify(pidFile)}, String(vm.pid));
  expect(await vm.succeed(['echo', 'actual'])).toBe('expected\\n');
});
`);
  try {
    const run = await suite.run();
    expect(run.exitCode, plain(run.all)).toBe(1);
    expect(plain(run.all)).toContain('fails on purpose');
    expect(plain(run.all)).toMatch(/expected 'actual\\n' to be 'expected\\n'/);

    const pid = Number(await fs.readFile(pidFile, 'utf8'));
    expect(pid).toBeGreaterThan(0);
    expect(() => process.kill(pid, 0)).toThrow();
    expect(await fs.readdir(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(path.join(suite.budgetDir, 'leases'))).toEqual([]);
  } finally {
    await suite.cleanup();
  }
});
