// An image recipe: what to bootstrap from Debian packages, validated with file:line errors.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { isPlainObject } from '../util/validate.ts';
import { loadYamlFile, type YamlFile } from '../util/yaml-file.ts';

/** Bump when the builder changes what it produces, so cached images are rebuilt. */
export const BUILDER_VERSION = 1;

export interface RecipeFile {
  path: string;
  content: string;
  mode: number;
}

export interface ImageRecipe {
  name: string;
  /** Where the recipe was read from. */
  source: string;
  description: string;
  suite: string;
  mirror: string;
  components: string[];
  kernel: string;
  packages: string[];
  diskSizeGiB: number;
  /** Kernel command line for direct kernel boot, after `root=`. */
  cmdline: string;
  files: RecipeFile[];
  /** Shell commands run inside the image after the packages are installed. */
  commands: string[];
}

const KNOWN_KEYS = ['description', 'suite', 'mirror', 'components', 'kernel', 'packages', 'diskSizeGiB', 'cmdline', 'files', 'commands'];
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;

export async function loadRecipe(file: string): Promise<ImageRecipe> {
  return parseRecipe(await loadYamlFile(file));
}

export function parseRecipe(yaml: YamlFile): ImageRecipe {
  const data = yaml.data;
  if (!isPlainObject(data)) throw yaml.error([], 'must be a mapping of recipe fields (suite, kernel, packages, ...)');
  for (const key of Object.keys(data)) {
    if (!KNOWN_KEYS.includes(key)) throw yaml.error([key], `is not a recipe field; known fields: ${KNOWN_KEYS.join(', ')}`);
  }
  const str = (key: string, fallback?: string): string => {
    const value = data[key] ?? fallback;
    if (typeof value !== 'string' || !value) throw yaml.error([key], `must be a non-empty string, got ${JSON.stringify(value)}`);
    return value;
  };
  const list = (key: string, fallback: string[], pattern?: RegExp): string[] => {
    const value = data[key] ?? fallback;
    if (!Array.isArray(value)) throw yaml.error([key], 'must be a list of strings');
    return value.map((item, i) => {
      if (typeof item !== 'string' || !item) throw yaml.error([key, i], 'must be a non-empty string');
      if (pattern && !pattern.test(item)) throw yaml.error([key, i], `"${item}" is not a valid Debian package name`);
      return item;
    });
  };
  const diskSizeGiB = data.diskSizeGiB ?? 3;
  if (typeof diskSizeGiB !== 'number' || !Number.isInteger(diskSizeGiB) || diskSizeGiB < 1 || diskSizeGiB > 1024) {
    throw yaml.error(['diskSizeGiB'], `must be a whole number of GiB from 1 to 1024, got ${JSON.stringify(diskSizeGiB)}`);
  }
  const filesValue = data.files ?? [];
  if (!Array.isArray(filesValue)) throw yaml.error(['files'], 'must be a list of { path, content, mode }');
  const files = filesValue.map((entry, i): RecipeFile => {
    if (!isPlainObject(entry)) throw yaml.error(['files', i], 'must be a mapping with path, content and mode');
    if (typeof entry.path !== 'string' || !path.posix.isAbsolute(entry.path) || entry.path.split('/').includes('..')) {
      throw yaml.error(['files', i, 'path'], 'must be an absolute path inside the image without ".."');
    }
    if (typeof entry.content !== 'string') throw yaml.error(['files', i, 'content'], 'must be a string');
    const modeText = String(entry.mode ?? '0644');
    if (!/^0?[0-7]{3,4}$/.test(modeText)) throw yaml.error(['files', i, 'mode'], `must be an octal mode such as "0644", got ${modeText}`);
    return { path: entry.path, content: entry.content, mode: parseInt(modeText, 8) };
  });
  return {
    name: path.basename(yaml.file).replace(/\.ya?ml$/, ''),
    source: yaml.file,
    description: typeof data.description === 'string' ? data.description : '',
    suite: str('suite'),
    mirror: str('mirror', 'http://deb.debian.org/debian'),
    components: list('components', ['main']),
    kernel: str('kernel'),
    packages: list('packages', [], PACKAGE_NAME),
    diskSizeGiB,
    cmdline: str('cmdline', 'console=ttyS0'),
    files,
    commands: list('commands', []),
  };
}

/**
 * A digest of everything that changes the built image. Not the file's location, its description,
 * nor the kernel command line, which is read from the recipe at every boot.
 */
export function recipeHash(recipe: ImageRecipe): string {
  const { source: _source, description: _description, cmdline: _cmdline, ...content } = recipe;
  return createHash('sha256').update(JSON.stringify({ builder: BUILDER_VERSION, ...content })).digest('hex');
}
