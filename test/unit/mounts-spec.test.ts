// Mount entries are checked before anything is built: host directories made absolute, guest paths
// clean and clear of the kernel's filesystems, no guest path twice or nested; every message names
// the entry and the fix. Also the names a mount disk gets on both sides, and the image's sizing.
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { MOUNT_SERIAL_PREFIX, mountDevicePath, mountSerial } from '../../src/mounts/device.ts';
import { checkGuestMountPath, resolveMount, resolveMounts } from '../../src/mounts/mount-spec.ts';
import { imageGeometry, type TreeStats } from '../../src/mounts/tree.ts';

describe('resolveMounts', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeEach(async () => {
    ({ path: root, cleanup } = await dir({ unsafeCleanup: true }));
    await fs.mkdir(path.join(root, 'dist'));
    await fs.mkdir(path.join(root, 'docs'));
    await fs.writeFile(path.join(root, 'file.txt'), 'x');
  });
  afterEach(() => cleanup());

  test('host paths become absolute (relative to cwd), guest paths stay, every mount is read-only', async () => {
    const mounts = await resolveMounts([{ host: './dist', guest: '/mnt/dist' }, { host: path.join(root, 'docs'), guest: '/srv/docs', readOnly: true }], { cwd: root });
    expect(mounts).toEqual([
      { host: path.join(root, 'dist'), guest: '/mnt/dist', readOnly: true },
      { host: path.join(root, 'docs'), guest: '/srv/docs', readOnly: true },
    ]);
    expect(await resolveMounts(undefined)).toEqual([]);
  });

  test('a missing host directory, a file, or a bad entry is refused naming the entry and the fix', async () => {
    const check = (value: unknown) => resolveMounts(value, { cwd: root });
    await expect(check([{ host: './dist', guest: '/mnt/a' }, { host: './nope', guest: '/mnt/b' }]))
      .rejects.toThrow(`\`mounts[1].host\` "./nope" (${path.join(root, 'nope')}) does not exist: create the directory first or correct the path`);
    await expect(check([{ host: './file.txt', guest: '/mnt/a' }])).rejects.toThrow(/`mounts\[0\]\.host` ".\/file.txt" .* is not a directory: mount the directory that holds it/);
    await expect(check([{ host: '', guest: '/mnt/a' }])).rejects.toThrow(/Expected `mounts\[0\]\.host` to be the path of a host directory, got "" \(string\)/);
    await expect(check({ host: './dist', guest: '/mnt/a' })).rejects.toThrow(/Expected `mounts` to be an array/);
    await expect(check(['./dist'])).rejects.toThrow(/Expected `mounts\[0\]` to be an object like \{ host: '.\/dist', guest: '\/mnt\/dist' \}, got "\.\/dist"/);
    await expect(check([{ host: './dist', guest: '/mnt/a', ro: true }])).rejects.toThrow('Unknown key `mounts[0].ro`: a mount has host, guest, readOnly');
    await expect(check([{ host: './dist', guest: '/mnt/a', readOnly: false }])).rejects.toThrow(/`mounts\[0\]\.readOnly` is false \(boolean\), but a mount is a read-only snapshot/);
  });

  test.skipIf(process.getuid?.() === 0)('an unreadable host directory is refused (not as root: root reads everything)', async () => {
    await fs.chmod(path.join(root, 'dist'), 0);
    await expect(resolveMounts([{ host: './dist', guest: '/mnt/a' }], { cwd: root })).rejects.toThrow(/cannot be read by this user/);
  });

  test('the same guest path twice, or one inside another, is refused naming both entries', async () => {
    await expect(resolveMounts([{ host: './dist', guest: '/mnt/a' }, { host: './docs', guest: '/mnt/b' }, { host: './docs', guest: '/mnt/a' }], { cwd: root }))
      .rejects.toThrow('`mounts[2].guest` "/mnt/a" (string) repeats `mounts[0].guest` "/mnt/a" (string): mount each guest path once');
    await expect(resolveMounts([{ host: './dist', guest: '/mnt/a/b' }, { host: './docs', guest: '/mnt/a' }], { cwd: root }))
      .rejects.toThrow(/`mounts\[1\]\.guest` "\/mnt\/a" \(string\) and `mounts\[0\]\.guest` "\/mnt\/a\/b" \(string\) nest \(\/mnt\/a\/b is inside \/mnt\/a, which is read-only\)/);
    // A shared prefix is not nesting; the same host directory twice is fine.
    expect(await resolveMounts([{ host: './dist', guest: '/mnt/a' }, { host: './dist', guest: '/mnt/ab' }], { cwd: root })).toHaveLength(2);
  });

  test('a run-time mount may not repeat or nest with what is mounted', async () => {
    const mounted = ['/mnt/dist'];
    await expect(resolveMount({ host: './docs', guest: '/mnt/dist' }, 'mount()', { cwd: root, mounted })).rejects.toThrow(/`mount\(\)\.guest` "\/mnt\/dist" \(string\) repeats the mounted "\/mnt\/dist"/);
    await expect(resolveMount({ host: './docs', guest: '/mnt' }, 'mount()', { cwd: root, mounted })).rejects.toThrow(/nest/);
    expect(await resolveMount({ host: './docs', guest: '/mnt/docs' }, 'mount()', { cwd: root, mounted })).toEqual({ host: path.join(root, 'docs'), guest: '/mnt/docs', readOnly: true });
  });
});

describe('checkGuestMountPath', () => {
  test.each([
    ['mnt/dist', /is not absolute: write it from the root, e.g. '\/mnt\/dist'/],
    ['/mnt/dist/', /is not normalized: write it as '\/mnt\/dist'/],
    ['/mnt//dist', /is not normalized: write it as '\/mnt\/dist'/],
    ['/mnt/../etc', /is not normalized: write it as '\/etc'/],
    ['/mnt/./dist', /is not normalized: write it as '\/mnt\/dist'/],
    ['/', /cannot be '\/'/],
    ['/proc', /is under \/proc, which belongs to the kernel and systemd/],
    ['/sys/fs/x', /is under \/sys/],
    ['/dev/shm/x', /is under \/dev/],
    ['/run/user', /is under \/run/],
    ['/mnt/a\nb', /contains a control character/],
    ['', /Expected `m.guest` to be an absolute guest path/],
    [42, /Expected `m.guest` to be an absolute guest path like '\/mnt\/data', got 42 \(number\)/],
  ])('refuses %j', (value, message) => {
    expect(() => checkGuestMountPath(value, 'm.guest')).toThrow(message);
  });

  test('accepts clean paths, including names that only start like a reserved directory', () => {
    for (const p of ['/mnt/dist', '/devices', '/srv/run', '/home/user/proc', '/opt/a b']) expect(checkGuestMountPath(p, 'g')).toBe(p);
  });
});

describe('mount disk names', () => {
  test('serials are the prefix and the index, valid QEMU ids', () => {
    expect(MOUNT_SERIAL_PREFIX).toBe('glmnt');
    expect([0, 1, 12].map(mountSerial)).toEqual(['glmnt0', 'glmnt1', 'glmnt12']);
    expect(() => mountSerial(-1)).toThrow(/non-negative integer/);
    expect(() => mountSerial(1.5)).toThrow(/non-negative integer/);
  });

  test('the guest finds the disk by its serial under /dev/disk/by-id (systemd scsi_id naming)', () => {
    expect(mountDevicePath('glmnt0')).toBe('/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_glmnt0');
    expect(() => mountDevicePath('a b')).toThrow(/Invalid disk serial/);
    expect(() => mountDevicePath('x'.repeat(21))).toThrow(/Invalid disk serial/);
  });
});

describe('imageGeometry', () => {
  const tree = (over: Partial<TreeStats>): TreeStats => ({ entries: 0, files: 0, directories: 0, symlinks: 0, dataBytes: 0, blocks: 1, ...over });

  test('whole MiB, inodes for every entry plus the reserved ones, room beyond the data', () => {
    const empty = imageGeometry(tree({}));
    expect(empty.sizeBytes % 1048576).toBe(0);
    expect(empty.inodes).toBe(28);
    const big = imageGeometry(tree({ entries: 10, files: 10, dataBytes: 100 * 1048576, blocks: 25_601 }));
    expect(big.sizeBytes).toBeGreaterThan(100 * 1048576 * 1.1);
    expect(big.sizeBytes).toBeLessThan(100 * 1048576 * 1.25);
    expect(imageGeometry(tree({ entries: 5050, blocks: 5051 })).inodes).toBe(5078);
  });
});
