// An image directory in the cache: its files (each a named constant), the manifest that describes
// it, and sealing a finished one into place. Whatever made the image (a recipe build, a download
// import), a reader sees the same directory.
import fs from 'node:fs/promises';
import path from 'node:path';
import { exists } from '../util/fs.ts';
import type { Firmware } from './catalog.ts';
import { writeStamp, type FileDigests } from './digest.ts';
import type { ImageFeature } from './recipe.ts';

/** Files of a built image directory. */
export const IMAGE_FILES = {
  disk: 'disk.qcow2',
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  manifest: 'manifest.json',
} as const;

/** The files whose digests the manifest records (everything but the manifest). */
export const DIGESTED_FILES = { disk: IMAGE_FILES.disk, kernel: IMAGE_FILES.kernel, initrd: IMAGE_FILES.initrd };
/** What an image that boots through firmware holds: its disk, whose bootloader finds the kernel. */
export const FIRMWARE_FILES = { disk: IMAGE_FILES.disk };

/** The files of an image directory (role -> file name), from its manifest. */
export function imageFilesOf(image: { boot?: 'kernel' | 'firmware' | undefined }): Record<string, string> {
  return image.boot === 'firmware' ? FIRMWARE_FILES : DIGESTED_FILES;
}

export interface BuiltImage {
  name: string;
  hash: string;
  dir: string;
  disk: string;
  /** `kernel`: QEMU loads kernel and initrd directly; `firmware`: the disk has its own bootloader. */
  boot: 'kernel' | 'firmware';
  /** The firmware the image boots with unless the guest spec asks for another (bios = SeaBIOS, uefi = OVMF). */
  firmware: Firmware;
  /** For direct kernel boot; undefined when the image boots through firmware. */
  kernel: string | undefined;
  initrd: string | undefined;
  /** Kernel command line for direct kernel boot (root= included); undefined when the bootloader holds it. */
  cmdline: string | undefined;
  /** Where it came from: built from a recipe, or downloaded (a download entry). */
  source: 'recipe' | 'download';
  /** What it offers guestlab beyond cloud-init and SSH (recipe `features`); empty for downloads. */
  features: ImageFeature[];
  /** True when this call built (or downloaded) it, false when it came from the cache. */
  built: boolean;
  buildMs: number;
}

export interface ImageManifest {
  name: string;
  /** The recipe hash, or for a download entry its downloadHash(). */
  recipeHash: string;
  /** The Debian suite; for a downloaded image, the entry's release. */
  suite: string;
  /** Empty when not known (a downloaded image). */
  kernelVersion: string;
  /** The kernel command line, given to QEMU or written into the bootloader; empty when not known. */
  cmdline: string;
  /** Absent: `kernel` (manifests written before firmware boot existed). */
  boot?: 'kernel' | 'firmware';
  /** The firmware it boots with by default; absent: bios. */
  firmware?: Firmware;
  /** For a downloaded image: where from, the verified digest, and the file in the download cache. */
  download?: { url: string; digest: string; file: string };
  builtAt: string;
  buildMs: number;
  diskBytes: number;
  /** sha256 and size of disk, kernel and initrd; absent in manifests written before guestlab 0.1.0 recorded them. */
  files?: FileDigests;
  /** The recipe's `features`; absent: none. */
  features?: ImageFeature[];
}

export async function readManifest(dir: string): Promise<ImageManifest | undefined> {
  const manifestPath = path.join(dir, IMAGE_FILES.manifest);
  if (!(await exists(manifestPath))) return undefined;
  return JSON.parse(await fs.readFile(manifestPath, 'utf8')) as ImageManifest;
}

/** The image a manifest describes; `cmdline` is used only for direct kernel boot. */
export function builtImageOf(name: string, dir: string, manifest: ImageManifest, source: BuiltImage['source'], cmdline: string | undefined): BuiltImage {
  const direct = manifest.boot !== 'firmware';
  return {
    name,
    hash: manifest.recipeHash,
    dir,
    disk: path.join(dir, IMAGE_FILES.disk),
    boot: direct ? 'kernel' : 'firmware',
    firmware: manifest.firmware ?? 'bios',
    kernel: direct ? path.join(dir, IMAGE_FILES.kernel) : undefined,
    initrd: direct ? path.join(dir, IMAGE_FILES.initrd) : undefined,
    cmdline: direct ? cmdline : undefined,
    source,
    features: manifest.features ?? [],
    built: false,
    buildMs: manifest.buildMs,
  };
}

/** Writes the manifest, makes the files read-only and moves the finished directory into place. */
export async function sealImage(work: string, finalDir: string, manifest: ImageManifest, files: Record<string, string>): Promise<void> {
  await fs.writeFile(path.join(work, IMAGE_FILES.manifest), JSON.stringify(manifest, null, 2) + '\n');
  // Base images are shared by every guest: nobody writes to them, overlays take the writes.
  for (const file of [...Object.values(files), IMAGE_FILES.manifest]) await fs.chmod(path.join(work, file), 0o444);
  await fs.chmod(work, 0o755);
  await fs.rm(finalDir, { recursive: true, force: true });
  await fs.rename(work, finalDir);
  await writeStamp(finalDir, files);
}
