// QEMU's version and machine alias, asked once per QEMU build and kept in the cache: a new process
// finds them there instead of running QEMU twice (part of every restore's time).
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterEach, beforeEach, expect, test } from 'vitest';

let cacheDir: string;
beforeEach(async () => {
  cacheDir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-probe-'));
});
afterEach(() => fs.rm(cacheDir, { recursive: true, force: true }));

/** probeQemu() in a process of its own (the answer is kept per process too). */
const probeInChild = async () => {
  const script = "import { probeQemu } from './src/host/probe.ts'; console.log(JSON.stringify(await probeQemu()));";
  const child = await execa(process.execPath, ['--input-type=module', '-e', script], { env: { GUESTLAB_CACHE_DIR: cacheDir } });
  return JSON.parse(child.stdout) as { qemu: { path: string; version: string }; q35Machine: string };
};

test.runIf(await fs.stat('/usr/bin/qemu-system-x86_64').then(() => true, () => false))('the answer is kept under the binary\'s identity and used by the next process', async () => {
  const first = await probeInChild();
  expect(first.q35Machine).toMatch(/^pc-q35-\d+\.\d+$/);
  const files = await fs.readdir(path.join(cacheDir, 'host'));
  expect(files).toEqual([expect.stringMatching(/^qemu-[0-9a-f]{32}\.json$/)]);
  const kept = path.join(cacheDir, 'host', files[0]!);
  expect((await fs.stat(kept)).mode & 0o777).toBe(0o600);
  // A second process reads it: a changed answer in the file shows that it did not ask QEMU.
  await fs.writeFile(kept, JSON.stringify({ ...first, q35Machine: 'pc-q35-from-the-file' }));
  expect((await probeInChild()).q35Machine).toBe('pc-q35-from-the-file');
  // A torn file is asked again, and written anew.
  await fs.writeFile(kept, '{"qemu":');
  expect(await probeInChild()).toEqual(first);
});
