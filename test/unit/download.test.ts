// Verified downloads against a real HTTP server on 127.0.0.1: good pulls land in the cache under
// their digest; a wrong digest, a truncated body and a dropped connection fail clearly and leave
// no file behind; concurrent pulls (in one process, and in several) make one HTTP request.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { dir } from 'tmp-promise';
import { afterAll, afterEach, beforeAll, beforeEach, expect, test } from 'vitest';
import { findChecksum, formatProgress, isLocalHost, parseDigest, pullFile, redirectRefusal, type DownloadProgress } from '../../src/images/download.ts';

const body = randomBytes(3 * 1024 * 1024 + 17);
const sha256 = createHash('sha256').update(body).digest('hex');
const sha512 = createHash('sha512').update(body).digest('hex');
const requests: string[] = [];
let server: http.Server;
let base = '';

beforeAll(async () => {
  server = http.createServer((req, res) => {
    requests.push(req.url!);
    const send = (data: Buffer, chunkDelayMs = 0) => {
      res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'application/octet-stream' });
      if (!chunkDelayMs) return res.end(data);
      // Slowly, so that concurrent pulls overlap.
      let at = 0;
      const next = () => {
        if (at >= data.length) return res.end();
        res.write(data.subarray(at, (at += 256 * 1024)));
        setTimeout(next, chunkDelayMs);
      };
      next();
    };
    switch (req.url) {
      case '/images/disk.qcow2':
        return send(body);
      case '/slow/disk.qcow2':
        return send(body, 20);
      case '/truncated/disk.qcow2':
        // Promises the whole length, sends half, and ends the response.
        res.writeHead(200, { 'content-length': String(body.length) });
        res.write(body.subarray(0, body.length >> 1));
        return res.socket?.end();
      case '/dropped/disk.qcow2':
        res.writeHead(200, { 'content-length': String(body.length) });
        res.write(body.subarray(0, 1024 * 1024));
        return setTimeout(() => res.socket?.destroy(), 50);
      case '/moved/disk.qcow2':
        res.writeHead(302, { location: '/images/disk.qcow2' });
        return res.end();
      case '/loop/disk.qcow2':
        res.writeHead(301, { location: '/loop/disk.qcow2' });
        return res.end();
      case '/ftp/disk.qcow2':
        res.writeHead(302, { location: 'ftp://127.0.0.1/disk.qcow2' });
        return res.end();
      case '/unannounced/disk.qcow2':
        // Chunked: no content-length to refuse it by.
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        return res.end(body);
      case '/huge/SHA256SUMS':
        res.writeHead(200);
        return res.end(Buffer.alloc(9 * 1024 * 1024, 0x61));
      case '/images/SHA256SUMS':
        res.writeHead(200);
        return res.end(`${'0'.repeat(64)}  other.qcow2\n${sha256}  disk.qcow2\n`);
      case '/images/CHECKSUM':
        res.writeHead(200);
        return res.end(`# Fedora style\nSHA512 (disk.qcow2) = ${sha512}\n`);
      default:
        res.writeHead(404);
        return res.end('not found');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise((resolve) => server.close(resolve)));

let cacheDir = '';
let cleanup: () => Promise<void>;
beforeEach(async () => {
  ({ path: cacheDir, cleanup } = await dir({ unsafeCleanup: true, prefix: 'gl-dl-' }));
  requests.length = 0;
});
afterEach(() => cleanup());

const downloads = async () => (await fs.readdir(path.join(cacheDir, 'downloads')).catch(() => [])).filter((f) => f !== 'checksums');

test('a good pull lands in the cache under its digest, read-only, and the next pull is a cache hit', async () => {
  const progress: DownloadProgress[] = [];
  const pulled = await pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir, onProgress: (p) => progress.push(p) });
  expect(pulled).toMatchObject({ downloaded: true, bytes: body.length, digest: { algorithm: 'sha256', hex: sha256 } });
  expect(pulled.path).toBe(path.join(cacheDir, 'downloads', `sha256-${sha256}`));
  expect(createHash('sha256').update(await fs.readFile(pulled.path)).digest('hex')).toBe(sha256);
  expect((await fs.stat(pulled.path)).mode & 0o777).toBe(0o444);
  expect(await downloads()).toEqual([`sha256-${sha256}`]);
  expect(progress.at(-1)).toMatchObject({ bytes: body.length, total: body.length });

  const again = await pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir });
  expect(again).toMatchObject({ downloaded: false, path: pulled.path });
  expect(requests).toEqual(['/images/disk.qcow2']);
});

test("the digest can come from the distribution's checksum file, GNU or BSD style, and is remembered for offline use", async () => {
  const gnu = await pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, checksums: `${base}/images/SHA256SUMS` }, { cacheDir });
  expect(gnu.digest).toEqual({ algorithm: 'sha256', hex: sha256 });
  const bsd = await pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, checksums: `${base}/images/CHECKSUM` }, { cacheDir });
  expect(bsd).toMatchObject({ downloaded: true, digest: { algorithm: 'sha512', hex: sha512 } });
  requests.length = 0;
  const offline = await pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, checksums: `${base}/images/SHA256SUMS` }, { cacheDir, offline: true });
  expect(offline).toMatchObject({ downloaded: false, path: gnu.path });
  expect(requests).toEqual([]);
});

test('a wrong digest, a truncated body and a dropped connection fail clearly and leave nothing behind', async () => {
  const wrong = `sha256:${'ab'.repeat(32)}`;
  await expect(pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, digest: wrong }, { cacheDir })).rejects.toThrow(
    new RegExp(`does not match its digest: expected ${wrong}, got sha256:${sha256} \\(${body.length} bytes\\)\\. Nothing was cached`),
  );
  await expect(pullFile({ name: 'test', url: `${base}/truncated/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(
    /Downloading .*\/truncated\/disk\.qcow2 (failed|stopped) after \d+ (of|bytes)[^]*Nothing was cached|truncated body/,
  );
  await expect(pullFile({ name: 'test', url: `${base}/dropped/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(
    /Downloading .*\/dropped\/disk\.qcow2 failed after \d+ of \d+ bytes: .+\. Nothing was cached/,
  );
  await expect(pullFile({ name: 'test', url: `${base}/missing/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(/answered HTTP 404/);
  // A port nobody listens on.
  const closed = http.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  await expect(pullFile({ name: 'test', url: `http://127.0.0.1:${port}/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(/failed: fetch failed: ECONNREFUSED/);
  // No partial file, no .part file, nothing under the digest.
  expect(await downloads()).toEqual([]);
});

test('redirects are followed by guestlab, at most five, only on http(s); a download over its size limit is refused, announced or not', async () => {
  const digest = `sha256:${sha256}`;
  const moved = await pullFile({ name: 'test', url: `${base}/moved/disk.qcow2`, digest }, { cacheDir });
  expect(moved).toMatchObject({ downloaded: true, bytes: body.length });
  expect(requests).toEqual(['/moved/disk.qcow2', '/images/disk.qcow2']);
  await fs.rm(moved.path, { force: true });
  await expect(pullFile({ name: 'test', url: `${base}/loop/disk.qcow2`, digest }, { cacheDir })).rejects.toThrow(/more than 5 redirects \(the last to \/loop\/disk\.qcow2\)/);
  await expect(pullFile({ name: 'test', url: `${base}/ftp/disk.qcow2`, digest }, { cacheDir })).rejects.toThrow(/redirect from .* to ftp:\/\/127\.0\.0\.1\/disk\.qcow2 is refused \(ftp: is not http\(s\)\)/);

  // Announced too large: refused before a byte is stored. Unannounced: stopped once the limit is passed.
  await expect(pullFile({ name: 'big', url: `${base}/images/disk.qcow2`, digest }, { cacheDir, maxBytes: 1024 * 1024 })).rejects.toThrow(
    new RegExp(`image big .* is refused: its server announces ${body.length} bytes, over the limit of 1048576 bytes\\. Nothing was cached\\. .*GUESTLAB_MAX_DOWNLOAD_MIB`),
  );
  process.env.GUESTLAB_MAX_DOWNLOAD_MIB = '1';
  try {
    await expect(pullFile({ name: 'big', url: `${base}/unannounced/disk.qcow2`, digest }, { cacheDir })).rejects.toThrow(/is refused: more than 1048576 bytes arrived/);
  } finally {
    delete process.env.GUESTLAB_MAX_DOWNLOAD_MIB;
  }
  await expect(pullFile({ name: 'test', url: `${base}/images/disk.qcow2`, checksums: `${base}/huge/SHA256SUMS` }, { cacheDir })).rejects.toThrow(/is larger than 8388608 bytes: it is not a checksum file/);
  expect(await downloads()).toEqual([]);
});

test('which redirects are refused, and which hosts are this machine', () => {
  const at = (url: string) => new URL(url);
  expect(redirectRefusal(at('https://mirror.example/a'), at('https://cdn.example/a'))).toBeUndefined();
  expect(redirectRefusal(at('http://mirror.example/a'), at('https://mirror.example/a'))).toBeUndefined();
  expect(redirectRefusal(at('https://mirror.example/a'), at('http://mirror.example/a'))).toBe('it leaves https for plain http');
  expect(redirectRefusal(at('https://mirror.example/a'), at('https://169.254.169.254/latest/meta-data'))).toBe('it leads from another host to an address of this machine');
  expect(redirectRefusal(at('http://mirror.example/a'), at('http://localhost:8080/admin'))).toBe('it leads from another host to an address of this machine');
  expect(redirectRefusal(at('http://127.0.0.1:1/a'), at('http://127.0.0.1:2/b'))).toBeUndefined();
  expect(redirectRefusal(at('https://mirror.example/a'), at('https://user:pw@mirror.example/a'))).toBe('it carries credentials');
  for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', 'a.localhost', '[::1]', '169.254.169.254', '[fe80::1]', '0.0.0.0', '[::ffff:127.0.0.1]', '[::ffff:169.254.169.254]', '2130706433']) {
    expect(isLocalHost(new URL(`http://${host}/`).hostname), host).toBe(true);
  }
  for (const host of ['10.0.2.2', '192.168.1.1', 'example.org', '[2001:db8::1]', '128.0.0.1']) expect(isLocalHost(new URL(`http://${host}/`).hostname), host).toBe(false);
});

test('GUESTLAB_OFFLINE=1 fails at once instead of downloading', async () => {
  process.env.GUESTLAB_OFFLINE = '1';
  try {
    await expect(pullFile({ name: 'debian-13-cloud', url: `${base}/images/disk.qcow2`, digest: `sha256:${sha256}` }, { cacheDir })).rejects.toThrow(
      /Image debian-13-cloud is not in the cache and GUESTLAB_OFFLINE=1 forbids downloading .*guestlab image pull debian-13-cloud/,
    );
  } finally {
    delete process.env.GUESTLAB_OFFLINE;
  }
  expect(requests).toEqual([]);
});

test('four concurrent pulls in one process make one HTTP request', async () => {
  const source = { name: 'test', url: `${base}/slow/disk.qcow2`, digest: `sha256:${sha256}` };
  const results = await Promise.all(Array.from({ length: 4 }, () => pullFile(source, { cacheDir })));
  expect(new Set(results.map((r) => r.path)).size).toBe(1);
  expect(requests).toEqual(['/slow/disk.qcow2']);
});

test('four concurrent pulls in four processes make one HTTP request', async () => {
  const script = `
    const { pullFile } = await import(${JSON.stringify(path.resolve('src/images/download.ts'))});
    const r = await pullFile({ name: 'test', url: process.argv[1], digest: process.argv[2] }, { cacheDir: process.argv[3] });
    console.log(JSON.stringify({ downloaded: r.downloaded, path: r.path }));`;
  const run = () => promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, `${base}/slow/disk.qcow2`, `sha256:${sha256}`, cacheDir]);
  const outputs = await Promise.all(Array.from({ length: 4 }, run));
  const results = outputs.map((o) => JSON.parse(o.stdout) as { downloaded: boolean; path: string });
  expect(results.filter((r) => r.downloaded)).toHaveLength(1);
  expect(new Set(results.map((r) => r.path)).size).toBe(1);
  expect(requests).toEqual(['/slow/disk.qcow2']);
  expect(await downloads()).toEqual([`sha256-${sha256}`]);
});

test('checksum files and digests are parsed strictly', () => {
  expect(findChecksum(`${sha256} *disk.qcow2\n`, 'disk.qcow2')).toEqual({ algorithm: 'sha256', hex: sha256 });
  expect(findChecksum(`${sha256}  ./disk.qcow2\n`, 'disk.qcow2')).toEqual({ algorithm: 'sha256', hex: sha256 });
  expect(findChecksum(`${sha256}  disk.qcow2.sig\n`, 'disk.qcow2')).toBeUndefined();
  expect(findChecksum(`SHA256 (disk.qcow2) = ${sha256.toUpperCase()}\n`, 'disk.qcow2')).toEqual({ algorithm: 'sha256', hex: sha256 });
  expect(parseDigest(`sha512:${sha512}`, 'x')).toEqual({ algorithm: 'sha512', hex: sha512 });
  expect(() => parseDigest(`sha256:${sha512}`, 'digest of foo')).toThrow(/digest of foo: expected a digest like "sha256:<64 hex digits>"/);
  expect(() => parseDigest('md5:abc', 'x')).toThrow(/expected a digest/);
  expect(formatProgress({ bytes: 512 * 1048576, total: 1024 * 1048576, bytesPerSecond: 50 * 1048576 })).toBe('[############............]  50% 512.0 MiB of 1024.0 MiB 50.0 MiB/s');
  expect(formatProgress({ bytes: 1048576, total: undefined, bytesPerSecond: 1048576 })).toBe('1.0 MiB 1.0 MiB/s');
});
