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
}

export interface PulledFile {
  path: string;
  digest: Digest;
  bytes: number;
  /** False when the file was in the cache already (or another pull brought it meanwhile). */
  downloaded: boolean;
}

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
  const text = await fetchText(source.checksums, options.signal);
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
    const body = await openBody(source, options.signal);
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
async function openBody(source: DownloadSource, signal: AbortSignal | undefined): Promise<{ stream: Readable; total: number | undefined }> {
  const { url } = source;
  if (isLocal(url)) {
    const local = fileURLToPath(url);
    const stat = await fs.stat(local).catch((error: NodeJS.ErrnoException) => {
      throw new DownloadError(url, `Image ${source.name}: cannot read its file ${local} (${error.code ?? error.message}); fix \`file\` in its entry (${source.name}.yaml).`, { cause: error });
    });
    return { stream: createReadStream(local), total: stat.size };
  }
  const response = await fetch(url, { signal: signal ?? null }).catch((error: unknown) => {
    throw connectionError(url, error, signal);
  });
  if (!response.ok || !response.body) {
    throw new DownloadError(url, `Downloading image ${source.name} failed: ${url} answered HTTP ${response.status} ${response.statusText}.`);
  }
  const length = Number(response.headers.get('content-length'));
  return { stream: Readable.fromWeb(response.body), total: Number.isFinite(length) && length > 0 ? length : undefined };
}

function connectionError(url: string, error: unknown, signal: AbortSignal | undefined, when = ''): Error {
  if (error instanceof GuestlabError) return error;
  if (signal?.aborted) return new AbortedError(`Downloading ${url}`, { cause: signal.reason });
  const cause = error as Error & { cause?: Error & { code?: string } };
  const detail = [cause.message, cause.cause?.code ?? cause.cause?.message].filter(Boolean).join(': ');
  return new DownloadError(url, `Downloading ${url} failed${when ? ` ${when}` : ''}: ${detail}. Nothing was cached; check the URL and the network, then try again.`, { cause: error });
}

async function fetchText(url: string, signal: AbortSignal | undefined): Promise<string> {
  if (isLocal(url)) return fs.readFile(fileURLToPath(url), 'utf8');
  const response = await fetch(url, { signal: signal ?? null }).catch((error: unknown) => {
    throw connectionError(url, error, signal);
  });
  if (!response.ok) throw new DownloadError(url, `Fetching ${url} failed: HTTP ${response.status} ${response.statusText}.`);
  return response.text();
}

function offlineError(source: DownloadSource, what: string): DownloadError {
  return new DownloadError(
    source.url,
    `Image ${source.name} is not in the cache and GUESTLAB_OFFLINE=1 forbids downloading ${what}. ` +
      `Pull it where the network is reachable (guestlab image pull ${source.name}) and bring the cache over (guestlab image export/import), or unset GUESTLAB_OFFLINE.`,
  );
}
