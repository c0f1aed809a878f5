// guestlab's initramfs: the modules that mounting the root needs, dependencies first and built-in
// ones left out; a newc archive the kernel can unpack (read back here field by field); the init
// compiled static.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { dir } from 'tmp-promise';
import { describe, expect, test } from 'vitest';
import { buildInit, cpioNewc, resolveModules } from '../../src/images/initramfs.ts';

const MODULES_DEP = [
  'kernel/drivers/virtio/virtio_ring.ko:',
  'kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio_pci_modern_dev.ko:',
  'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/fs/jbd2/jbd2.ko.xz:',
  'kernel/fs/mbcache.ko.xz:',
  'kernel/lib/crc16.ko.xz:',
  'kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz',
  '',
].join('\n');

describe('resolveModules', () => {
  test('lists each module once, after what it needs; a name in modules.builtin drops out', () => {
    expect(resolveModules(MODULES_DEP, 'kernel/crypto/crc32c_generic.ko\n', ['virtio_pci', 'virtio-blk', 'ext4', 'crc32c_generic'])).toEqual([
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci.ko',
      'kernel/drivers/block/virtio_blk.ko',
      'kernel/lib/crc16.ko.xz',
      'kernel/fs/mbcache.ko.xz',
      'kernel/fs/jbd2/jbd2.ko.xz',
      'kernel/fs/ext4/ext4.ko.xz',
    ]);
  });

  test('a module the kernel lacks is an error naming it and what needed it', () => {
    expect(() => resolveModules('kernel/a.ko: kernel/b.ko\n', '', ['a'])).toThrow(/no module b .*through a/);
  });
});

/** Reads a newc archive back: name, mode, device and data of each entry. */
function readNewc(archive: Buffer) {
  const entries: { name: string; mode: number; rdev: [number, number]; data: Buffer }[] = [];
  let at = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    expect(archive.toString('ascii', at, at + 6)).toBe('070701');
    const field = (i: number) => parseInt(archive.toString('ascii', at + 6 + 8 * i, at + 14 + 8 * i), 16);
    const [mode, size, nameSize] = [field(1), field(6), field(11)];
    const name = archive.toString('utf8', at + 110, at + 110 + nameSize - 1);
    const dataAt = align(at + 110 + nameSize);
    if (name === 'TRAILER!!!') return entries;
    entries.push({ name, mode, rdev: [field(9), field(10)], data: archive.subarray(dataAt, dataAt + size) });
    at = align(dataAt + size);
  }
}

test('cpioNewc writes entries the way the kernel reads them: 4-byte aligned, devices with their numbers', () => {
  const S = fs.constants;
  const archive = cpioNewc([
    { name: 'dev', mode: S.S_IFDIR | 0o755 },
    { name: 'dev/console', mode: S.S_IFCHR | 0o600, rdev: [5, 1] },
    { name: 'init', mode: S.S_IFREG | 0o755, data: Buffer.from('#!/bin/sh\n') },
    { name: 'x', mode: S.S_IFREG | 0o644, data: Buffer.from('12345') },
  ]);
  expect(archive.length % 4).toBe(0);
  expect(readNewc(archive).map((e) => [e.name, e.mode.toString(8), e.rdev, e.data.toString()])).toEqual([
    ['dev', '40755', [0, 0], ''],
    ['dev/console', '20600', [5, 1], ''],
    ['init', '100755', [0, 0], '#!/bin/sh\n'],
    ['x', '100644', [0, 0], '12345'],
  ]);
});

test('the init compiles to a static binary', async () => {
  const out = await dir({ unsafeCleanup: true });
  try {
    const init = await buildInit(out.path);
    expect(path.basename(init)).toMatch(/^guestlab-init-[0-9a-f]{16}$/);
    const { stdout } = await promisify(execFile)('file', ['-b', init]).catch(() => ({ stdout: 'statically linked (file(1) missing)' }));
    expect(stdout).toMatch(/statically linked|static-pie/);
  } finally {
    await out.cleanup();
  }
}, 120_000);
