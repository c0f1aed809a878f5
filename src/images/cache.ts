// The image cache: where an entry's image lives (its name and hash), and getting it from there or
// making it first, under a host-wide lock so that two processes never make the same image at once.
import fs from 'node:fs/promises';
import path from 'node:path';
import { ImageBuildError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { acquireLock } from '../util/lock.ts';
import { downloadHash, type CatalogEntry } from './catalog.ts';
import type { BuiltImage } from './image-dir.ts';
import { recipeHash, type ImageRecipe } from './recipe.ts';

export interface EnsureImageOptions {
  log?: Logger;
  signal?: AbortSignal | undefined;
  /** Rebuild even when a cached image exists. */
  force?: boolean;
}

/** What the cache keys an entry by: its recipe hash, or for a download entry its downloadHash(). */
export function entryHash(entry: CatalogEntry | ImageRecipe): string {
  if ('kind' in entry) return entry.kind === 'recipe' ? recipeHash(entry.recipe) : downloadHash(entry.download);
  return recipeHash(entry);
}

/** The directory of an image in the cache: its name, then 16 hex digits of its hash. */
export function imageDirName(entry: CatalogEntry | ImageRecipe): string {
  return `${entry.name}-${entryHash(entry).slice(0, 16)}`;
}

const announced = new Set<string>();

/**
 * The image in `dir` from the cache, or made first by `make` (which writes it under a temporary
 * name and renames it into place) under the image's host-wide lock. `read` returns the image when
 * `dir` holds a complete one, verified.
 */
export async function cachedOrMade(
  dir: string,
  options: EnsureImageOptions,
  log: Logger,
  how: { making: string; read: () => Promise<BuiltImage | undefined>; make: () => Promise<void> },
): Promise<BuiltImage> {
  const cached = !options.force && (await how.read());
  if (cached) {
    // Once per process: CI logs show that a restored cache spared the build.
    if (!announced.has(cached.dir)) log.info(`cached build ${path.basename(cached.dir)}: no build needed`);
    announced.add(cached.dir);
    return cached;
  }

  await fs.mkdir(path.dirname(dir), { recursive: true });
  const lock = await acquireLock(dir, {
    signal: options.signal,
    onWait: () => log.info(`another process is ${how.making} this image; waiting for it`),
  });
  try {
    // The holder we waited for may have finished the job.
    const afterWait = !options.force && (await how.read());
    if (afterWait) return afterWait;
    await how.make();
    const made = await how.read();
    if (!made) throw new ImageBuildError(`${how.making} ${path.basename(dir)} finished but ${dir} is incomplete`);
    return { ...made, built: true };
  } finally {
    await lock.release();
  }
}
