// Importing a download entry: its disk pulled once (download.ts), checked, and linked or converted
// into the image directory as qcow2.
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { convertDisk, diskInfo } from '../disk/qemu-img.ts';
import { ImageBuildError } from '../errors.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { makePrivateDir } from '../util/fs.ts';
import { cachedOrMade, imageDirName, type EnsureImageOptions } from './cache.ts';
import { downloadHash, type DownloadEntry } from './catalog.ts';
import { formatDigest } from './checksum.ts';
import { digestFiles, ensureVerified } from './digest.ts';
import { pullFile } from './download.ts';
import { builtImageOf, FIRMWARE_FILES, IMAGE_FILES, imageFilesOf, readManifest, sealImage, type BuiltImage, type ImageManifest } from './image-dir.ts';
import { progressReporter } from './progress.ts';

const MiB = 1024 * 1024;

/** Returns the cached image of a download entry, pulling and importing it first when it is missing. */
export async function ensureDownloadedImage(entry: DownloadEntry, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const log = (options.log ?? rootLog).child(`image:${entry.name}`);
  const finalDir = path.join(guestlabPaths().imagesDir, imageDirName({ kind: 'download', name: entry.name, download: entry }));
  return cachedOrMade(finalDir, options, log, {
    making: 'importing',
    read: async () => {
      const manifest = await readManifest(finalDir);
      if (!manifest) return undefined;
      if (manifest.files) await ensureVerified(entry.name, finalDir, imageFilesOf(manifest), manifest.files, log);
      return builtImageOf(entry.name, finalDir, manifest, 'download', undefined);
    },
    make: () => importInto(entry, finalDir, log, options.signal),
  });
}

/** Pulls the entry's disk (once, verified) and seals it as an image in `finalDir`. */
async function importInto(entry: DownloadEntry, finalDir: string, log: Logger, signal: AbortSignal | undefined): Promise<void> {
  const started = Date.now();
  const pulled = await pullFile(
    { name: entry.name, url: entry.url, digest: entry.digest, checksums: entry.checksums },
    { cacheDir: guestlabPaths().cacheDir, signal, onProgress: progressReporter(log, entry.name) },
  );
  log.info(`${pulled.downloaded ? 'downloaded' : 'found'} ${entry.url} (${(pulled.bytes / MiB).toFixed(0)} MiB, ${formatDigest(pulled.digest)})`);
  const work = `${finalDir}.tmp-${process.pid}`;
  await fs.rm(work, { recursive: true, force: true });
  await makePrivateDir(work);
  try {
    const disk = path.join(work, IMAGE_FILES.disk);
    await importDisk(entry, pulled.path, disk, signal);
    const manifest: ImageManifest = {
      name: entry.name,
      recipeHash: downloadHash(entry),
      suite: entry.release,
      kernelVersion: '',
      cmdline: '',
      boot: 'firmware',
      firmware: entry.firmware,
      download: { url: entry.url, digest: formatDigest(pulled.digest), file: pulled.path },
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - started,
      diskBytes: (await fs.stat(disk)).size,
      files: await digestFiles(work, FIRMWARE_FILES),
    };
    await sealImage(work, finalDir, manifest, FIRMWARE_FILES);
    log.info(`imported ${entry.name} in ${(manifest.buildMs / 1000).toFixed(1)}s: ${finalDir}`);
  } catch (error) {
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
}

/**
 * Checks a downloaded disk and puts it in the image directory as qcow2: a qcow2 is hard-linked (or
 * copied across file systems), a raw disk converted. A qcow2 that names a backing or data file is
 * refused: opened as a guest's base, it would hand the guest a host file of the image's choosing.
 */
async function importDisk(entry: DownloadEntry, downloaded: string, disk: string, signal: AbortSignal | undefined): Promise<void> {
  // Probing the format is safe here: qemu-img only reads the header, and the result is checked.
  const info = await diskInfo(downloaded, signal);
  const where = `image ${entry.name} (${entry.source})`;
  if (info.format !== entry.format) {
    throw new ImageBuildError(`The download of ${where} is a ${info.format ?? 'unknown'} disk, but its entry says format: ${entry.format}. Set format: ${info.format === 'qcow2' || info.format === 'raw' ? info.format : 'to what the file is'} (or convert it with qemu-img convert -O qcow2).`);
  }
  if (entry.format === 'raw') {
    await convertDisk({ file: downloaded, format: 'raw' }, { file: disk, format: 'qcow2' }, signal);
    return;
  }
  const external = info.externalFile;
  if (external !== undefined) {
    throw new ImageBuildError(`The download of ${where} is a qcow2 that refers to another file (${external}); guestlab refuses it, since the guest would read that host file. Flatten it with qemu-img convert -O qcow2 and point the entry at the result.`);
  }
  await fs.link(downloaded, disk).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EXDEV' && error.code !== 'EPERM') throw error;
    await fs.copyFile(downloaded, disk);
  });
}
