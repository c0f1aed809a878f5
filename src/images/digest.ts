// Digests of an image's files, recorded in its manifest when it is built or imported and checked
// before an image that arrived by other means (a CI cache restoring the directory) is used. A
// small stamp per image remembers which file identities (device, inode, size, mtime) were checked,
// so a verified image costs a few stat() calls afterwards, not a second pass over its disk.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { guestlabPaths } from '../config.ts';
import { diskInfo } from '../disk/qemu-img.ts';
import { ImageCorruptError } from '../errors.ts';
import type { Logger } from '../log.ts';

export interface FileDigest {
  bytes: number;
  sha256: string;
}

/** File role (disk, kernel, initrd) -> digest. */
export type FileDigests = Record<string, FileDigest>;

export async function hashFile(file: string): Promise<FileDigest> {
  const hash = createHash('sha256');
  let bytes = 0;
  await pipeline(createReadStream(file), async function* (chunks: AsyncIterable<Buffer>) {
    for await (const chunk of chunks) {
      bytes += chunk.length;
      hash.update(chunk);
    }
  });
  return { bytes, sha256: hash.digest('hex') };
}

/** Digests of `files` (role -> file name) in `dir`. */
export async function digestFiles(dir: string, files: Record<string, string>): Promise<FileDigests> {
  const entries = await Promise.all(Object.entries(files).map(async ([role, name]) => [role, await hashFile(path.join(dir, name))] as const));
  return Object.fromEntries(entries);
}

/** One line per file whose size or sha256 differs from `expected`; empty when all match. */
export async function compareDigests(dir: string, files: Record<string, string>, expected: FileDigests): Promise<string[]> {
  const problems: string[] = [];
  for (const [role, name] of Object.entries(files)) {
    const want = expected[role];
    if (!want) {
      problems.push(`${name}: no digest recorded`);
      continue;
    }
    const file = path.join(dir, name);
    const got = await hashFile(file).catch((error: NodeJS.ErrnoException) => error);
    if (got instanceof Error) problems.push(`${name}: ${got.code === 'ENOENT' ? 'missing' : got.message}`);
    else if (got.bytes !== want.bytes) problems.push(`${name}: ${got.bytes} bytes, expected ${want.bytes}`);
    else if (got.sha256 !== want.sha256) problems.push(`${name}: sha256 ${got.sha256}, expected ${want.sha256}`);
  }
  return problems;
}

type Identity = Record<string, string>;

async function identities(dir: string, files: Record<string, string>): Promise<Identity | undefined> {
  try {
    const entries = await Promise.all(
      Object.entries(files).map(async ([role, name]) => {
        const stat = await fs.stat(path.join(dir, name), { bigint: true });
        return [role, `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}`] as const;
      }),
    );
    return Object.fromEntries(entries);
  } catch {
    return undefined;
  }
}

/** Where the stamp of an image directory lives: beside the cache, per user (the images may be root's). */
function stampFile(dir: string): string {
  const uid = process.getuid?.() ?? 0;
  return path.join(guestlabPaths().cacheDir, 'verified', `${path.basename(dir)}.${uid}.json`);
}

async function readStamp(dir: string): Promise<Identity | undefined> {
  try {
    return JSON.parse(await fs.readFile(stampFile(dir), 'utf8')) as Identity;
  } catch {
    return undefined;
  }
}

/** Records that the files of `dir`, as they are now, match their digests. Best effort. */
export async function writeStamp(dir: string, files: Record<string, string>): Promise<void> {
  const identity = await identities(dir, files);
  if (!identity) return;
  const file = stampFile(dir);
  try {
    await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const temp = `${file}.${process.pid}`;
    await fs.writeFile(temp, JSON.stringify(identity) + '\n', { mode: 0o600 });
    await fs.rename(temp, file);
  } catch {
    // A read-only cache only means the next process checks the digests again.
  }
}

/** Forgets what was verified about `dir` (for every user whose stamp this user may remove). */
export async function removeStamps(dir: string): Promise<void> {
  const stamps = path.dirname(stampFile(dir));
  const prefix = `${path.basename(dir)}.`;
  for (const entry of await fs.readdir(stamps).catch(() => [] as string[])) {
    if (entry.startsWith(prefix)) await fs.rm(path.join(stamps, entry), { force: true }).catch(() => undefined);
  }
}

export interface VerifyOutcome {
  /** False when the stamp showed the files were checked before. */
  checked: boolean;
  ms: number;
  bytes: number;
}

/**
 * Makes sure the image in `dir` is the one its manifest describes, checking digests only when the
 * files are not the ones last verified (new inode, size or mtime: a restored cache, a copy, damage).
 * Throws ImageCorruptError naming the files and the fix.
 */
/** Refuses an image disk that is not a qcow2 of its own: one that names a backing or data file would give its guests that file. */
export async function checkSelfContained(name: string, dir: string, disk: string): Promise<void> {
  const info = await diskInfo(disk, undefined, 'qcow2').catch((error: Error) => {
    throw new ImageCorruptError(`Image ${name} in ${dir}: its disk is not a readable qcow2 (${error.message.split('\n')[0]}). Remove it with: guestlab image rm ${name}`, { cause: error });
  });
  if (info.externalFile !== undefined) {
    throw new ImageCorruptError(
      `Image ${name} in ${dir}: its disk refers to another file (${info.externalFile}), which a guest would read; guestlab refuses such an image. ` +
        `Remove it with: guestlab image rm ${name}; then build it (guestlab image build ${name}) or import an archive from a trusted source.`,
    );
  }
}

export async function ensureVerified(name: string, dir: string, files: Record<string, string>, expected: FileDigests, log: Logger): Promise<VerifyOutcome> {
  const now = await identities(dir, files);
  const stamp = await readStamp(dir);
  if (now && stamp && Object.keys(files).every((role) => stamp[role] === now[role])) return { checked: false, ms: 0, bytes: 0 };
  const started = Date.now();
  const problems = await compareDigests(dir, files, expected);
  if (problems.length) {
    throw new ImageCorruptError(
      `Image ${name} in ${dir} does not match the digests recorded when it was built or imported:\n  ${problems.join('\n  ')}\n` +
        `The cache is damaged (an interrupted copy or restore?). Remove it with: guestlab image rm ${name}; then build it (guestlab image build ${name}) or import it again.`,
    );
  }
  // Digests only say the files are the ones the manifest lists, and a manifest can be anyone's: the
  // disk must also be a self-contained qcow2, or a guest could be handed a host file as its disk.
  if (files.disk !== undefined) await checkSelfContained(name, dir, path.join(dir, files.disk));
  await writeStamp(dir, files);
  const bytes = Object.values(expected).reduce((sum, d) => sum + d.bytes, 0);
  const ms = Date.now() - started;
  log.info(`image ${name}: files not seen before (restored cache?) match their digests (${(bytes / 1024 ** 2).toFixed(0)} MiB checked in ${(ms / 1000).toFixed(1)}s)`);
  return { checked: true, ms, bytes };
}
