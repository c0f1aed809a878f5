// Verified downloads into a cache keyed by digest. A pull streams the body to a temporary file of
// its own while hashing it, checks the digest (pinned, or read from the distribution's checksum
// file), fsyncs, and renames the file into place: a reader never sees a partial file, and an
// interrupted or corrupt download leaves nothing in the cache. Concurrent pulls of one file, in
// one process or in many, make one download: the others wait on a host-wide lock and find it done.
// Parsing digests and checksum files is checksum.ts's; showing progress is progress.ts's.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { readEnv } from '../env.ts';
import { AbortedError, DownloadError, GuestlabError } from '../errors.ts';
import { acquireLock } from '../util/lock.ts';
import { findChecksum, formatDigest, parseDigest, type Digest } from './checksum.ts';
import type { DownloadProgress } from './progress.ts';

export { findChecksum, formatDigest, parseDigest, type Digest, type DigestAlgorithm } from './checksum.ts';
export { formatProgress, type DownloadProgress } from './progress.ts';

export interface DownloadSource {
  /** What the user asked for (an image name), for messages. */
  name: string;
  url: string;
  /** A pinned digest, `sha256:HEX` or `sha512:HEX`. */
  digest?: string | undefined;
  /** Or: the URL of the distribution's checksum file, which lists the file by its base name. */
  checksums?: string | undefined;
}

export interface PullOptions {
  /** Downloads go to DIR/downloads/ALGORITHM-HEX. */
  cacheDir: string;
  signal?: AbortSignal | undefined;
  /** Fail instead of downloading (default: GUESTLAB_OFFLINE=1). */
  offline?: boolean | undefined;
  /** Called as bytes arrive, at most every 200 ms, and once at the end. */
  onProgress?: ((progress: DownloadProgress) => void) | undefined;
  /** A larger download is refused (default: GUESTLAB_MAX_DOWNLOAD_MIB, or 32 GiB). */
  maxBytes?: number | undefined;
}

export interface PulledFile {
  path: string;
  digest: Digest;
  bytes: number;
  /** False when the file was in the cache already (or another pull brought it meanwhile). */
  downloaded: boolean;
}

/** What a download may be at most unless GUESTLAB_MAX_DOWNLOAD_MIB says otherwise. */
export const DEFAULT_MAX_DOWNLOAD_MIB = 32 * 1024;
/** A checksum file is a few lines per published file. */
const MAX_CHECKSUM_FILE_BYTES = 8 * 1024 * 1024;
const MAX_REDIRECTS = 5;

const maxBytesOf = (options: PullOptions) => options.maxBytes ?? (readEnv('GUESTLAB_MAX_DOWNLOAD_MIB') ?? DEFAULT_MAX_DOWNLOAD_MIB) * 1024 * 1024;
const isOffline = (options: PullOptions) => options.offline ?? readEnv('GUESTLAB_OFFLINE') === true;
/** A file: URL (a user's local disk image) is read, never downloaded: offline mode allows it. */
const isLocal = (url: string) => url.startsWith('file:');
const inFlight = new Map<string, Promise<PulledFile>>();

/** Fetches `source` into the cache once, verified, and returns its path. */
export async function pullFile(source: DownloadSource, options: PullOptions): Promise<PulledFile> {
  const digest = await expectedDigest(source, options);
  const file = path.join(options.cacheDir, 'downloads', `${digest.algorithm}-${digest.hex}`);
  let pull = inFlight.get(file);
  if (!pull) {
    pull = pullLocked(source, digest, file, options).finally(() => inFlight.delete(file));
    inFlight.set(file, pull);
  }
  return pull;
}

/** The digest a download must have: pinned, or read from the checksum file (remembered for offline use). */
async function expectedDigest(source: DownloadSource, options: PullOptions): Promise<Digest> {
  if (source.digest) return parseDigest(source.digest, `digest of ${source.name}`);
  if (!source.checksums) {
    throw new GuestlabError(`Image ${source.name} has neither a pinned digest nor a checksum file: add \`digest: sha256:...\` or \`checksums: URL\` to its catalog entry.`);
  }
  const record = path.join(options.cacheDir, 'downloads', 'checksums', `${createHash('sha256').update(`${source.checksums}\n${source.url}`).digest('hex')}.json`);
  const remembered = await fs.readFile(record, 'utf8').then((text) => JSON.parse(text) as Digest).catch(() => undefined);
  if (remembered && isOffline(options)) return remembered;
  if (isOffline(options) && !isLocal(source.checksums)) throw offlineError(source, `its checksum file ${source.checksums}`);
  const text = await fetchText(source.checksums, options.signal, MAX_CHECKSUM_FILE_BYTES);
  const fileName = decodeURIComponent(new URL(source.url).pathname.split('/').at(-1) ?? '');
  const found = findChecksum(text, fileName);
  if (!found) throw new DownloadError(source.checksums, `The checksum file ${source.checksums} does not list ${fileName} (the file of image ${source.name}); check the entry's url and checksums.`);
  await fs.mkdir(path.dirname(record), { recursive: true, mode: 0o700 });
  await fs.writeFile(record, JSON.stringify(found) + '\n', { mode: 0o600 });
  return found;
}

async function pullLocked(source: DownloadSource, digest: Digest, file: string, options: PullOptions): Promise<PulledFile> {
  const cached = await fs.stat(file).catch(() => undefined);
  if (cached) return { path: file, digest, bytes: cached.size, downloaded: false };
  if (isOffline(options) && !isLocal(source.url)) throw offlineError(source, source.url);
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const lock = await acquireLock(`download:${file}`, { signal: options.signal });
  try {
    // Another process may have finished it while this one waited for the lock.
    const done = await fs.stat(file).catch(() => undefined);
    if (done) return { path: file, digest, bytes: done.size, downloaded: false };
    const bytes = await download(source, digest, file, options);
    return { path: file, digest, bytes, downloaded: true };
  } finally {
    await lock.release();
  }
}

async function download(source: DownloadSource, digest: Digest, file: string, options: PullOptions): Promise<number> {
  const { url } = source;
  const temp = `${file}.${process.pid}-${randomBytes(4).toString('hex')}.part`;
  let bytes = 0;
  let total: number | undefined;
  try {
    const maxBytes = maxBytesOf(options);
    const body = await openBody(source, options.signal, maxBytes);
    total = body.total;
    const hash = createHash(digest.algorithm);
    const started = performance.now();
    let reported = 0;
    const report = (force: boolean) => {
      const now = performance.now();
      if (!options.onProgress || (!force && now - reported < 200)) return;
      reported = now;
      options.onProgress({ bytes, total, bytesPerSecond: bytes / Math.max(0.001, (now - started) / 1000) });
    };
    const meter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        bytes += chunk.length;
        if (bytes > maxBytes) return callback(tooLarge(source, `more than ${maxBytes} bytes arrived`, maxBytes));
        hash.update(chunk);
        report(false);
        callback(null, chunk);
      },
    });
    await pipeline(body.stream, meter, createWriteStream(temp, { mode: 0o600, flags: 'wx' }), { signal: options.signal }).catch(
      (error: unknown) => {
        throw connectionError(url, error, options.signal, `after ${bytes}${total === undefined ? '' : ` of ${total}`} bytes`);
      },
    );
    report(true);
    if (total !== undefined && bytes !== total) {
      throw new DownloadError(url, `Downloading image ${source.name} from ${url} stopped after ${bytes} of ${total} bytes (truncated body); nothing was cached. Try again.`);
    }
    const actual = hash.digest('hex');
    if (actual !== digest.hex) {
      throw new DownloadError(
        url,
        `The download of image ${source.name} from ${url} does not match its digest: expected ${formatDigest(digest)}, got ${digest.algorithm}:${actual} (${bytes} bytes). ` +
          'Nothing was cached. The file changed upstream or the digest in the catalog entry is wrong; check the entry.',
      );
    }
    const handle = await fs.open(temp, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.chmod(temp, 0o444);
    await fs.rename(temp, file);
    return bytes;
  } catch (error) {
    await fs.rm(temp, { force: true });
    throw error;
  }
}

/** The body to hash and store: an HTTP response, or a local file for a file: URL. */
async function openBody(source: DownloadSource, signal: AbortSignal | undefined, maxBytes: number): Promise<{ stream: Readable; total: number | undefined }> {
  const { url } = source;
  if (isLocal(url)) {
    const local = fileURLToPath(url);
    const stat = await fs.stat(local).catch((error: NodeJS.ErrnoException) => {
      throw new DownloadError(url, `Image ${source.name}: cannot read its file ${local} (${error.code ?? error.message}); fix \`file\` in its entry (${source.name}.yaml).`, { cause: error });
    });
    return { stream: createReadStream(local), total: stat.size };
  }
  const response = await fetchFollowing(url, signal);
  if (!response.ok || !response.body) {
    throw new DownloadError(url, `Downloading image ${source.name} failed: ${response.url || url} answered HTTP ${response.status} ${response.statusText}.`);
  }
  const length = Number(response.headers.get('content-length'));
  const total = Number.isFinite(length) && length > 0 ? length : undefined;
  if (total !== undefined && total > maxBytes) {
    await response.body.cancel();
    throw tooLarge(source, `its server announces ${total} bytes`, maxBytes);
  }
  return { stream: Readable.fromWeb(response.body), total };
}

function tooLarge(source: DownloadSource, what: string, maxBytes: number): DownloadError {
  return new DownloadError(
    source.url,
    `The download of image ${source.name} from ${source.url} is refused: ${what}, over the limit of ${maxBytes} bytes. Nothing was cached. ` +
      'If the image really is that large, raise GUESTLAB_MAX_DOWNLOAD_MIB.',
  );
}

/**
 * fetch(), following at most MAX_REDIRECTS redirects itself: each one must stay on http(s), must
 * not go from https to plain http, and must not lead from another host to this machine's own
 * addresses (a server on the network must not make guestlab read a local service).
 */
export async function fetchFollowing(url: string, signal: AbortSignal | undefined): Promise<Response> {
  let current = new URL(url);
  for (let hop = 0; ; hop++) {
    const response = await fetch(current, { signal: signal ?? null, redirect: 'manual' }).catch((error: unknown) => {
      throw connectionError(current.href, error, signal);
    });
    const location = response.headers.get('location');
    if (response.status < 300 || response.status > 399 || location === null) return response;
    await response.body?.cancel();
    if (hop === MAX_REDIRECTS) throw new DownloadError(url, `Downloading ${url} failed: more than ${MAX_REDIRECTS} redirects (the last to ${location}). Use the file's final URL.`);
    const next = new URL(location, current);
    const refused = redirectRefusal(current, next);
    if (refused) throw new DownloadError(url, `Downloading ${url} failed: its redirect from ${current.href} to ${next.href} is refused (${refused}). Use a URL that needs no such redirect.`);
    current = next;
  }
}

/** Why a redirect from `from` to `to` is not followed, or undefined. */
export function redirectRefusal(from: URL, to: URL): string | undefined {
  if (to.protocol !== 'https:' && to.protocol !== 'http:') return `${to.protocol} is not http(s)`;
  if (from.protocol === 'https:' && to.protocol !== 'https:') return 'it leaves https for plain http';
  if (to.username || to.password) return 'it carries credentials';
  if (isLocalHost(to.hostname) && !isLocalHost(from.hostname)) return 'it leads from another host to an address of this machine';
  return undefined;
}

/**
 * A host name that means this machine or its link: loopback (127.0.0.0/8, ::1, localhost), the
 * unspecified address, and link-local addresses (cloud metadata services live there).
 */
export function isLocalHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (/^127\.\d+\.\d+\.\d+$/.test(host) || /^169\.254\.\d+\.\d+$/.test(host) || host === '0.0.0.0') return true;
  // IPv4-mapped IPv6 as the URL parser writes it: ::ffff:7f00:1 is 127.0.0.1, ::ffff:a9fe:... 169.254.x.x.
  return host === '::1' || host === '::' || /^fe[89ab][0-9a-f]:/.test(host) || /^::ffff:(7f[0-9a-f]{2}|a9fe):/.test(host) || host === '::ffff:0:0';
}

function connectionError(url: string, error: unknown, signal: AbortSignal | undefined, when = ''): Error {
  if (error instanceof GuestlabError) return error;
  if (signal?.aborted) return new AbortedError(`Downloading ${url}`, { cause: signal.reason });
  const cause = error as Error & { cause?: Error & { code?: string } };
  const detail = [cause.message, cause.cause?.code ?? cause.cause?.message].filter(Boolean).join(': ');
  return new DownloadError(url, `Downloading ${url} failed${when ? ` ${when}` : ''}: ${detail}. Nothing was cached; check the URL and the network, then try again.`, { cause: error });
}

/** A checksum file: read whole, at most maxBytes, and only over https (or from this machine). */
async function fetchText(url: string, signal: AbortSignal | undefined, maxBytes: number): Promise<string> {
  if (isLocal(url)) return fs.readFile(fileURLToPath(url), 'utf8');
  const response = await fetchFollowing(url, signal);
  if (!response.ok) throw new DownloadError(url, `Fetching ${url} failed: HTTP ${response.status} ${response.statusText}.`);
  const final = new URL(response.url || url);
  if (final.protocol !== 'https:' && !isLocalHost(final.hostname)) {
    await response.body?.cancel();
    throw new DownloadError(url, `The checksum file ${url} came over plain http (${final.href}): anyone on the way could change it, and the download with it. Use its https URL, or pin \`digest:\`.`);
  }
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of Readable.fromWeb(response.body ?? new ReadableStream())) {
    bytes += (chunk as Buffer).length;
    if (bytes > maxBytes) throw new DownloadError(url, `The checksum file ${url} is larger than ${maxBytes} bytes: it is not a checksum file. Check the entry's checksums URL.`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function offlineError(source: DownloadSource, what: string): DownloadError {
  return new DownloadError(
    source.url,
    `Image ${source.name} is not in the cache and GUESTLAB_OFFLINE=1 forbids downloading ${what}. ` +
      `Pull it where the network is reachable (guestlab image pull ${source.name}) and bring the cache over (guestlab image export/import), or unset GUESTLAB_OFFLINE.`,
  );
}
