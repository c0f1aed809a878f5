// The CI side of the image cache without building anything: a small fake image (an empty qcow2 with
// random bytes after it as its disk, random kernel and initrd) under a throwaway recipe, exported,
// imported, damaged, and made to point at a host file.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { guestlabPaths } from '../../src/config.ts';
import { assessCi, type CiFacts, type DoctorReport } from '../../src/host/doctor.ts';
import { exportImages, imageCacheKey, importImages, listCachedImages, removeImages, verifyCachedImages } from '../../src/images/archive.ts';
import { DIGESTED_FILES, ensureImage, IMAGE_FILES, imageDirName, readManifest, type ImageManifest } from '../../src/images/builder.ts';
import { resolveRecipe } from '../../src/images/catalog.ts';
import { digestFiles } from '../../src/images/digest.ts';
import { recipeHash } from '../../src/images/recipe.ts';
import { createLogger } from '../../src/log.ts';
import { run } from '../../src/util/run.ts';

const RECIPE = `description: a fake image for archive tests
suite: bookworm
kernel: linux-image-cloud-amd64
packages: [openssh-server]
`;

const saved = { ...process.env };
let root: string;
let lines: string[];
const log = createLogger('test', (line) => lines.push(line));

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-archive-'));
  await fs.mkdir(path.join(root, 'recipes'));
  await fs.writeFile(path.join(root, 'recipes/tiny.yaml'), RECIPE);
  process.env.GUESTLAB_IMAGES_PATH = path.join(root, 'recipes');
  useCache('a');
  lines = [];
});
afterEach(async () => {
  process.env = { ...saved };
  await fs.rm(root, { recursive: true, force: true });
});

function useCache(name: string): void {
  process.env.GUESTLAB_CACHE_DIR = path.join(root, `cache-${name}`);
}

/**
 * Writes a built-looking image of the "tiny" recipe into the current cache; returns its directory.
 * `backing`: its disk names that host file as its backing file, as a crafted image would.
 */
async function fakeImage(options: { digests?: boolean; backing?: string } = {}): Promise<string> {
  const recipe = await resolveRecipe('tiny');
  const dir = path.join(guestlabPaths().imagesDir, imageDirName(recipe));
  await fs.mkdir(dir, { recursive: true });
  const disk = path.join(dir, IMAGE_FILES.disk);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', ...(options.backing ? ['-F', 'raw', '-b', options.backing] : []), disk, '64M']);
  await fs.appendFile(disk, randomBytes(2 * 1024 * 1024));
  await fs.writeFile(path.join(dir, IMAGE_FILES.kernel), randomBytes(4096));
  await fs.writeFile(path.join(dir, IMAGE_FILES.initrd), randomBytes(8192));
  const manifest: ImageManifest = {
    name: 'tiny',
    recipeHash: recipeHash(recipe),
    suite: 'bookworm',
    kernelVersion: '6.1.0-test',
    cmdline: 'root=LABEL=root ro',
    builtAt: new Date().toISOString(),
    buildMs: 123_000,
    diskBytes: (await fs.stat(disk)).size,
    ...(options.digests === false ? {} : { files: await digestFiles(dir, DIGESTED_FILES) }),
  };
  await fs.writeFile(path.join(dir, IMAGE_FILES.manifest), JSON.stringify(manifest));
  return dir;
}

async function leftovers(): Promise<string[]> {
  return (await fs.readdir(guestlabPaths().imagesDir).catch(() => [] as string[])).filter((e) => e.startsWith('.'));
}

describe('image key', () => {
  test('is the same for any order and repetition of names, and changes with the recipe', async () => {
    await fs.writeFile(path.join(root, 'recipes/other.yaml'), RECIPE.replace('openssh-server', 'openssh-server, curl'));
    const a = await imageCacheKey(['tiny', 'other']);
    expect(a.key).toMatch(new RegExp(`^guestlab-images-${process.arch}-[0-9a-f]{24}$`));
    expect((await imageCacheKey(['other', 'tiny', 'tiny'])).key).toBe(a.key);
    expect((await imageCacheKey(['tiny'])).key).not.toBe(a.key);
    await fs.writeFile(path.join(root, 'recipes/other.yaml'), RECIPE.replace('openssh-server', 'openssh-server, wget'));
    expect((await imageCacheKey(['tiny', 'other'])).key).not.toBe(a.key);
  });

  test('an unknown image is an error naming the recipe directories', async () => {
    await expect(imageCacheKey(['nosuch'])).rejects.toThrow(/Unknown image "nosuch".*recipes/s);
  });
});

describe('export and import', () => {
  test('an exported image imported into an empty cache is used without a build, byte for byte', async () => {
    const source = await fakeImage({ digests: false }); // built before digests were recorded
    const archive = path.join(root, 'images.tar');
    await exportImages(['tiny'], archive, log);

    useCache('b');
    const { images } = await importImages(archive, log);
    expect(images).toEqual([{ name: 'tiny', dir: path.join(guestlabPaths().imagesDir, path.basename(source)), outcome: 'imported', current: true }]);
    for (const file of Object.values(DIGESTED_FILES)) {
      expect(await fs.readFile(path.join(images[0]!.dir, file))).toEqual(await fs.readFile(path.join(source, file)));
      expect((await fs.stat(path.join(images[0]!.dir, file))).mode & 0o777).toBe(0o444);
    }
    expect((await readManifest(images[0]!.dir))?.files?.disk?.bytes).toBe((await fs.stat(path.join(source, IMAGE_FILES.disk))).size);
    expect(await leftovers()).toEqual([]);

    const image = await ensureImage('tiny', { log });
    expect(image).toMatchObject({ built: false, dir: images[0]!.dir });
    expect(lines.join('\n')).toMatch(/no build needed/);
    expect((await importImages(archive, log)).images[0]!.outcome).toBe('present');
  });

  test('a truncated archive fails with a clear error and leaves nothing in the cache', async () => {
    await fakeImage();
    const archive = path.join(root, 'images.tar');
    await exportImages(['tiny'], archive, log);
    const { size } = await fs.stat(archive);
    await fs.truncate(archive, Math.floor(size / 2));
    useCache('b');
    await expect(importImages(archive, log)).rejects.toThrow(/image import: .*(truncated|does not match)/s);
    expect(await listCachedImages()).toEqual([]);
    expect(await leftovers()).toEqual([]);
  });

  test('a changed byte in the archive fails the digest check and leaves nothing', async () => {
    await fakeImage();
    const archive = path.join(root, 'images.tar');
    await exportImages(['tiny'], archive, log);
    const bytes = await fs.readFile(archive);
    const at = bytes.indexOf(await fs.readFile(path.join((await listCachedImages())[0]!.dir, IMAGE_FILES.disk)).then((d) => d.subarray(0, 64)));
    bytes[at + 1000] = bytes[at + 1000]! ^ 0xff;
    await fs.writeFile(archive, bytes);
    useCache('b');
    await expect(importImages(archive, log)).rejects.toThrow(/disk\.qcow2: sha256 [0-9a-f]{64}, expected/);
    expect(await listCachedImages()).toEqual([]);
    expect(await leftovers()).toEqual([]);
  });

  test('an archive with a member outside the layout is refused before anything is unpacked', async () => {
    const evil = path.join(root, 'evil');
    await fs.mkdir(path.join(evil, 'etc'), { recursive: true });
    await fs.writeFile(path.join(evil, 'guestlab-images.json'), '{}');
    await fs.writeFile(path.join(evil, 'etc/passwd'), 'x');
    const archive = path.join(root, 'evil.tar');
    await run('tar', ['-c', '-f', archive, '-C', evil, 'guestlab-images.json', 'etc/passwd']);
    await expect(importImages(archive, log)).rejects.toThrow(/unexpected member "etc\/passwd"/);
    await expect(importImages(path.join(root, 'missing.tar'), log)).rejects.toThrow(/missing\.tar does not exist.*image export/);
    expect(await leftovers()).toEqual([]);
  });

  test('an archive whose disk names a host file as its backing file is refused, though its digests match', async () => {
    await fakeImage({ backing: '/etc/hostname' });
    const archive = path.join(root, 'images.tar');
    await exportImages(['tiny'], archive, log);
    useCache('b');
    await expect(importImages(archive, log)).rejects.toThrow(/image import: Image tiny in .*images\.tar.*refers to another file \(\/etc\/hostname\), which a guest would read/s);
    expect(await listCachedImages()).toEqual([]);
    expect(await leftovers()).toEqual([]);
  });

  test('exporting an image that is not built names the build command', async () => {
    await expect(exportImages(['tiny'], path.join(root, 'x.tar'), log)).rejects.toThrow(/tiny is not built.*guestlab image build tiny/);
  });
});

describe('a cache restored by other means', () => {
  test('is verified once before use, and a damaged file stops the start with the fix', async () => {
    const dir = await fakeImage();
    // A restore makes new files (new inodes): what the stamp remembers no longer applies.
    const copy = `${dir}.copy`;
    await fs.cp(dir, copy, { recursive: true });
    await fs.rm(dir, { recursive: true });
    await fs.rename(copy, dir);

    await ensureImage('tiny', { log });
    expect(lines.join('\n')).toMatch(/match their digests \(2 MiB checked/);
    lines = [];
    await ensureImage('tiny', { log });
    expect(lines.join('\n')).not.toMatch(/match their digests/);

    const disk = path.join(dir, IMAGE_FILES.disk);
    const bytes = await fs.readFile(disk);
    bytes[10] = bytes[10]! ^ 1;
    await fs.writeFile(disk, bytes);
    await expect(ensureImage('tiny', { log })).rejects.toThrow(/does not match the digests.*disk\.qcow2: sha256.*guestlab image rm tiny/s);

    const [result] = await verifyCachedImages(['tiny']);
    expect(result!.problems).toEqual([expect.stringMatching(/^disk\.qcow2: sha256/)]);
    expect(await removeImages(['tiny'])).toEqual([dir]);
    expect(await listCachedImages()).toEqual([]);
  });

  test('whose disk names a host file as its backing file is refused before its first use, digests or not', async () => {
    await fakeImage({ backing: '/etc/hostname' });
    const error = (await ensureImage('tiny', { log }).catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ name: 'ImageCorruptError', code: 'ERR_IMAGE_CORRUPT' });
    expect(error.message).toMatch(/its disk refers to another file \(\/etc\/hostname\).*guestlab image rm tiny/s);
  });
});

describe('doctor --ci', () => {
  const report = (usable: boolean): DoctorReport =>
    ({
      lines: [],
      problems: [],
      accel: usable ? 'kvm' : 'tcg',
      facts: { kvm: { usable, reason: usable ? '/dev/kvm works' : 'no vmx/svm' }, cores: 2, memAvailableMiB: 4000, isRoot: false, qemu: { name: 'qemu', version: '7.2' } },
    }) as unknown as DoctorReport;
  const facts: CiFacts = {
    limits: { cpus: 2, memoryMiB: 3000, source: { cpus: 'os', memory: 'MemAvailable' } },
    imagesDir: '/cache/images',
    images: [
      { name: 'debian-12', hash: 'aaaa', built: true, diskBytes: 300 * 1024 ** 2, digests: true },
      { name: 'debian-12-web', hash: 'bbbb', built: false },
    ],
  };

  test('TCG is a note, or a failure with --require-kvm', () => {
    const relaxed = assessCi(report(false), facts);
    expect(relaxed.problems).toEqual([]);
    expect(relaxed.text).toMatch(/accelerator : TCG[\s\S]*note +: KVM is not usable: no vmx\/svm[\s\S]*OK: all requirements met/);
    const strict = assessCi(report(false), facts, { requireKvm: true });
    expect(strict.problems).toEqual([expect.stringMatching(/KVM is not usable.*udev rule/)]);
    expect(assessCi(report(true), facts, { requireKvm: true }).problems).toEqual([]);
  });

  test('required images must be in the cache; the summary shows budget and cache state', () => {
    const { text, problems } = assessCi(report(true), facts, { requireImages: ['debian-12', 'debian-12-web', 'nosuch'] });
    expect(problems).toEqual([expect.stringMatching(/debian-12-web \(hash bbbb\) is not in \/cache\/images.*image import/), expect.stringMatching(/nosuch is unknown/)]);
    expect(text).toMatch(/budget +: 2 CPU \(os\), 3000 MiB/);
    expect(text).toMatch(/debian-12 +aaaa +cached, 300 MiB/);
  });

  test('on GitHub Actions problems also become ::error:: commands, one line each', () => {
    const { text } = assessCi(report(false), facts, { requireKvm: true, github: true });
    const errors = text.split('\n').filter((l) => l.startsWith('::error'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^::error title=guestlab doctor::KVM is not usable/);
  });
});
