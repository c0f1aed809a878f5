// The image cache for CI: a stable key for a set of images, one archive file to carry built images
// from job to job (export/import, verified on the way in), checks and removal.
//
// Archive layout (plain tar, members in this order):
//   guestlab-images.json          index: format, arch, and per image its directory, name, recipe
//                                 hash and the sha256 of each file
//   NAME-HASH16/manifest.json     the image directory exactly as the cache holds it
//   NAME-HASH16/{disk.qcow2,vmlinuz,initrd.img}  (disk.qcow2 alone for an image that boots through firmware)
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { ImageArchiveError, ImageCorruptError } from '../errors.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { exists } from '../util/fs.ts';
import { acquireLock } from '../util/lock.ts';
import { run } from '../util/run.ts';
import { DIGESTED_FILES, entryHash, IMAGE_FILES, imageDirName, imageFilesOf, readManifest, type ImageManifest } from './builder.ts';
import { resolveImage } from './catalog.ts';
import { checkSelfContained, compareDigests, digestFiles, removeStamps, writeStamp, type FileDigests } from './digest.ts';

export const ARCHIVE_INDEX = 'guestlab-images.json';
const ARCHIVE_FORMAT = 1;
// An image directory in the cache: the recipe's name, then 16 hex digits of its hash.
const IMAGE_DIR = /^([a-z0-9][a-z0-9._-]*)-([0-9a-f]{16})$/;

export interface ArchiveIndex {
  format: number;
  arch: string;
  createdAt: string;
  images: { dir: string; name: string; recipeHash: string; files: FileDigests }[];
}

/**
 * A cache key for a set of images: changes exactly when one of them would be built differently
 * (its recipe, inherited recipes and files included, or guestlab's builder) or for another CPU
 * architecture. Order and repetition of names do not matter.
 */
export async function imageCacheKey(names: string[]): Promise<{ key: string; images: { name: string; hash: string }[] }> {
  if (names.length === 0) throw new TypeError('image key: name at least one image, e.g. guestlab image key debian-12');
  const images = await Promise.all([...new Set(names)].sort().map(async (name) => ({ name, hash: entryHash(await resolveImage(name)) })));
  const digest = createHash('sha256').update(JSON.stringify({ arch: process.arch, images })).digest('hex');
  return { key: `guestlab-images-${process.arch}-${digest.slice(0, 24)}`, images };
}

/** The cache directory of the image that `name` resolves to now, and its manifest when built. */
async function cachedImage(name: string): Promise<{ dir: string; manifest: ImageManifest | undefined }> {
  const dir = path.join(guestlabPaths().imagesDir, imageDirName(await resolveImage(name)));
  return { dir, manifest: await readManifest(dir) };
}

/** Writes the named built images into one tar file at `output` (atomically). Returns the bytes written. */
export async function exportImages(names: string[], output: string, log: Logger = rootLog): Promise<{ bytes: number; ms: number }> {
  if (names.length === 0) throw new TypeError('image export: name the images to export, e.g. guestlab image export debian-12 --output images.tar');
  const started = Date.now();
  const index: ArchiveIndex = { format: ARCHIVE_FORMAT, arch: process.arch, createdAt: new Date().toISOString(), images: [] };
  for (const name of [...new Set(names)]) {
    const { dir, manifest } = await cachedImage(name);
    if (!manifest) throw new ImageArchiveError(`image export: ${name} is not built in ${guestlabPaths().imagesDir}; build it first with: guestlab image build ${name}`);
    // What goes out is checked against what was recorded, so a damaged cache is not passed on.
    const imageFiles = imageFilesOf(manifest);
    const files = manifest.files ?? (await digestFiles(dir, imageFiles));
    const problems = manifest.files ? await compareDigests(dir, imageFiles, manifest.files) : [];
    if (problems.length) throw new ImageCorruptError(`image export: ${name} in ${dir} is damaged:\n  ${problems.join('\n  ')}\nRemove it with guestlab image rm ${name} and build it again.`);
    index.images.push({ dir: path.basename(dir), name, recipeHash: manifest.recipeHash, files });
  }
  const target = path.resolve(output);
  const staging = await fs.mkdtemp(path.join(path.dirname(target), '.guestlab-export-'));
  const partial = path.join(staging, 'archive.tar');
  try {
    await fs.writeFile(path.join(staging, ARCHIVE_INDEX), JSON.stringify(index, null, 2) + '\n');
    const members = index.images.flatMap(({ dir, files }) => [dir, `${dir}/${IMAGE_FILES.manifest}`, ...Object.values(filesOfIndex(files)).map((file) => `${dir}/${file}`)]);
    await run('tar', ['-c', '-f', partial, '--format=gnu', '-C', staging, ARCHIVE_INDEX, '-C', guestlabPaths().imagesDir, '--no-recursion', ...members]);
    await fs.rename(partial, target);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
  const { size } = await fs.stat(target);
  const ms = Date.now() - started;
  log.info(`exported ${index.images.map((i) => i.dir).join(', ')} to ${target} (${(size / 1024 ** 2).toFixed(0)} MiB in ${(ms / 1000).toFixed(1)}s)`);
  return { bytes: size, ms };
}

export interface ImportedImage {
  name: string;
  dir: string;
  /** "imported", or "present" when the cache already held this image. */
  outcome: 'imported' | 'present';
  /** False when the recipe of that name now hashes differently: the image is kept but not used. */
  current: boolean;
}

/**
 * Unpacks an archive written by exportImages into the image cache. Every member name is checked
 * before anything is unpacked, every file's sha256 after, and an image enters the cache (by rename,
 * under its lock) only when all of its files match. Nothing of a failed import stays behind.
 */
export async function importImages(archive: string, log: Logger = rootLog): Promise<{ images: ImportedImage[]; ms: number }> {
  const started = Date.now();
  const source = path.resolve(archive);
  if (!(await exists(source))) throw new ImageArchiveError(`image import: ${archive} does not exist; write one with guestlab image export NAME --output ${archive}`);
  const { imagesDir } = guestlabPaths();
  await fs.mkdir(imagesDir, { recursive: true });
  const listing = await run('tar', ['-t', '-f', source]).catch((error: Error) => {
    throw new ImageArchiveError(`image import: ${archive} is not a readable tar archive (truncated or damaged?): ${error.message}`, { cause: error });
  });
  const members = listing.split('\n').filter(Boolean);
  const allowed = new Set(Object.values(IMAGE_FILES) as string[]);
  for (const member of members) {
    const [dir, file, ...rest] = member.replace(/\/$/, '').split('/');
    const ok = member === ARCHIVE_INDEX || (IMAGE_DIR.test(dir ?? '') && rest.length === 0 && (file === undefined || allowed.has(file)));
    if (!ok) throw new ImageArchiveError(`image import: ${archive} has an unexpected member "${member}"; it was not written by guestlab image export`);
  }
  if (!members.includes(ARCHIVE_INDEX)) throw new ImageArchiveError(`image import: ${archive} has no ${ARCHIVE_INDEX}; it was not written by guestlab image export`);

  const staging = await fs.mkdtemp(path.join(imagesDir, `.import-${process.pid}-`));
  try {
    await run('tar', ['-x', '-f', source, '-C', staging, '--no-same-owner', '--no-same-permissions']).catch((error: Error) => {
      throw new ImageArchiveError(`image import: unpacking ${archive} failed (truncated?): ${error.message}`, { cause: error });
    });
    const index = JSON.parse(await fs.readFile(path.join(staging, ARCHIVE_INDEX), 'utf8')) as ArchiveIndex;
    if (index.format !== ARCHIVE_FORMAT) throw new ImageArchiveError(`image import: ${archive} has format ${index.format}; this guestlab reads format ${ARCHIVE_FORMAT}`);
    if (index.arch !== process.arch) throw new ImageArchiveError(`image import: ${archive} holds ${index.arch} images; this host is ${process.arch}`);
    const images: ImportedImage[] = [];
    for (const entry of index.images) {
      images.push(await admitImage(staging, entry, archive, log));
    }
    const ms = Date.now() - started;
    log.info(`imported ${archive}: ${images.map((i) => `${i.name} ${i.outcome}${i.current ? '' : ' (recipe changed since; not used)'}`).join(', ')} in ${(ms / 1000).toFixed(1)}s`);
    return { images, ms };
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

async function admitImage(staging: string, entry: ArchiveIndex['images'][number], archive: string, log: Logger): Promise<ImportedImage> {
  const match = IMAGE_DIR.exec(entry.dir);
  if (!match || match[1] !== entry.name || !entry.recipeHash.startsWith(match[2]!)) {
    throw new ImageArchiveError(`image import: ${archive} names image directory "${entry.dir}" for ${entry.name} with recipe hash ${entry.recipeHash}; they do not agree`);
  }
  const unpacked = path.join(staging, entry.dir);
  const roles = Object.keys(entry.files);
  if (!roles.includes('disk') || roles.some((role) => !(role in DIGESTED_FILES))) {
    throw new ImageArchiveError(`image import: ${archive} lists files ${roles.join(', ')} for ${entry.dir}; an image has a disk, and a kernel and initrd only with it`);
  }
  const imageFiles = filesOfIndex(entry.files);
  for (const file of [IMAGE_FILES.manifest, ...Object.values(imageFiles)]) {
    const stat = await fs.lstat(path.join(unpacked, file)).catch(() => undefined);
    if (!stat?.isFile()) throw new ImageArchiveError(`image import: ${archive} lacks ${entry.dir}/${file} as a regular file`);
  }
  const problems = await compareDigests(unpacked, imageFiles, entry.files);
  if (problems.length) throw new ImageArchiveError(`image import: ${entry.dir} in ${archive} does not match its digests (corrupt or truncated archive):\n  ${problems.join('\n  ')}`);
  // The digests come with the archive: they prove nothing about what the disk points at.
  await checkSelfContained(entry.name, `${archive} (${entry.dir})`, path.join(unpacked, imageFiles.disk!)).catch((error: Error) => {
    throw new ImageArchiveError(`image import: ${error.message}`, { cause: error });
  });
  const manifest = (await readManifest(unpacked))!;
  if (manifest.recipeHash !== entry.recipeHash) throw new ImageArchiveError(`image import: the manifest of ${entry.dir} in ${archive} disagrees with its index`);

  if (Object.keys(imageFilesOf(manifest)).sort().join() !== [...roles].sort().join()) {
    throw new ImageArchiveError(`image import: the manifest of ${entry.dir} in ${archive} does not say how the image boots as its files do`);
  }
  const current = await resolveImage(entry.name)
    .then((found) => entryHash(found) === entry.recipeHash)
    .catch(() => false);
  const finalDir = path.join(guestlabPaths().imagesDir, entry.dir);
  const lock = await acquireLock(finalDir, { onWait: () => log.info(`${entry.dir} is being built or imported by another process; waiting`) });
  try {
    if (await readManifest(finalDir)) return { name: entry.name, dir: finalDir, outcome: 'present', current };
    // The manifest gains the digests it may lack (images built before they were recorded).
    await fs.writeFile(path.join(unpacked, IMAGE_FILES.manifest), JSON.stringify({ ...manifest, files: entry.files }, null, 2) + '\n');
    for (const file of [IMAGE_FILES.manifest, ...Object.values(imageFiles)]) await fs.chmod(path.join(unpacked, file), 0o444);
    await fs.chmod(unpacked, 0o755);
    await fs.rm(finalDir, { recursive: true, force: true });
    await fs.rename(unpacked, finalDir);
    await writeStamp(finalDir, imageFiles);
    return { name: entry.name, dir: finalDir, outcome: 'imported', current };
  } finally {
    await lock.release();
  }
}

export interface CachedImageInfo {
  dir: string;
  name: string;
  manifest: ImageManifest;
}

/** Every built image in the cache, of any recipe hash. */
export async function listCachedImages(): Promise<CachedImageInfo[]> {
  const { imagesDir } = guestlabPaths();
  const out: CachedImageInfo[] = [];
  for (const entry of (await fs.readdir(imagesDir).catch(() => [] as string[])).sort()) {
    const match = IMAGE_DIR.exec(entry);
    if (!match) continue;
    const manifest = await readManifest(path.join(imagesDir, entry)).catch(() => undefined);
    if (manifest) out.push({ dir: path.join(imagesDir, entry), name: match[1]!, manifest });
  }
  return out;
}

/** Checks every file of the cached images (all of them, or those of `names`) against its digest. */
export async function verifyCachedImages(names: string[]): Promise<{ dir: string; name: string; problems: string[]; ms: number }[]> {
  const images = (await listCachedImages()).filter((image) => names.length === 0 || names.includes(image.name));
  const missing = names.filter((name) => !images.some((image) => image.name === name));
  if (missing.length) throw new ImageArchiveError(`image verify: not in the cache: ${missing.join(', ')} (see guestlab image ls)`);
  const results = [];
  for (const image of images) {
    const started = Date.now();
    const files = imageFilesOf(image.manifest);
    const problems = image.manifest.files
      ? await compareDigests(image.dir, files, image.manifest.files)
      : ['no digests recorded (built before guestlab recorded them); rebuild with guestlab image build --force to add them'];
    if (problems.length === 0) await writeStamp(image.dir, files);
    results.push({ dir: image.dir, name: image.name, problems, ms: Date.now() - started });
  }
  return results;
}

/** The files (role -> file name) of the roles an index entry has digests for. */
function filesOfIndex(files: FileDigests): Record<string, string> {
  return Object.fromEntries(Object.keys(files).map((role) => [role, DIGESTED_FILES[role as keyof typeof DIGESTED_FILES] ?? role]));
}

/** Removes every cached build of the named images (each under its lock). Returns the directories removed. */
export async function removeImages(names: string[]): Promise<string[]> {
  if (names.length === 0) throw new TypeError('image rm: name the images to remove, e.g. guestlab image rm debian-12');
  const removed: string[] = [];
  const all = await fs.readdir(guestlabPaths().imagesDir).catch(() => [] as string[]);
  for (const name of names) {
    for (const entry of all.filter((e) => IMAGE_DIR.exec(e)?.[1] === name)) {
      const dir = path.join(guestlabPaths().imagesDir, entry);
      const lock = await acquireLock(dir);
      try {
        // A downloaded image goes with the file it was imported from (not the checksum records).
        const download = (await readManifest(dir).catch(() => undefined))?.download?.file;
        const downloads = path.join(guestlabPaths().cacheDir, 'downloads') + path.sep;
        if (download && path.resolve(download).startsWith(downloads)) await fs.rm(download, { force: true });
        await fs.rm(dir, { recursive: true, force: true });
        await removeStamps(dir);
        removed.push(dir);
      } finally {
        await lock.release();
      }
    }
  }
  return removed;
}
