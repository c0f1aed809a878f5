// The template cache's key and its entries: every key input makes a new key, the name does not; an
// entry that does not check out is discarded with the reason; one builder per key; LRU pruning.
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { createInstanceDir } from '../../src/guest/instance.ts';
import { resolveSpec } from '../../src/guest/spec.ts';
import { TemplateCache } from '../../src/guest/template-cache.ts';
import { canonicalJson, differingInput, notCacheable, templateCacheKey, templateKeyInputs, TEMPLATE_FORMAT, type TemplateKeyInputs } from '../../src/guest/template-key.ts';
import { createLogger } from '../../src/log.ts';
import type { BuiltImage } from '../../src/images/image-dir.ts';
import { HOTPLUG_PORTS } from '../../src/qemu/argv.ts';
import { run } from '../../src/util/run.ts';

const inputs: TemplateKeyInputs = {
  format: TEMPLATE_FORMAT,
  guestlab: '0.1.0',
  qemu: { version: '7.2.0', digest: 'a'.repeat(32) },
  machine: 'pc-q35-7.2',
  accel: 'tcg',
  cpu: 'Westmere-v1',
  image: { name: 'debian-12', hash: 'b'.repeat(16) },
  agent: 'c'.repeat(16),
  spec: { image: 'debian-12', cpus: 1, memoryMiB: 1024, cloudConfig: undefined, accel: 'auto', user: 'guestlab', firmware: undefined },
};

describe('the template key', () => {
  const changes: [string, (i: TemplateKeyInputs) => TemplateKeyInputs][] = [
    ['format', (i) => ({ ...i, format: i.format + 1 })],
    ['guestlab version', (i) => ({ ...i, guestlab: '0.2.0' })],
    ['QEMU version', (i) => ({ ...i, qemu: { ...i.qemu, version: '8.0.0' } })],
    ['QEMU build', (i) => ({ ...i, qemu: { ...i.qemu, digest: 'd'.repeat(32) } })],
    ['machine type', (i) => ({ ...i, machine: 'pc-q35-8.0' })],
    ['accelerator', (i) => ({ ...i, accel: 'kvm' })],
    ['CPU model', (i) => ({ ...i, cpu: 'host:0123' })],
    ['image digest', (i) => ({ ...i, image: { ...i.image, hash: 'e'.repeat(16) } })],
    ['agent source', (i) => ({ ...i, agent: 'f'.repeat(16) })],
    ['cpus', (i) => ({ ...i, spec: { ...i.spec, cpus: 2 } })],
    ['memory', (i) => ({ ...i, spec: { ...i.spec, memoryMiB: 2048 } })],
    ['cloudConfig', (i) => ({ ...i, spec: { ...i.spec, cloudConfig: { packages: ['nginx'] } } })],
    ['user', (i) => ({ ...i, spec: { ...i.spec, user: 'ops' } })],
    ['firmware', (i) => ({ ...i, spec: { ...i.spec, firmware: 'uefi' } })],
  ];
  test.each(changes)('changes with the %s', (_what, change) => {
    expect(templateCacheKey(change(inputs))).not.toBe(templateCacheKey(inputs));
    expect(templateCacheKey(change(inputs))).toMatch(/^[0-9a-f]{32}$/);
  });

  test('does not depend on the order of keys in the cloud-config', () => {
    const a = { ...inputs, spec: { ...inputs.spec, cloudConfig: { packages: ['x'], runcmd: [['true']] } } };
    const b = { ...inputs, spec: { ...inputs.spec, cloudConfig: { runcmd: [['true']], packages: ['x'] } } };
    expect(canonicalJson(a)).toBe(canonicalJson(b));
    expect(templateCacheKey(a)).toBe(templateCacheKey(b));
    // Arrays keep their order: runcmd's order is the guest's.
    const c = { ...inputs, spec: { ...inputs.spec, cloudConfig: { runcmd: [['b'], ['a']] } } };
    const d = { ...inputs, spec: { ...inputs.spec, cloudConfig: { runcmd: [['a'], ['b']] } } };
    expect(templateCacheKey(c)).not.toBe(templateCacheKey(d));
  });

  test('leaves out the name, the boot timeout and internet: specs that differ only there share a template', async () => {
    const image = { name: 'debian-12', hash: 'b'.repeat(16) } as BuiltImage;
    const host = { qemu: { name: 'qemu-system-x86_64', path: '/usr/bin/qemu-system-x86_64', version: '7.2.0' } };
    const web = await templateKeyInputs(resolveSpec({ image: 'debian-12', name: 'web', bootTimeoutMs: 5000, internet: false }), 'tcg', 'pc-q35-7.2', image, host);
    const db = await templateKeyInputs(resolveSpec({ image: 'debian-12', name: 'db' }), 'tcg', 'pc-q35-7.2', image, host);
    expect(templateCacheKey(web)).toBe(templateCacheKey(db));
    const bigger = await templateKeyInputs(resolveSpec({ image: 'debian-12', name: 'db', cpus: 2 }), 'tcg', 'pc-q35-7.2', image, host);
    expect(templateCacheKey(bigger)).not.toBe(templateCacheKey(db));
    expect(web.spec).not.toHaveProperty('name');
    expect(web.spec).not.toHaveProperty('bootTimeoutMs');
    expect(web.spec).not.toHaveProperty('internet');
    expect(web.cpu).toBe('Westmere-v1');
  });

  test('names the first input that differs', () => {
    expect(differingInput(inputs, inputs)).toBeUndefined();
    expect(differingInput(inputs, { ...inputs, qemu: { ...inputs.qemu, digest: '0' } })).toBe('qemu.digest');
    expect(differingInput(inputs, { ...inputs, spec: { ...inputs.spec, cloudConfig: { a: 1 } } })).toBe('spec.cloudConfig');
  });
});

test('specs on more networks than a guest has hot-plug ports, with host mounts, or asked not to, are not cached', () => {
  const spec = resolveSpec({ image: 'debian-12' });
  expect(notCacheable(spec, undefined)).toBeUndefined();
  expect(notCacheable(spec, false)).toBe('template: false');
  const on = (n: number) => ({ ...spec, networks: Array.from({ length: n }, (_, i) => ({ name: `net${i}`, address: undefined })) });
  expect(notCacheable(on(HOTPLUG_PORTS), undefined)).toBeUndefined();
  expect(notCacheable(on(HOTPLUG_PORTS + 1), undefined)).toBe(`it joins ${HOTPLUG_PORTS + 1} private networks, and a restored guest has ${HOTPLUG_PORTS} hot-plug ports for them`);
  expect(notCacheable({ ...spec, mounts: [{ host: '/x', guest: '/y' } as never] }, undefined)).toMatch(/host directories/);
  process.env.GUESTLAB_TEMPLATES = '0';
  try {
    expect(notCacheable(spec, undefined)).toBe('GUESTLAB_TEMPLATES=0');
  } finally {
    delete process.env.GUESTLAB_TEMPLATES;
  }
});

describe('cache entries', () => {
  let root: { path: string; cleanup(): Promise<void> };
  let warnings: string[];
  let cache: TemplateCache;

  const savedCacheDir = process.env.GUESTLAB_CACHE_DIR;
  let imageDir: string;
  beforeEach(async () => {
    root = await dir({ unsafeCleanup: true });
    warnings = [];
    cache = new TemplateCache(createLogger('test', (line) => warnings.push(line)), path.join(root.path, 'templates'));
    // The image the key names, in this test's own cache: a template's overlay stands on its disk.
    process.env.GUESTLAB_CACHE_DIR = path.join(root.path, 'cache');
    imageDir = path.join(root.path, 'cache', 'images', `debian-12-${'b'.repeat(16)}`);
    await fs.mkdir(imageDir, { recursive: true });
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(imageDir, 'disk.qcow2'), '64M']);
  });
  afterEach(async () => {
    if (savedCacheDir === undefined) delete process.env.GUESTLAB_CACHE_DIR;
    else process.env.GUESTLAB_CACHE_DIR = savedCacheDir;
    await root.cleanup();
  });

  /** A build that writes the files a real template has (small ones), in an instances directory. */
  const fakeBuild = (calls: { n: number }, ramBytes = 4096, instancesDir = path.join(root.path, 'instances'), backing = path.join(imageDir, 'disk.qcow2')) => async () => {
    calls.n++;
    const instance = await createInstanceDir(instancesDir, 'tpl');
    await fs.writeFile(instance.file('state'), 'state');
    await fs.writeFile(instance.file('memory'), Buffer.alloc(ramBytes, 1));
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', backing.endsWith('.qcow2') ? 'qcow2' : 'raw', '-b', backing, instance.file('overlay')]);
    await fs.writeFile(instance.file('clientKey'), 'PRIVATE KEY', { mode: 0o600 });
    await fs.writeFile(instance.file('seed'), 'seed');
    return {
      instance,
      manifest: {
        imageDir,
        bootTimeoutMs: 600_000,
        timings: { bootMs: 1, saveMs: 1, stateBytes: 5 },
        base: { hostPublicKey: 'ssh-ed25519 AAAA', hostname: 'tpl', kernel: undefined, seed: instance.file('seed'), fwCfg: undefined, cloudInit: 'ran' as const, uefi: undefined, resumeWaiter: false },
      },
    };
  };

  test('a build lands whole under its key, 0700, and a lookup finds it with its paths inside the entry', async () => {
    const key = templateCacheKey(inputs);
    const calls = { n: 0 };
    const { entry, built } = await cache.getOrBuild(key, inputs, fakeBuild(calls), undefined);
    expect(built).toBe(true);
    expect(entry.dir).toBe(path.join(cache.dir, key));
    expect((await fs.stat(cache.dir)).mode & 0o777).toBe(0o700);
    expect(entry.base.seed).toBe(path.join(entry.dir, 'cidata.iso'));
    expect(entry.base.statePath).toBe(path.join(entry.dir, 'vmstate'));
    expect(entry.base.clientPrivateKey).toBe('PRIVATE KEY');
    // Moved whole out of the instances directory; the owner record stayed behind with the process.
    expect(await fs.readdir(path.join(root.path, 'instances'))).toEqual([]);
    expect(await fs.readdir(entry.dir)).not.toContain('owner.json');
    const again = await cache.getOrBuild(key, inputs, fakeBuild(calls), undefined);
    expect(again.built).toBe(false);
    expect(calls.n).toBe(1);
  });

  test('instances on another filesystem: the template is copied in (sparse) and its instance directory removed', async () => {
    const other = await fs.mkdtemp('/dev/shm/guestlab-instances-');
    try {
      const { entry } = await cache.getOrBuild(templateCacheKey(inputs), inputs, fakeBuild({ n: 0 }, 1 << 20, other), undefined);
      expect(await fs.readdir(other)).toEqual([]);
      expect(await fs.readdir(cache.buildingDir)).toEqual([]);
      expect((await fs.stat(path.join(entry.dir, 'ram'))).size).toBe(1 << 20);
      expect(await fs.readdir(entry.dir)).not.toContain('owner.json');
    } finally {
      await fs.rm(other, { recursive: true, force: true });
    }
  });

  test('two starts of one key at once: one builds, the other waits and uses what it built', async () => {
    const key = templateCacheKey(inputs);
    const calls = { n: 0 };
    const [a, b] = await Promise.all([cache.getOrBuild(key, inputs, fakeBuild(calls), undefined), cache.getOrBuild(key, inputs, fakeBuild(calls), undefined)]);
    expect(calls.n).toBe(1);
    expect([a.built, b.built].sort()).toEqual([false, true]);
  });

  test('a truncated RAM file is discarded with the reason, and built again', async () => {
    const key = templateCacheKey(inputs);
    const calls = { n: 0 };
    const { entry } = await cache.getOrBuild(key, inputs, fakeBuild(calls), undefined);
    await fs.truncate(path.join(entry.dir, 'ram'), 100);
    expect(await cache.lookup(key, inputs)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/template [0-9a-f]{32} discarded: its file ram has 100 bytes, 4096 when it was saved \(truncated or replaced\)/);
    await expect(fs.stat(entry.dir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await cache.getOrBuild(key, inputs, fakeBuild(calls), undefined)).built).toBe(true);
  });

  test('a manifest from another QEMU build is discarded, naming the input', async () => {
    const key = templateCacheKey(inputs);
    const { entry } = await cache.getOrBuild(key, inputs, fakeBuild({ n: 0 }), undefined);
    const manifestFile = path.join(entry.dir, 'manifest.json');
    const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8'));
    manifest.inputs.qemu.digest = '0'.repeat(32);
    await fs.writeFile(manifestFile, JSON.stringify(manifest));
    expect(await cache.lookup(key, inputs)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/discarded: it was made with another qemu\.digest \("0{32}" there, "a{32}" here\)/);
  });

  test('a torn manifest is discarded', async () => {
    const key = templateCacheKey(inputs);
    const { entry } = await cache.getOrBuild(key, inputs, fakeBuild({ n: 0 }), undefined);
    await fs.writeFile(path.join(entry.dir, 'manifest.json'), '{"format":');
    expect(await cache.lookup(key, inputs)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/discarded: its manifest cannot be read/);
  });

  // A restored or imported cache could hold any manifest: whatever it points QEMU at must be the
  // template's own, its image's, or this host's OVMF.
  const tampered: [string, (manifest: Record<string, any>) => void, RegExp][] = [
    ['a seed outside the template', (m) => (m.base.seed = '/etc/hostname'), /its seed is \/etc\/hostname, outside the template/],
    ['an fw_cfg file outside the template', (m) => (m.base.fwCfg = [{ name: 'opt/x', file: '../../etc/hostname' }]), /fw_cfg entry opt\/x is \.\.\/\.\.\/etc\/hostname, outside the template/],
    ['a kernel outside its image', (m) => (m.base.kernel = { kernel: '/boot/vmlinuz', initrd: '/etc/shadow', cmdline: '' }), /kernel or initrd is \/boot\/vmlinuz, outside its image/],
    ['another image directory', (m) => (m.imageDir = '/etc'), /places its image in \/etc, not /],
    ['foreign UEFI firmware', (m) => (m.base.uefi = { code: '/etc/hostname', vars: 'efivars.qcow2' }), /UEFI firmware is \/etc\/hostname, not this host's OVMF/],
  ];
  test.each(tampered)('an entry whose manifest names %s is discarded before any restore', async (_what, tamper, reason) => {
    const key = templateCacheKey(inputs);
    const { entry } = await cache.getOrBuild(key, inputs, fakeBuild({ n: 0 }), undefined);
    const file = path.join(entry.dir, 'manifest.json');
    const manifest = JSON.parse(await fs.readFile(file, 'utf8'));
    tamper(manifest);
    await fs.writeFile(file, JSON.stringify(manifest));
    expect(await cache.lookup(key, inputs)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(reason);
  });

  test('an entry whose overlay stands on a host file, not its image, is discarded; a checked one is not checked again', async () => {
    const key = templateCacheKey(inputs);
    const { entry } = await cache.getOrBuild(key, inputs, fakeBuild({ n: 0 }), undefined);
    expect(await fs.readdir(entry.dir)).toContain('.verified');
    expect(await cache.lookup(key, inputs)).toBeDefined();
    const overlay = path.join(entry.dir, 'disk.qcow2');
    await fs.chmod(overlay, 0o600);
    await run('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'raw', '-b', '/etc/hostname', overlay]);
    expect(await cache.lookup(key, inputs)).toBeUndefined();
    expect(warnings.join('\n')).toMatch(/its disk stands on \/etc\/hostname, not its image's disk/);
  });

  test('a build that fails leaves nothing under its key, and the next start builds', async () => {
    const key = templateCacheKey(inputs);
    await expect(cache.getOrBuild(key, inputs, async () => { throw new Error('boot failed'); }, undefined)).rejects.toThrow('boot failed');
    expect(await fs.readdir(cache.dir)).toEqual([]);
    expect((await cache.getOrBuild(key, inputs, fakeBuild({ n: 0 }), undefined)).built).toBe(true);
  });

  test('pruning removes least recently used entries first, down to the cap, and lists what is left', async () => {
    const keys: string[] = [];
    for (const cpus of [1, 2, 3]) {
      const i = { ...inputs, spec: { ...inputs.spec, cpus } };
      const key = templateCacheKey(i);
      keys.push(key);
      await cache.getOrBuild(key, i, fakeBuild({ n: 0 }, 1048576), undefined);
      // Last used one minute apart, oldest first.
      const when = new Date(Date.now() - (4 - cpus) * 60_000);
      await fs.utimes(cache.entryDir(key), when, when);
    }
    // Using the oldest makes it the newest.
    await cache.lookup(keys[0]!, { ...inputs, spec: { ...inputs.spec, cpus: 1 } });
    const listed = await cache.list();
    expect(listed.map((e) => e.key)).toEqual([keys[0], keys[2], keys[1]]);
    const perEntry = listed[0]!.bytes;
    expect(perEntry).toBeGreaterThan(1048576);
    expect(await cache.prune({ maxBytes: perEntry * 2 })).toEqual([keys[1]]);
    expect(await cache.prune({ maxBytes: 0, keep: keys[0] })).toEqual([keys[2]]);
    expect((await cache.list()).map((e) => e.key)).toEqual([keys[0]]);
    expect(await cache.remove(keys[0]!)).toBe(true);
    expect(await cache.remove(keys[0]!)).toBe(false);
  });
});
