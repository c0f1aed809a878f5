// Image names -> catalog entries. A name is the file name of a YAML file in one of the image
// directories (first directory wins). A file with `suite` is a recipe, built here from Debian
// packages (recipe.ts); a file with `url` or `file` is a download entry: a disk image published by
// a distribution (or kept by the user), fetched once, verified against a digest, and cached.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { GuestlabError, UnknownImageError } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { isPlainObject } from '../util/validate.ts';
import { loadYamlFile, type YamlFile } from '../util/yaml-file.ts';
import { isLocalHost, parseDigest } from './download.ts';
import { IMAGE_NAME, listRecipes, loadRecipe, type ImageRecipe } from './recipe.ts';

/** Every image file visible from here, first directory wins (recipes and download entries alike). */
export const listImageFiles = listRecipes;
export { listRecipes, UnknownImageError };

/** Which firmware QEMU boots a disk through: SeaBIOS (QEMU's default) or OVMF (UEFI). */
export type Firmware = 'bios' | 'uefi';
export const FIRMWARES: readonly Firmware[] = ['bios', 'uefi'];

export interface DownloadEntry {
  name: string;
  /** The YAML file it was read from. */
  source: string;
  description: string;
  /** What `image ls` shows as the release, e.g. "Ubuntu 24.04 LTS (noble)". */
  release: string;
  /** Where the disk comes from: an http(s) URL, or a file: URL for a local `file`. */
  url: string;
  /** A pinned digest, `sha256:HEX` or `sha512:HEX`. */
  digest: string | undefined;
  /** Or the URL of the distribution's checksum file that lists the image by its file name. */
  checksums: string | undefined;
  /** The disk format as published: qcow2 is used as it is, raw is converted to qcow2 once. */
  format: 'qcow2' | 'raw';
  /** The firmware the image boots with unless a guest spec asks for the other one. */
  firmware: Firmware;
}

export type CatalogEntry = { kind: 'recipe'; name: string; recipe: ImageRecipe } | { kind: 'download'; name: string; download: DownloadEntry };

const DOWNLOAD_KEYS = ['description', 'release', 'url', 'file', 'digest', 'checksums', 'format', 'firmware'];

/** True when the YAML file is a download entry rather than a recipe. */
export function isDownloadEntry(yaml: YamlFile): boolean {
  return isPlainObject(yaml.data) && (yaml.data.url !== undefined || yaml.data.file !== undefined);
}

/** The catalog entry `image` names. */
export async function resolveImage(image: string, imageDirs = guestlabPaths().recipeDirs): Promise<CatalogEntry> {
  const files = await listImageFiles(imageDirs);
  const file = IMAGE_NAME.test(image) ? files.get(image) : undefined;
  if (!file) throw new UnknownImageError(image, [...files.keys()], imageDirs);
  return loadEntry(file, imageDirs);
}

/** Reads one image file: a download entry, or a recipe (with the recipes it extends). */
export async function loadEntry(file: string, imageDirs = guestlabPaths().recipeDirs): Promise<CatalogEntry> {
  const yaml = await loadYamlFile(file);
  if (isDownloadEntry(yaml)) {
    const download = parseDownloadEntry(yaml);
    return { kind: 'download', name: download.name, download };
  }
  const recipe = await loadRecipe(file, imageDirs);
  return { kind: 'recipe', name: recipe.name, recipe };
}

/** The recipe `image` names; a download entry is an error that says so. */
export async function resolveRecipe(image: string, imageDirs = guestlabPaths().recipeDirs): Promise<ImageRecipe> {
  const entry = await resolveImage(image, imageDirs);
  if (entry.kind === 'download') {
    throw new GuestlabError(
      `Image ${image} is downloaded (${entry.download.url}), not built from a recipe: use guestlab image pull ${image}, or name a recipe.`,
      { code: 'ERR_NOT_A_RECIPE' },
    );
  }
  return entry.recipe;
}

/** Validates a download entry, with file:line errors. A relative `file` is relative to the YAML file. */
export function parseDownloadEntry(yaml: YamlFile): DownloadEntry {
  const data = yaml.data;
  if (!isPlainObject(data)) throw yaml.error([], 'must be a mapping of entry fields (url, digest, format, ...)');
  for (const key of Object.keys(data)) {
    if (!DOWNLOAD_KEYS.includes(key)) {
      const hint = ['suite', 'kernel', 'packages'].includes(key) ? ' (a recipe field: a file is either a recipe or a download entry, not both)' : '';
      throw yaml.error([key], `is not a download entry field${hint}; known fields: ${DOWNLOAD_KEYS.join(', ')}`);
    }
  }
  const optionalString = (key: string): string | undefined => {
    const value = data[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'string' || !value.trim()) throw yaml.error([key], `must be a non-empty string, got ${JSON.stringify(value)}`);
    return value.trim();
  };
  const httpUrl = (key: string): string | undefined => {
    const value = optionalString(key);
    if (value === undefined) return undefined;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw yaml.error([key], `must be an http(s) URL, got ${JSON.stringify(value)}`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw yaml.error([key], `must be an http(s) URL, got ${url.protocol} (a local disk goes in \`file\`)`);
    if (url.username || url.password) throw yaml.error([key], 'must not carry credentials: they would be written to the cache records and logs');
    return url.href;
  };
  const remote = httpUrl('url');
  const file = optionalString('file');
  if ((remote === undefined) === (file === undefined)) throw yaml.error([], 'needs exactly one of `url` (an http(s) URL) and `file` (a local disk image)');
  const url = remote ?? pathToFileURL(path.resolve(path.dirname(yaml.file), file!)).href;
  const digest = optionalString('digest');
  if (digest !== undefined) {
    try {
      parseDigest(digest, 'digest');
    } catch (error) {
      throw yaml.error(['digest'], (error as Error).message.replace(/^digest: /, ''));
    }
  }
  const checksums = httpUrl('checksums');
  if (checksums !== undefined && new URL(checksums).protocol === 'http:' && !isLocalHost(new URL(checksums).hostname)) {
    throw yaml.error(['checksums'], `must be an https URL, got ${checksums}: a checksum file read over plain http can be changed on the way, and the download with it (or pin \`digest\`)`);
  }
  if (digest === undefined && checksums === undefined) {
    throw yaml.error([], file !== undefined
      ? `needs \`digest\` for ${file}: add "digest: sha256:$(sha256sum ${file} | cut -d ' ' -f 1)"`
      : 'needs `digest` (sha256:HEX or sha512:HEX) or `checksums` (the URL of the distribution\'s SHA256SUMS/CHECKSUM file)');
  }
  if (digest !== undefined && checksums !== undefined) throw yaml.error(['checksums'], 'cannot be given with `digest`: keep one of the two');
  const format = data.format ?? 'qcow2';
  if (format !== 'qcow2' && format !== 'raw') throw yaml.error(['format'], `must be qcow2 or raw, got ${JSON.stringify(format)} (convert other formats with qemu-img convert -O qcow2)`);
  const firmware = data.firmware ?? 'bios';
  if (!FIRMWARES.includes(firmware as Firmware)) throw yaml.error(['firmware'], `must be bios (SeaBIOS) or uefi (OVMF), got ${JSON.stringify(firmware)}`);
  const name = path.basename(yaml.file).replace(/\.ya?ml$/, '');
  return {
    name,
    source: yaml.file,
    description: optionalString('description') ?? '',
    release: optionalString('release') ?? name,
    url,
    digest,
    checksums,
    format,
    firmware: firmware as Firmware,
  };
}

/**
 * What a cached download entry is keyed by: where it comes from, how it is verified, its format.
 * Not its description or default firmware. With a checksum file instead of a pinned digest, a new
 * upstream image keeps the key: `guestlab image rm NAME` and a new pull bring it in.
 */
export function downloadHash(entry: DownloadEntry): string {
  const { url, digest, checksums, format } = entry;
  return createHash('sha256').update(JSON.stringify({ kind: 'download', url, digest, checksums, format })).digest('hex');
}
