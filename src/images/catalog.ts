// Image names -> recipes. A name is the file name of a recipe in one of the recipe directories.
import { GuestlabError } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { IMAGE_NAME, listRecipes, loadRecipe, type ImageRecipe } from './recipe.ts';

// Listing lives with the recipe loader, which looks parents up by name too.
export { listRecipes };

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
  return loadRecipe(file, recipeDirs);
}
