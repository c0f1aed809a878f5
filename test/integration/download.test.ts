// The download path against a local HTTP server that serves a built image (debian-12's disk): a good
// pull lands in the cache under the right digest; a wrong digest, a truncated body and a dropped
// connection each fail clearly and leave no file; four concurrent pulls make one HTTP download.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { dir } from 'tmp-promise';
import { afterAll, afterEach, beforeAll, beforeEach, expect, test } from 'vitest';
import { ensureImage } from '../../src/images/builder.ts';
import { pullFile } from '../../src/images/download.ts';

let disk = '';
let size = 0;
let sha256 = '';
let server: http.Server;
let base = '';
const requests: string[] = [];

beforeAll(async () => {
  disk = (await ensureImage('debian-12')).disk;
  size = (await fs.stat(disk)).size;
  const hash = createHash('sha256');
  await pipeline(createReadStream(disk), hash);
  sha256 = hash.digest('hex');

  server = http.createServer((req, res) => {
    requests.push(req.url!);
    const name = path.basename(req.url!);
    if (name === 'SHA256SUMS') {
      res.writeHead(200);
      return res.end(`${sha256}  disk.qcow2\n`);
    }
    res.writeHead(200, { 'content-length': String(size) });
    const stream = createReadStream(disk, req.url!.startsWith('/truncated/') ? { end: (size >> 1) - 1 } : {});
    if (req.url!.startsWith('/dropped/')) {
      let sent = 0;
      stream.on('data', (chunk) => {
        sent += chunk.length;
        if (sent > 64 * 1024 * 1024) {
          stream.destroy();
          res.socket?.destroy();
        }
      });
    }
    stream.pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  console.log(`serving ${disk} (${(size / 1048576).toFixed(0)} MiB, sha256 ${sha256}) at ${base}`);
});
afterAll(() => new Promise((resolve) => server?.close(resolve)));

let cacheDir = '';
let cleanup: () => Promise<void>;
beforeEach(async () => {
  ({ path: cacheDir, cleanup } = await dir({ unsafeCleanup: true, prefix: 'gl-pull-' }));
  requests.length = 0;
});
afterEach(() => cleanup());

const cacheFiles = async () => (await fs.readdir(path.join(cacheDir, 'downloads')).catch(() => [])).filter((f) => f !== 'checksums');

test('a good pull of the built image lands in the cache with the right digest', async () => {
  const started = performance.now();
  const pulled = await pullFile({ name: 'debian-12-served', url: `${base}/images/disk.qcow2`, checksums: `${base}/images/SHA256SUMS` }, { cacheDir });
  const ms = performance.now() - started;
  console.log(`pulled ${(pulled.bytes / 1048576).toFixed(0)} MiB in ${ms.toFixed(0)} ms (${(pulled.bytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s, hashed and fsynced)`);
  expect(pulled).toMatchObject({ downloaded: true, bytes: size, digest: { algorithm: 'sha256', hex: sha256 } });
  const hash = createHash('sha256');
  await pipeline(createReadStream(pulled.path), hash);
  expect(hash.digest('hex')).toBe(sha256);
  expect(await cacheFiles()).toEqual([`sha256-${sha256}`]);
});

test('a wrong digest, a truncated body and a dropped connection each fail clearly and leave no file', async () => {
  const wrong = `sha256:${'0'.repeat(64)}`;
  await expect(pullFile({ name: 'debian-12-served', url: `${base}/images/disk.qcow2`, digest: wrong }, { cacheDir })).rejects.toThrow(
    `does not match its digest: expected ${wrong}, got sha256:${sha256} (${size} bytes). Nothing was cached.`,
  );
  await expect(pullFile({ name: 'debian-12-served', url: `${base}/truncated/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(
    /truncated|failed after \d+ of \d+ bytes/,
  );
  await expect(pullFile({ name: 'debian-12-served', url: `${base}/dropped/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(
    /failed after \d+ of \d+ bytes: .*Nothing was cached/,
  );
  expect(await cacheFiles()).toEqual([]);
});

test('four concurrent pulls make one HTTP download', async () => {
  const source = { name: 'debian-12-served', url: `${base}/images/disk.qcow2`, digest: `sha256:${sha256}` };
  const results = await Promise.all(Array.from({ length: 4 }, () => pullFile(source, { cacheDir })));
  expect(requests).toEqual(['/images/disk.qcow2']);
  expect(new Set(results.map((r) => r.path)).size).toBe(1);
});
