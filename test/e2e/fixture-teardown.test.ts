// Runs a real vitest on a small suite whose guest test fails, and checks from the outside that the
// fixture still stopped the guest: QEMU gone, instance directory gone.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { dir } from 'tmp-promise';
import { expect, test } from 'vitest';

test('a file-scoped guest fixture is torn down when its test fails', async () => {
  // Inside the repository, so that the suite resolves 'guestlab' like a user's project would.
  const suiteDir = await fs.mkdtemp(path.resolve('.guestlab/e2e-'));
  const { path: instancesDir, cleanup } = await dir({ unsafeCleanup: true, prefix: 'gl-e2e-' });
  const pidFile = path.join(suiteDir, 'qemu.pid');
  try {
    await fs.writeFile(path.join(suiteDir, 'vitest.config.ts'), `export default { test: { include: ['*.test.ts'], testTimeout: 900000 } };\n`);
    await fs.writeFile(path.join(suiteDir, 'failing.test.ts'), `
import { writeFileSync } from 'node:fs';
import { expect, test as base } from 'vitest';
import { guestFixture } from 'guestlab/vitest';

const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) });

test('fails on purpose', async ({ vm }) => {
  writeFileSync(${JSON.stringify(pidFile)}, String(vm.pid));
  expect(await vm.succeed(['echo', 'actual'])).toBe('expected\\n');
});
`);
    const run = await execa('node_modules/.bin/vitest', ['run', '--root', suiteDir, '--config', path.join(suiteDir, 'vitest.config.ts')], {
      reject: false,
      all: true,
      env: { GUESTLAB_INSTANCES_DIR: instancesDir, FORCE_COLOR: '0' },
    });
    expect(run.exitCode, run.all).toBe(1);
    expect(run.all).toContain('fails on purpose');
    expect(run.all).toMatch(/expected 'actual\\n' to be 'expected\\n'/);

    const pid = Number(await fs.readFile(pidFile, 'utf8'));
    expect(pid).toBeGreaterThan(0);
    expect(() => process.kill(pid, 0)).toThrow();
    expect(await fs.readdir(instancesDir)).toEqual([]);
  } finally {
    await fs.rm(suiteDir, { recursive: true, force: true });
    await cleanup();
  }
});
