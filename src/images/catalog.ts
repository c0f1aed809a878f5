// Image names -> recipes. A name is the file name of a recipe in one of the recipe directories.
import fs from 'node:fs/promises';
import path from 'node:path';
import { GuestlabError } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { loadRecipe, type ImageRecipe } from './recipe.ts';

const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]*$/;

/** Every recipe name visible from here, first directory wins, with its file. */
export async function listRecipes(recipeDirs = guestlabPaths().recipeDirs): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const dir of recipeDirs) {
    const entries = await fs.readdir(dir).catch(() => [] as string[]);
    for (const entry of entries.sort()) {
      const match = /^(.+)\.ya?ml$/.exec(entry);
      if (match?.[1] && !found.has(match[1])) found.set(match[1], path.join(dir, entry));
    }
  }
  return found;
}

export class UnknownImageError extends GuestlabError {
  override name = 'UnknownImageError';
  readonly image: string;
  readonly known: string[];
  constructor(image: string, known: string[], dirs: string[]) {
    super(
      `Unknown image "${image}". Known images: ${known.length ? known.join(', ') : '(none)'}. ` +
        `Add a recipe as ${image}.yaml in one of: ${dirs.join(', ')} (or set GUESTLAB_IMAGES_PATH).`,
      { code: 'ERR_UNKNOWN_IMAGE' },
    );
    this.image = image;
    this.known = known;
  }
}

export async function resolveRecipe(image: string, recipeDirs = guestlabPaths().recipeDirs): Promise<ImageRecipe> {
  const recipes = await listRecipes(recipeDirs);
  const file = IMAGE_NAME.test(image) ? recipes.get(image) : undefined;
  if (!file) throw new UnknownImageError(image, [...recipes.keys()], recipeDirs);
  return loadRecipe(file);
}
