// Where guestlab keeps things, from the environment. Read lazily so tests can set variables.
import os from 'node:os';
import path from 'node:path';

export interface GuestlabPaths {
  /** Root of the cache: images live in `images/` below it. */
  cacheDir: string;
  /** Built and downloaded base images. */
  imagesDir: string;
  /** One private directory per running guest. */
  instancesDir: string;
  /** Where `guestlab image build NAME` and `startGuest` look for recipes. */
  recipeDirs: string[];
  /** Where guest specs given by name are looked up. */
  fixtureDirs: string[];
}

const packageRoot = path.resolve(import.meta.dirname, '..');

export function guestlabPaths(env: NodeJS.ProcessEnv = process.env): GuestlabPaths {
  const xdgCache = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  const cacheDir = path.resolve(env.GUESTLAB_CACHE_DIR || path.join(xdgCache, 'guestlab'));
  const userRecipes = splitList(env.GUESTLAB_IMAGES_PATH);
  const userFixtures = splitList(env.GUESTLAB_FIXTURES_PATH);
  return {
    cacheDir,
    imagesDir: path.join(cacheDir, 'images'),
    instancesDir: path.resolve(env.GUESTLAB_INSTANCES_DIR || path.join(cacheDir, 'instances')),
    // The project's own images/ first, so a project can override a shipped recipe by name.
    recipeDirs: dedupe([...userRecipes, path.resolve('images'), path.join(packageRoot, 'images')]),
    fixtureDirs: dedupe([...userFixtures, path.resolve('fixtures')]),
  };
}

function splitList(value: string | undefined): string[] {
  return (value ?? '').split(path.delimiter).filter(Boolean).map((p) => path.resolve(p));
}

function dedupe(list: string[]): string[] {
  return [...new Set(list)];
}
