// Download entries end to end, without a guest: small disks made with qemu-img, served by a local
// HTTP server that counts requests, pulled through ensureImage() into a throwaway cache. A good
// disk becomes an image that boots through firmware; a disk whose format lies, or a qcow2 that
// points at a host file, is refused and leaves no image; offline mode and local files work.
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, afterEach, beforeAll, beforeEach, expect, test } from 'vitest';
import { guestlabPaths } from '../../src/config.ts';
import { exportImages, importImages, removeImages, verifyCachedImages } from '../../src/images/archive.ts';
import { ensureImage, readManifest } from '../../src/images/builder.ts';
import { run } from '../../src/util/run.ts';

let root: string;
let served: string;
let server: http.Server;
let base = '';
const requests: string[] = [];
const saved = { ...process.env };

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-dlimg-'));
  served = path.join(root, 'served');
  await fs.mkdir(served);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(served, 'good.qcow2'), '64M']);
  await run('qemu-img', ['create', '-q', '-f', 'raw', path.join(served, 'plain.raw'), '8M']);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/hostname', path.join(served, 'backed.qcow2')]);
  const sums = [];
  for (const name of await fs.readdir(served)) {
    sums.push(`${createHash('sha256').update(await fs.readFile(path.join(served, name))).digest('hex')}  ${name}`);
  }
  await fs.writeFile(path.join(served, 'SHA256SUMS'), sums.join('\n') + '\n');
  server = http.createServer((req, res) => {
    requests.push(req.url!);
    fs.readFile(path.join(served, path.basename(req.url!))).then(
      (body) => res.writeHead(200, { 'content-length': String(body.length) }).end(body),
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await fs.rm(root, { recursive: true, force: true });
});

beforeEach(async () => {
  const run = await fs.mkdtemp(path.join(root, 'run-'));
  await fs.mkdir(path.join(run, 'images'));
  process.env.GUESTLAB_IMAGES_PATH = path.join(run, 'images');
  process.env.GUESTLAB_CACHE_DIR = path.join(run, 'cache');
  delete process.env.GUESTLAB_OFFLINE;
  requests.length = 0;
});
afterEach(() => {
  process.env = { ...saved };
});

const entry = (name: string, text: string) => fs.writeFile(path.join(process.env.GUESTLAB_IMAGES_PATH!, `${name}.yaml`), text);
const cachedDirs = async () => (await fs.readdir(guestlabPaths().imagesDir).catch(() => [] as string[])).filter((e) => !e.endsWith('.lock'));

test('a qcow2 from a checksum file becomes a firmware-booted image, linked to its download and cached', async () => {
  await entry('remote', `url: ${base}/good.qcow2\nchecksums: ${base}/SHA256SUMS\nfirmware: uefi\nrelease: Test 1\n`);
  const image = await ensureImage('remote');
  expect(image).toMatchObject({ name: 'remote', boot: 'firmware', firmware: 'uefi', source: 'download', kernel: undefined, initrd: undefined, cmdline: undefined, built: true });
  expect(requests).toEqual(['/SHA256SUMS', '/good.qcow2']);
  const manifest = (await readManifest(image.dir))!;
  expect(manifest).toMatchObject({ boot: 'firmware', firmware: 'uefi', suite: 'Test 1', download: { url: `${base}/good.qcow2` } });
  expect(manifest.download!.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
  // The image's disk is the verified download itself (one inode), read-only.
  const [disk, download] = await Promise.all([fs.stat(image.disk), fs.stat(manifest.download!.file)]);
  expect(disk.ino).toBe(download.ino);
  expect(disk.mode & 0o777).toBe(0o444);

  const again = await ensureImage('remote');
  expect(again).toMatchObject({ dir: image.dir, built: false });
  expect(requests).toHaveLength(2);
  expect((await verifyCachedImages(['remote']))[0]!.problems).toEqual([]);
  // Offline now: the cache holds it.
  process.env.GUESTLAB_OFFLINE = '1';
  expect((await ensureImage('remote')).dir).toBe(image.dir);

  expect(await removeImages(['remote'])).toEqual([image.dir]);
  await expect(fs.stat(manifest.download!.file)).rejects.toThrow(/ENOENT/);
});

test('a raw disk is converted to qcow2 once; export and import carry a downloaded image', async () => {
  const sum = createHash('sha256').update(await fs.readFile(path.join(served, 'plain.raw'))).digest('hex');
  await entry('rawdisk', `url: ${base}/plain.raw\ndigest: sha256:${sum}\nformat: raw\n`);
  const image = await ensureImage('rawdisk');
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', image.disk])) as { format: string; 'virtual-size': number };
  expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': 8 * 1024 * 1024 });

  const archive = path.join(process.env.GUESTLAB_CACHE_DIR!, '..', 'images.tar');
  await exportImages(['rawdisk'], archive);
  process.env.GUESTLAB_CACHE_DIR = path.join(process.env.GUESTLAB_CACHE_DIR!, '..', 'cache-b');
  const { images } = await importImages(archive);
  expect(images).toEqual([expect.objectContaining({ name: 'rawdisk', outcome: 'imported', current: true })]);
  process.env.GUESTLAB_OFFLINE = '1';
  expect(await ensureImage('rawdisk')).toMatchObject({ boot: 'firmware', built: false });
});

test('a disk whose format is not the one its entry says is refused, naming the fix', async () => {
  const sum = createHash('sha256').update(await fs.readFile(path.join(served, 'plain.raw'))).digest('hex');
  await entry('liar', `url: ${base}/plain.raw\ndigest: sha256:${sum}\n`);
  await expect(ensureImage('liar')).rejects.toThrow(/image liar \(.*liar\.yaml\) is a raw disk, but its entry says format: qcow2\. Set format: raw/);
  expect(await cachedDirs()).toEqual([]);
});

test('a qcow2 that points at a host file is refused and leaves no image', async () => {
  await entry('backed', `url: ${base}/backed.qcow2\nchecksums: ${base}/SHA256SUMS\n`);
  await expect(ensureImage('backed')).rejects.toThrow(/is a qcow2 that refers to another file \(\/etc\/hostname\); guestlab refuses it/);
  expect(await cachedDirs()).toEqual([]);
});

test('offline, an image not in the cache fails at once without a request', async () => {
  await entry('remote', `url: ${base}/good.qcow2\nchecksums: ${base}/SHA256SUMS\n`);
  process.env.GUESTLAB_OFFLINE = '1';
  await expect(ensureImage('remote')).rejects.toThrow(/Image remote is not in the cache and GUESTLAB_OFFLINE=1 forbids downloading its checksum file/);
  expect(requests).toEqual([]);
});

test('a local file with a digest is an image too, offline included', async () => {
  const file = path.join(served, 'good.qcow2');
  const sum = createHash('sha256').update(await fs.readFile(file)).digest('hex');
  await entry('mine', `file: ${file}\ndigest: sha256:${sum}\n`);
  process.env.GUESTLAB_OFFLINE = '1';
  expect(await ensureImage('mine')).toMatchObject({ boot: 'firmware', firmware: 'bios', built: true });
  await entry('mine-wrong', `file: ${file}\ndigest: sha256:${'0'.repeat(64)}\n`);
  await expect(ensureImage('mine-wrong')).rejects.toThrow(/does not match its digest: expected sha256:0{64}/);
  expect(requests).toEqual([]);
});
