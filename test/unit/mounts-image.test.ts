// The ext4 image of a host directory holds exactly the directory: bytes, modes, symlinks (as
// symlinks), hard links; no lost+found; the image file 0600 and sparse. Read back with debugfs (no
// root needed) and, as root, through the kernel with a read-only loop mount. What mkfs.ext4 cannot
// copy is refused naming the path, and a refused build leaves no file behind.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { buildFsImage } from '../../src/mounts/fs-image.ts';

interface Entry {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  content?: string;
  target?: string;
}

/** Every path below `root` with its type, permission bits, content (sha-free: the bytes as hex) or link target. */
async function snapshot(root: string): Promise<Map<string, Entry>> {
  const entries = new Map<string, Entry>();
  for (const relative of (await fs.readdir(root, { recursive: true })).sort()) {
    const file = path.join(root, relative);
    const info = await fs.lstat(file);
    const mode = info.mode & 0o7777;
    if (info.isSymbolicLink()) entries.set(relative, { type: 'symlink', mode: 0o777, target: await fs.readlink(file) });
    else if (info.isDirectory()) entries.set(relative, { type: 'dir', mode });
    else entries.set(relative, { type: 'file', mode, content: (await fs.readFile(file)).toString('hex') });
  }
  return entries;
}

async function makeTree(root: string): Promise<void> {
  const at = (p: string) => path.join(root, p);
  await fs.mkdir(at('sub/deeper/empty'), { recursive: true });
  await fs.chmod(at('sub/deeper/empty'), 0o700);
  await fs.writeFile(at('a.txt'), 'hello\n');
  await fs.writeFile(at('bin.dat'), randomBytes(300 * 1024), { mode: 0o600 });
  await fs.writeFile(at('run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  await fs.writeFile(at('empty'), '');
  await fs.writeFile(at('sub/naïve ✓ name.txt'), 'unicode\n');
  await fs.writeFile(at('sub/deeper/nested.txt'), 'nested\n', { mode: 0o640 });
  await fs.symlink('a.txt', at('link-rel'));
  await fs.symlink('/etc/hostname', at('link-abs'));
  await fs.symlink('does/not/exist', at('sub/dangling'));
  await fs.symlink('x'.repeat(100), at('long-link'));
  await fs.link(at('a.txt'), at('sub/hard.txt'));
  await fs.chmod(root, 0o750);
}

describe('buildFsImage', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  let source: string;
  let out: string;
  beforeEach(async () => {
    ({ path: root, cleanup } = await dir({ unsafeCleanup: true }));
    source = path.join(root, 'src');
    out = path.join(root, 'instance');
    await fs.mkdir(source);
    await fs.mkdir(out, { mode: 0o700 });
  });
  afterEach(() => cleanup());

  test('holds exactly the directory: bytes, modes, symlinks; a clean, sparse, 0600 image', async () => {
    await makeTree(source);
    const image = await buildFsImage({ source, dir: out, name: 'glmnt0' });
    expect(image.file).toBe(path.join(out, 'glmnt0.img'));
    expect(image.attempts).toBe(1);
    expect(image.tree).toMatchObject({ files: 7, directories: 3, symlinks: 4 });
    const info = await fs.stat(image.file);
    expect(info.mode & 0o777).toBe(0o600);
    expect(info.size).toBe(image.sizeBytes);
    expect(info.blocks * 512).toBeLessThan(image.sizeBytes / 2);
    // Only the image: no partial file left next to it.
    expect(await fs.readdir(out)).toEqual(['glmnt0.img']);

    const dumped = path.join(root, 'dumped');
    await fs.mkdir(dumped);
    await execa('debugfs', ['-R', `rdump / ${dumped}`, image.file]);
    expect(await snapshot(dumped)).toEqual(await snapshot(source));
    const { stdout: listing } = await execa('debugfs', ['-R', 'ls -p /', image.file]);
    // The root has the directory's mode and root's ownership; lost+found is gone.
    expect(listing).toContain('/2/040750/0/0/./');
    expect(listing).not.toContain('lost+found');
    const { stdout: label } = await execa('e2label', [image.file]);
    expect(label).toBe('glmnt0');
    await execa('e2fsck', ['-fn', image.file]);
  });

  test.skipIf(process.getuid?.() !== 0)('the kernel mounts it read-only and reads the same tree (root only: loop mount)', async () => {
    await makeTree(source);
    const image = await buildFsImage({ source, dir: out, name: 'img', label: 'dist' });
    const mountPoint = path.join(root, 'mnt');
    await fs.mkdir(mountPoint);
    await execa('mount', ['-o', 'loop,ro', image.file, mountPoint]);
    try {
      expect(await snapshot(mountPoint)).toEqual(await snapshot(source));
      const [a, hard] = await Promise.all([fs.stat(path.join(mountPoint, 'a.txt')), fs.stat(path.join(mountPoint, 'sub/hard.txt'))]);
      expect(hard.ino).toBe(a.ino);
      await expect(fs.writeFile(path.join(mountPoint, 'new'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await execa('umount', [mountPoint]);
    }
  });

  test('a 5000-file tree and a 100 MiB file fit the estimated size on the first try', async () => {
    for (let d = 0; d < 50; d++) {
      await fs.mkdir(path.join(source, `d${d}`));
      await Promise.all(Array.from({ length: 100 }, (_, f) => fs.writeFile(path.join(source, `d${d}`, `file-${f}.txt`), `${d}/${f}\n`)));
    }
    await fs.writeFile(path.join(source, 'big.bin'), Buffer.alloc(100 * 1048576, 7));
    const image = await buildFsImage({ source, dir: out, name: 'many' });
    expect(image.attempts).toBe(1);
    expect(image.tree).toMatchObject({ files: 5001, directories: 50 });
    const { stdout } = await execa('debugfs', ['-R', 'cat /d49/file-99.txt', image.file]);
    expect(stdout).toBe('49/99');
  }, 60_000);

  test('a FIFO or a socket is refused naming its path, and nothing is left behind', async () => {
    await fs.mkdir(path.join(source, 'run'));
    await execa('mkfifo', [path.join(source, 'run', 'pipe')]);
    await expect(buildFsImage({ source, dir: out, name: 'x' })).rejects.toThrow(`Cannot mount a directory that holds a FIFO: ${path.join(source, 'run', 'pipe')}. Move it out`);
    await fs.rm(path.join(source, 'run', 'pipe'));
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(path.join(source, 'run', 'sock'), resolve));
    try {
      await expect(buildFsImage({ source, dir: out, name: 'x' })).rejects.toThrow(`holds a socket: ${path.join(source, 'run', 'sock')}`);
    } finally {
      server.close();
    }
    expect(await fs.readdir(out)).toEqual([]);
  });

  test.skipIf(process.getuid?.() === 0)('an unreadable file is refused naming its path (not as root: root reads everything)', async () => {
    await fs.writeFile(path.join(source, 'secret'), 'x', { mode: 0 });
    await expect(buildFsImage({ source, dir: out, name: 'x' })).rejects.toThrow(`Cannot read ${path.join(source, 'secret')} (EACCES)`);
  });

  test('an image inside the directory it copies, a bad name or label, a missing source are refused', async () => {
    await expect(buildFsImage({ source, dir: source, name: 'x' })).rejects.toThrow(/the image would copy itself/);
    await expect(buildFsImage({ source: root, dir: out, name: 'x' })).rejects.toThrow(/the image would copy itself/);
    await expect(buildFsImage({ source, dir: out, name: '../x' })).rejects.toThrow(/Invalid image name "..\/x"/);
    await expect(buildFsImage({ source, dir: out, name: 'x', label: 'a-label-longer-than-16' })).rejects.toThrow(/Invalid filesystem label/);
    await expect(buildFsImage({ source: path.join(root, 'nope'), dir: out, name: 'x' })).rejects.toThrow(/it is not a directory/);
  });

  test('an aborted build leaves nothing behind', async () => {
    await fs.writeFile(path.join(source, 'a'), 'x');
    await expect(buildFsImage({ source, dir: out, name: 'x', signal: AbortSignal.abort() })).rejects.toThrow(/abort/i);
    expect(await fs.readdir(out)).toEqual([]);
  });

  test('a rebuild replaces the image with the directory as it is now (a mount is a snapshot)', async () => {
    await fs.writeFile(path.join(source, 'v.txt'), 'one');
    await buildFsImage({ source, dir: out, name: 'snap' });
    await fs.writeFile(path.join(source, 'v.txt'), 'two');
    const image = await buildFsImage({ source, dir: out, name: 'snap' });
    expect((await execa('debugfs', ['-R', 'cat /v.txt', image.file])).stdout).toBe('two');
    expect(await fs.readdir(out)).toEqual(['snap.img']);
  });
});
