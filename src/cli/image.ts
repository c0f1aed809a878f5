// `guestlab image ...`: the image catalog and cache (list, build, pull, CI key, export/import, verify, remove).
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { exportImages, imageCacheKey, importImages, removeImages, verifyCachedImages } from '../images/archive.ts';
import { ensureDownloadedImage, ensureImageFromRecipe, entryHash, IMAGE_FILES, imageDirName, readManifest } from '../images/builder.ts';
import { listImageFiles, loadEntry, resolveImage, type CatalogEntry } from '../images/catalog.ts';
import { IMAGE_NAME } from '../images/recipe.ts';
import { describeRelease } from '../images/traits.ts';
import { exists } from '../util/fs.ts';
import { command, UsageError, type Command } from './args.ts';
import { printTable } from './table.ts';

const NAMES = { min: 1, max: Infinity, what: 'image names (NAME...)' };

/** Image names are refused before anything is built, pulled or removed: `rm ../x` never reaches the cache. */
function imageNames(names: string[]): string | undefined {
  const bad = names.find((name) => !IMAGE_NAME.test(name));
  return bad === undefined ? undefined : `${JSON.stringify(bad)} is not an image name (lowercase letters, digits, '.', '_', '-'; see guestlab image ls)`;
}

const ls = command(
  {
    name: 'image ls',
    usage: [['image ls', 'list the images guestlab knows (recipes and downloads): release,\nsource, boot, whether cached, size, digest, recipe file or URL']],
    options: {},
    args: { min: 0, max: 0, what: 'no arguments' },
  },
  async () => {
    const { imagesDir } = guestlabPaths();
    const rows = [['NAME', 'RELEASE', 'SOURCE', 'BOOT', 'CACHED', 'SIZE', 'DIGEST', 'FROM']];
    for (const [name, file] of await listImageFiles()) {
      const entry = await loadEntry(file);
      const dir = path.join(imagesDir, imageDirName(entry));
      const manifest = await readManifest(dir);
      const disk = path.join(dir, IMAGE_FILES.disk);
      const size = manifest && (await exists(disk)) ? `${((await fs.stat(disk)).size / 1024 ** 2).toFixed(0)} MiB` : '-';
      rows.push([name, ...describeEntry(entry), manifest ? 'yes' : 'no', size, ...digestColumns(entry, manifest?.download?.digest)]);
    }
    printTable(rows);
    return 0;
  },
);

/** RELEASE, SOURCE and BOOT of `image ls`. */
function describeEntry(entry: CatalogEntry): [string, string, string] {
  if (entry.kind === 'download') return [entry.download.release, 'download', entry.download.firmware];
  return [describeRelease(entry.recipe.suite), 'recipe', entry.recipe.boot === 'firmware' ? 'bios|uefi' : 'kernel'];
}

/** DIGEST and FROM of `image ls`: the recipe hash and file, or the verified (or pinned) digest and the URL. */
function digestColumns(entry: CatalogEntry, verified: string | undefined): [string, string] {
  if (entry.kind === 'recipe') return [`recipe:${entryHash(entry).slice(0, 16)}`, entry.recipe.source];
  const digest = verified ?? entry.download.digest;
  const shown = digest ? digest.slice(0, digest.indexOf(':') + 17) : 'checksums';
  return [shown, entry.download.url];
}

/** `image build` and `image pull`: the same cache, filled from a recipe or from a download. */
function fill(verb: 'build' | 'pull', summary: string, example: string): Command {
  return command(
    {
      name: `image ${verb}`,
      usage: [[`image ${verb} NAME... [--force]`, summary]],
      options: { force: { type: 'boolean', help: `${verb} again even when the image is in the cache` } },
      args: { ...NAMES, missing: `name the image, e.g. guestlab image ${verb} ${example} (see guestlab image ls)` },
      check: ({ positionals }) => imageNames(positionals),
    },
    async ({ values, positionals }) => {
      // Every name resolves, and is of the right kind, before the first image is built or pulled.
      const entries = await Promise.all(positionals.map((name) => resolveImage(name)));
      const wrong = entries.find((entry) => (entry.kind === 'recipe') !== (verb === 'build'));
      if (wrong) {
        throw new UsageError(wrong.kind === 'recipe'
          ? `image pull: ${wrong.name} is built from a recipe (${wrong.recipe.source}), not downloaded: use guestlab image build ${wrong.name}`
          : `image build: ${wrong.name} is downloaded (${wrong.download.url}), not built: use guestlab image pull ${wrong.name}`);
      }
      for (const entry of entries) {
        const options = { force: values.force };
        const got = entry.kind === 'recipe' ? await ensureImageFromRecipe(entry.recipe, options) : await ensureDownloadedImage(entry.download, options);
        const done = verb === 'build' ? `built in ${(got.buildMs / 1000).toFixed(1)}s` : `pulled and checked in ${(got.buildMs / 1000).toFixed(1)}s`;
        console.log(`${entry.name}: ${got.built ? done : 'already in the cache'} at ${got.dir}`);
      }
      return 0;
    },
  );
}

const build = fill('build', 'build images from their recipes (images/NAME.yaml) into the cache', 'debian-12');
const pull = fill('pull', 'download images of download entries, verify their digests, cache them', 'ubuntu-24.04');

const key = command(
  {
    name: 'image key',
    usage: [['image key NAME... [--json]', 'print a cache key for CI that changes exactly when one of the\nimages would be built differently']],
    options: { json: { type: 'boolean', help: 'the key with the arch and each image\'s recipe hash, as JSON' } },
    args: { ...NAMES, missing: 'name at least one image, e.g. guestlab image key debian-12' },
    check: ({ positionals }) => imageNames(positionals),
  },
  async ({ values, positionals }) => {
    const { key: cacheKey, images } = await imageCacheKey(positionals);
    if (values.json) console.log(JSON.stringify({ key: cacheKey, arch: process.arch, images }, null, 2));
    else console.log(cacheKey);
    return 0;
  },
);

const exportCommand = command(
  {
    name: 'image export',
    usage: [['image export NAME... --output FILE', 'write built images (with their digests) into one tar file']],
    options: { output: { type: 'string', value: 'FILE', example: 'images.tar', help: 'the tar file to write (replaced whole, never left half-written)' } },
    args: { ...NAMES, missing: 'name the images to export, e.g. guestlab image export debian-12 --output images.tar' },
    check({ values, positionals }) {
      if (values.output === undefined) return 'say where to write the archive, e.g. guestlab image export debian-12 --output images.tar';
      return imageNames(positionals);
    },
  },
  async ({ values, positionals }) => {
    await exportImages(positionals, values.output!);
    return 0;
  },
);

const importCommand = command(
  {
    name: 'image import',
    usage: [['image import FILE', 'unpack an exported file into the cache, verifying every digest']],
    options: {},
    args: { min: 1, max: 1, what: 'one FILE', missing: 'name one archive written by guestlab image export, e.g. guestlab image import images.tar' },
  },
  async ({ positionals }) => {
    const { images } = await importImages(positionals[0]!);
    for (const i of images) console.log(`${i.name}: ${i.outcome}${i.current ? '' : ' (its recipe has changed since; this build will not be used)'} at ${i.dir}`);
    return 0;
  },
);

const verify = command(
  {
    name: 'image verify',
    usage: [['image verify [NAME...]', 'check cached images against the digests recorded at build/import']],
    options: {},
    args: { min: 0, max: Infinity, what: 'image names, or none for every cached image' },
    check: ({ positionals }) => imageNames(positionals),
  },
  async ({ positionals }) => {
    const results = await verifyCachedImages(positionals);
    if (results.length === 0) console.log('no images in the cache');
    for (const r of results) console.log(`${r.problems.length ? 'FAIL' : ' ok '} ${path.basename(r.dir)} (${(r.ms / 1000).toFixed(1)}s)${r.problems.map((p) => `\n       ${p}`).join('')}`);
    return results.some((r) => r.problems.length) ? 1 : 0;
  },
);

const rm = command(
  {
    name: 'image rm',
    usage: [['image rm NAME...', 'remove every cached build of the named images']],
    options: {},
    args: { ...NAMES, missing: 'name the images to remove, e.g. guestlab image rm debian-12' },
    check: ({ positionals }) => imageNames(positionals),
  },
  async ({ positionals }) => {
    const removed = await removeImages(positionals);
    console.log(removed.length ? removed.map((dir) => `removed ${dir}`).join('\n') : `nothing cached for ${positionals.join(', ')}`);
    return 0;
  },
);

/** The subcommands of `guestlab image`, in the order `guestlab help` shows them. */
export const image: Command[] = [ls, build, pull, key, exportCommand, importCommand, verify, rm];
