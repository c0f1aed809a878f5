// Templates from cache to cache without a guest: a fake template (small files, a real qcow2 overlay
// on a fake image) exported, then imported into another cache whose image lives elsewhere.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { guestlabPaths } from '../../src/config.ts';
import { createOverlay, diskInfo } from '../../src/disk/qemu-img.ts';
import { createInstanceDir } from '../../src/guest/instance.ts';
import { exportTemplates, importTemplates } from '../../src/guest/template-archive.ts';
import { TemplateCache } from '../../src/guest/template-cache.ts';
import { templateCacheKey, TEMPLATE_FORMAT, type TemplateKeyInputs } from '../../src/guest/template-key.ts';
import { createLogger } from '../../src/log.ts';
import { digestFiles } from '../../src/images/digest.ts';
import { run } from '../../src/util/run.ts';

const HASH = '0123456789abcdef'.repeat(4);
const inputs: TemplateKeyInputs = {
  format: TEMPLATE_FORMAT,
  guestlab: '0.1.0',
  qemu: { version: '7.2.0', digest: 'a'.repeat(32) },
  machine: 'pc-q35-7.2',
  accel: 'tcg',
  cpu: 'Westmere-v1',
  image: { name: 'tiny', hash: HASH },
  agent: 'c'.repeat(16),
  spec: { image: 'tiny', cpus: 1, memoryMiB: 512, cloudConfig: undefined, accel: 'auto', user: 'guestlab', firmware: undefined },
};
const key = templateCacheKey(inputs);
const saved = { ...process.env };
let root: string;
const log = createLogger('test', () => undefined);

/** A cache at root/NAME with the fake image in it; returns the image's directory. */
async function useCache(name: string): Promise<string> {
  process.env.GUESTLAB_CACHE_DIR = path.join(root, name);
  const imageDir = path.join(guestlabPaths().imagesDir, `tiny-${HASH.slice(0, 16)}`);
  await fs.mkdir(imageDir, { recursive: true });
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(imageDir, 'disk.qcow2'), '16M']);
  await fs.writeFile(path.join(imageDir, 'vmlinuz'), 'kernel');
  await fs.writeFile(path.join(imageDir, 'initrd.img'), 'initrd');
  await fs.writeFile(path.join(imageDir, 'manifest.json'), JSON.stringify({ name: 'tiny', recipeHash: HASH }));
  return imageDir;
}

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-template-archive-'));
});
afterEach(async () => {
  process.env = { ...saved };
  await fs.rm(root, { recursive: true, force: true });
});

async function fakeTemplate(imageDir: string): Promise<void> {
  const cache = new TemplateCache(log);
  await cache.getOrBuild(key, inputs, async () => {
    const instance = await createInstanceDir(path.join(root, 'instances'), 'tpl');
    await fs.writeFile(instance.file('state'), 'state');
    await fs.writeFile(instance.file('memory'), Buffer.alloc(1 << 20));
    await createOverlay(path.join(imageDir, 'disk.qcow2'), instance.file('overlay'));
    await fs.writeFile(instance.file('clientKey'), 'PRIVATE KEY', { mode: 0o600 });
    return {
      instance,
      manifest: {
        imageDir,
        bootTimeoutMs: 600_000,
        timings: { bootMs: 1, saveMs: 1, stateBytes: 5 },
        base: {
          hostPublicKey: 'ssh-ed25519 AAAA',
          hostname: 'tpl',
          kernel: { kernel: path.join(imageDir, 'vmlinuz'), initrd: path.join(imageDir, 'initrd.img'), cmdline: 'console=ttyS0' },
          seed: undefined,
          fwCfg: undefined,
          cloudInit: 'skipped',
          uefi: undefined,
          resumeWaiter: false,
        },
      },
    };
  }, undefined);
}

test('a template exported from one cache is imported into another, standing on that cache\'s image', async () => {
  await fakeTemplate(await useCache('a'));
  const archive = path.join(root, 'templates.tar');
  const exported = await exportTemplates([], archive, log);
  expect(exported.keys).toEqual([key]);

  // Another cache without the image: refused, with the fix.
  process.env.GUESTLAB_CACHE_DIR = path.join(root, 'b');
  await expect(importTemplates(archive, log)).rejects.toThrow(/stands on image tiny \(0123456789abcdef\), which is not in .*; import the images first \(guestlab image import\)/);

  const imageB = await useCache('b');
  const { templates } = await importTemplates(archive, log);
  expect(templates).toEqual([{ key, outcome: 'imported' }]);
  const cache = new TemplateCache(log);
  const entry = await cache.lookup(key, inputs);
  expect(entry).toBeDefined();
  expect(entry!.base.kernel?.kernel).toBe(path.join(imageB, 'vmlinuz'));
  expect((await diskInfo(path.join(entry!.dir, 'disk.qcow2'))).externalFile).toBe(path.join(imageB, 'disk.qcow2'));
  expect((await fs.stat(entry!.dir)).mode & 0o777).toBe(0o700);
  expect(await importTemplates(archive, log)).toMatchObject({ templates: [{ key, outcome: 'present' }] });
});

/** A template made in cache "a", exported, and the archive unpacked: the directory it went to. */
async function exportedAndUnpacked(): Promise<string> {
  await fakeTemplate(await useCache('a'));
  const archive = path.join(root, 'templates.tar');
  await exportTemplates([key], archive, log);
  const unpacked = path.join(root, 'unpacked');
  await fs.mkdir(unpacked);
  await run('tar', ['-x', '-f', archive, '-C', unpacked]);
  return unpacked;
}

test('an archive with a damaged file or a foreign member is refused, and nothing enters the cache', async () => {
  // Damage the state inside the archive: unpack, change, pack again with the same index.
  const unpacked = await exportedAndUnpacked();
  await fs.chmod(path.join(unpacked, key, 'vmstate'), 0o600);
  await fs.writeFile(path.join(unpacked, key, 'vmstate'), 'other');
  const damaged = path.join(root, 'damaged.tar');
  await run('tar', ['-c', '-f', damaged, '-C', unpacked, 'guestlab-templates.json', key]);
  await useCache('b');
  await expect(importTemplates(damaged, log)).rejects.toThrow(/does not match its digests/);
  await fs.mkdir(path.join(unpacked, 'etc'));
  await fs.writeFile(path.join(unpacked, 'etc', 'passwd'), 'x');
  const evil = path.join(root, 'evil.tar');
  await run('tar', ['-c', '-f', evil, '-C', unpacked, 'guestlab-templates.json', 'etc/passwd']);
  await expect(importTemplates(evil, log)).rejects.toThrow(/has an unexpected member "etc\/passwd"/);
  expect((await fs.readdir(new TemplateCache(log).dir)).filter((name) => !name.startsWith('.'))).toEqual([]);
});

test('an archive whose manifest points QEMU at a host file is refused, though its digests match', async () => {
  // A crafted archive: its manifest names /etc/hostname as the guest's initrd, its index digests agree.
  const unpacked = await exportedAndUnpacked();
  const manifestFile = path.join(unpacked, key, 'manifest.json');
  const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8'));
  manifest.base.kernel.initrd = '/etc/hostname';
  await fs.chmod(manifestFile, 0o600);
  await fs.writeFile(manifestFile, JSON.stringify(manifest));
  const indexFile = path.join(unpacked, 'guestlab-templates.json');
  const index = JSON.parse(await fs.readFile(indexFile, 'utf8'));
  const files = Object.fromEntries(Object.keys(index.templates[0].files).map((name: string) => [name, name]));
  index.templates[0].files = await digestFiles(path.join(unpacked, key), files);
  await fs.writeFile(indexFile, JSON.stringify(index));
  const crafted = path.join(root, 'crafted.tar');
  await run('tar', ['-c', '-f', crafted, '-C', unpacked, 'guestlab-templates.json', key]);
  await useCache('b');
  await expect(importTemplates(crafted, log)).rejects.toThrow(/template import: template [0-9a-f]{32} in .*crafted\.tar is refused: its kernel or initrd is \/etc\/hostname, outside its image/);
  expect((await fs.readdir(new TemplateCache(log).dir)).filter((name) => !name.startsWith('.'))).toEqual([]);
});
