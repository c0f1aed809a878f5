// The template cache with real guests: the first start of a spec builds its template, the next is a
// restore with a name of its own; a changed cloudConfig makes a new template; a truncated RAM file,
// a manifest from another QEMU build and a state QEMU refuses all end in a cold boot that works.
import fs from 'node:fs/promises';
import path from 'node:path';
import { startGuest, type StartedGuest } from 'guestlab';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

// Small guests, so that two fit beside whatever else the suite runs.
const SPEC = { image: 'debian-12', cpus: 1, memoryMiB: 512 } as const;

describe('the template cache', () => {
  let cacheDir: { path: string; cleanup(): Promise<void> };
  const templatesDir = () => path.join(cacheDir.path, 'templates');
  const entries = async () => (await fs.readdir(templatesDir())).filter((name) => !name.startsWith('.'));
  const started: StartedGuest[] = [];
  const start = async (...args: Parameters<typeof startGuest>) => {
    const guest = await startGuest(...args);
    started.push(guest);
    return guest;
  };

  beforeAll(async () => {
    cacheDir = await dir({ unsafeCleanup: true, prefix: 'gl-templates-' });
    process.env.GUESTLAB_TEMPLATES_DIR = templatesDir();
  });
  afterAll(async () => {
    await Promise.all(started.map((guest) => guest.stop()));
    delete process.env.GUESTLAB_TEMPLATES_DIR;
    await cacheDir.cleanup();
  });

  test('the first start builds the template; the next restores it, renamed, with its own clock', async () => {
    const first = await start({ ...SPEC, name: 'tpl-first' });
    expect(first.timings.template).toMatchObject({ built: true, key: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const { key } = first.timings.template!;
    expect(await entries()).toEqual([key]);
    expect((await fs.stat(templatesDir())).mode & 0o777).toBe(0o700);
    await first.stop();

    const second = await start({ ...SPEC, name: 'tpl-second' });
    expect(second.timings.template).toEqual({ key, built: false });
    expect(second.clonedFrom).toBe(`template-${key.slice(0, 12)}`);
    expect(second.timings.restoreMs).toBeDefined();
    expect(await second.succeed(['hostname'])).toBe('tpl-second\n');
    expect(await second.succeed(['cat', '/etc/hostname'])).toBe('tpl-second\n');
    // The host's time, not the template's.
    const guestNow = Number((await second.succeed(['date', '+%s'])).trim());
    expect(Math.abs(guestNow - Date.now() / 1000)).toBeLessThan(30);
    // Evidence says where the guest came from.
    expect((await second.evidence()).origin).toBe(`restored from template cache ${key}`);
    // A template: false start is a cold boot beside it, and saves nothing.
    await second.stop();
    const cold = await start({ ...SPEC, name: 'tpl-cold' }, { template: false });
    expect(cold.timings.template).toBeUndefined();
    expect(cold.clonedFrom).toBeUndefined();
    expect(await entries()).toEqual([key]);
    await cold.stop();
  });

  test('a changed cloudConfig makes a new template that runs it', async () => {
    const [before] = await entries();
    const guest = await start({ ...SPEC, cloudConfig: { write_files: [{ path: '/etc/guestlab-template-test', content: 'from cloud-init\n' }] } });
    expect(guest.timings.template?.built).toBe(true);
    expect(guest.timings.template?.key).not.toBe(before);
    expect(await guest.succeed(['cat', '/etc/guestlab-template-test'])).toBe('from cloud-init\n');
    expect((await entries()).sort()).toEqual([before, guest.timings.template!.key].sort());
    await guest.stop();
  });

  test('a truncated RAM file and a manifest from another QEMU build are discarded; the guest boots cold and works', async () => {
    const probe = await start(SPEC);
    const { key } = probe.timings.template!;
    await probe.stop();
    const entry = path.join(templatesDir(), key);

    // Both at once: one cold boot for both (which of them is reported first, and each on its own,
    // is the unit tests' job: test/unit/template-cache.test.ts).
    await fs.chmod(path.join(entry, 'ram'), 0o600);
    await fs.truncate(path.join(entry, 'ram'), 4096);
    const manifestFile = path.join(entry, 'manifest.json');
    const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8')) as { inputs: { qemu: { digest: string } } };
    manifest.inputs.qemu.digest = '0'.repeat(32);
    await fs.writeFile(manifestFile, JSON.stringify(manifest));
    const rebuilt = await start(SPEC);
    expect(rebuilt.timings.template).toEqual({ key, built: true });
    expect(await rebuilt.succeed(['echo', 'ok'])).toBe('ok\n');
    await rebuilt.stop();
    // What was built again is whole: the next start restores it.
    const restored = await start(SPEC);
    expect(restored.timings.template).toEqual({ key, built: false });
    await restored.stop();
  });

  test('a saved state QEMU refuses is discarded after the failed restore, and the guest boots cold', async () => {
    const probe = await start(SPEC);
    const { key } = probe.timings.template!;
    await probe.stop();
    const state = path.join(templatesDir(), key, 'vmstate');
    // Same size, other bytes: only QEMU can tell.
    const size = (await fs.stat(state)).size;
    await fs.chmod(state, 0o600);
    await fs.writeFile(state, Buffer.alloc(size, 0x5a));
    const guest = await start(SPEC);
    expect(guest.timings.template).toBeUndefined();
    expect(guest.clonedFrom).toBeUndefined();
    expect(await guest.succeed(['echo', 'ok'])).toBe('ok\n');
    expect(await entries()).not.toContain(key);
    await guest.stop();
  });
});
