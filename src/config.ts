// Where guestlab keeps things, from the environment. Read lazily so tests can set variables.
import os from 'node:os';
import path from 'node:path';
import { readEnv } from './env.ts';

export interface GuestlabPaths {
  /** Root of the cache: images live in `images/` below it. */
  cacheDir: string;
  /** The guest agent, compiled once per version of its source. */
  agentDir: string;
  /** Built and downloaded base images. */
  imagesDir: string;
  /** One private directory per running guest. */
  instancesDir: string;
  /** Saved templates that every process of this user restores guests from (template-cache.ts). */
  templatesDir: string;
  /** Where `guestlab image build NAME` and `startGuest` look for recipes. */
  recipeDirs: string[];
  /** Where guest specs given by name are looked up. */
  fixtureDirs: string[];
}

export const packageRoot = path.resolve(import.meta.dirname, '..');

export function guestlabPaths(env: NodeJS.ProcessEnv = process.env): GuestlabPaths {
  const xdgCache = env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  const cacheDir = readEnv('GUESTLAB_CACHE_DIR', env) ?? path.resolve(xdgCache, 'guestlab');
  const userRecipes = readEnv('GUESTLAB_IMAGES_PATH', env) ?? [];
  const userFixtures = readEnv('GUESTLAB_FIXTURES_PATH', env) ?? [];
  return {
    cacheDir,
    imagesDir: path.join(cacheDir, 'images'),
    agentDir: path.join(cacheDir, 'agent'),
    instancesDir: readEnv('GUESTLAB_INSTANCES_DIR', env) ?? path.join(cacheDir, 'instances'),
    templatesDir: readEnv('GUESTLAB_TEMPLATES_DIR', env) ?? path.join(cacheDir, 'templates'),
    // The project's own images/ first, so a project can override a shipped recipe by name.
    recipeDirs: dedupe([...userRecipes, path.resolve('images'), path.join(packageRoot, 'images')]),
    fixtureDirs: dedupe([...userFixtures, path.resolve('fixtures')]),
  };
}

function dedupe(list: string[]): string[] {
  return [...new Set(list)];
}
