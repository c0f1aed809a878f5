// Base images in the cache, by catalog name: the module the rest of guestlab imports. A recipe is
// built from Debian packages (build-recipe.ts, with customize.ts and firmware-disk.ts); a download
// entry is pulled once, checked, and imported (import-download.ts). Either way the image is written
// under a temporary name and renamed when complete (image-dir.ts), under a host-wide lock
// (cache.ts), so that two processes never race and readers never see half.
import { resolveImage } from './catalog.ts';
import { ensureImageFromRecipe } from './build-recipe.ts';
import type { EnsureImageOptions } from './cache.ts';
import type { BuiltImage } from './image-dir.ts';
import { ensureDownloadedImage } from './import-download.ts';

export { ensureImageFromRecipe, kernelCmdline } from './build-recipe.ts';
export { entryHash, imageDirName, type EnsureImageOptions } from './cache.ts';
export { customizeScript, DIVERT_INITRAMFS_HOOK, OFFLINE_APT_SOURCE, OFFLINE_REPO_DIR, OFFLINE_REPO_SCRIPT, OFFLINE_SOURCES_FILE } from './customize.ts';
export { assembleFirmwareDisk, bootloaderConfigs, type FirmwareDiskParts } from './firmware-disk.ts';
export { DIGESTED_FILES, FIRMWARE_FILES, IMAGE_FILES, imageFilesOf, readManifest, type BuiltImage, type ImageManifest } from './image-dir.ts';
export { ensureDownloadedImage } from './import-download.ts';

/** Returns the cached image for `name`, building (or downloading) it first when it is missing. */
export async function ensureImage(name: string, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const entry = await resolveImage(name);
  return entry.kind === 'recipe' ? ensureImageFromRecipe(entry.recipe, options) : ensureDownloadedImage(entry.download, options);
}
