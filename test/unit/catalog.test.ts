// The catalog: download entries are validated with file:line errors that name the fix, every
// shipped entry is well formed, a name resolves to a recipe or a download entry, and firmware boot
// shows in the QEMU command line and the bootloader configurations.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bootloaderConfigs } from '../../src/images/builder.ts';
import { downloadHash, listImageFiles, loadEntry, resolveImage, resolveRecipe } from '../../src/images/catalog.ts';
import { findChecksum } from '../../src/images/download.ts';
import { recipeHash } from '../../src/images/recipe.ts';
import { buildQemuArgv, type QemuConfig } from '../../src/qemu/argv.ts';
import { resolveSpec } from '../../src/guest/spec.ts';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-catalog-'));
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

async function entryFrom(name: string, text: string) {
  await fs.writeFile(path.join(dir, `${name}.yaml`), text);
  return resolveImage(name, [dir]);
}
const SHA = 'a'.repeat(64);

describe('download entries', () => {
  test('a URL with a checksum file, or a pinned digest; defaults: qcow2, SeaBIOS', async () => {
    const entry = await entryFrom('remote', 'url: https://example.org/img/disk.qcow2\nchecksums: https://example.org/img/SHA256SUMS\n');
    expect(entry).toMatchObject({ kind: 'download', name: 'remote' });
    if (entry.kind !== 'download') throw new Error('not a download entry');
    expect(entry.download).toMatchObject({ url: 'https://example.org/img/disk.qcow2', format: 'qcow2', firmware: 'bios', digest: undefined, release: 'remote' });
    const pinned = await entryFrom('pinned', `url: https://example.org/img/disk.raw\ndigest: sha256:${SHA}\nformat: raw\nfirmware: uefi\nrelease: Example 1\n`);
    expect(pinned.kind === 'download' && pinned.download).toMatchObject({ digest: `sha256:${SHA}`, format: 'raw', firmware: 'uefi', release: 'Example 1' });
  });

  test('a local file is relative to its YAML file and becomes a file: URL', async () => {
    const entry = await entryFrom('local', `file: disks/mine.qcow2\ndigest: sha256:${SHA}\n`);
    expect(entry.kind === 'download' && entry.download.url).toBe(pathToFileURL(path.join(dir, 'disks/mine.qcow2')).href);
  });

  test.each([
    ['no digest', 'url: https://example.org/a.qcow2\n', /remote-bad\.yaml:1: .*needs `digest` \(sha256:HEX or sha512:HEX\) or `checksums`/],
    ['a local file without digest', 'file: mine.qcow2\n', /needs `digest` for mine\.qcow2: add "digest: sha256:\$\(sha256sum mine\.qcow2/],
    ['both url and file', `url: https://example.org/a.qcow2\nfile: a.qcow2\ndigest: sha256:${SHA}\n`, /needs exactly one of `url`/],
    ['an ftp URL', `url: ftp://example.org/a.qcow2\ndigest: sha256:${SHA}\n`, /remote-bad\.yaml:1: `url` must be an http\(s\) URL, got ftp:/],
    ['credentials in the URL', `url: https://user:secret@example.org/a.qcow2\ndigest: sha256:${SHA}\n`, /must not carry credentials/],
    ['a short digest', 'url: https://example.org/a.qcow2\ndigest: sha256:abc\n', /remote-bad\.yaml:2: `digest` expected a digest like "sha256:<64 hex digits>"/],
    ['digest and checksums', `url: https://example.org/a.qcow2\ndigest: sha256:${SHA}\nchecksums: https://example.org/SUMS\n`, /`checksums` cannot be given with `digest`/],
    ['a checksum file over plain http', 'url: http://example.org/a.qcow2\nchecksums: http://example.org/SUMS\n', /remote-bad\.yaml:2: `checksums` must be an https URL, got http:\/\/example\.org\/SUMS: a checksum file read over plain http can be changed on the way/],
    ['a vmdk', `url: https://example.org/a.vmdk\ndigest: sha256:${SHA}\nformat: vmdk\n`, /`format` must be qcow2 or raw, got "vmdk" \(convert other formats with qemu-img convert -O qcow2\)/],
    ['an unknown firmware', `url: https://example.org/a.qcow2\ndigest: sha256:${SHA}\nfirmware: coreboot\n`, /`firmware` must be bios \(SeaBIOS\) or uefi \(OVMF\)/],
    ['a recipe field', `url: https://example.org/a.qcow2\ndigest: sha256:${SHA}\npackages: [vim]\n`, /`packages` is not a download entry field \(a recipe field: a file is either a recipe or a download entry, not both\)/],
  ])('%s is refused with its file and line', async (_what, text, message) => {
    await expect(entryFrom('remote-bad', text)).rejects.toThrow(message);
  });

  test('a download entry is not a recipe: building it says to pull it', async () => {
    await entryFrom('remote-only', `url: https://example.org/a.qcow2\ndigest: sha256:${SHA}\n`);
    await expect(resolveRecipe('remote-only', [dir])).rejects.toThrow('Image remote-only is downloaded (https://example.org/a.qcow2), not built from a recipe: use guestlab image pull remote-only');
  });

  test('the cache key follows source, verification and format, not description or firmware', async () => {
    const a = await entryFrom('k', `url: https://example.org/a.qcow2\ndigest: sha256:${SHA}\n`);
    const b = await entryFrom('k', `description: the same\nfirmware: uefi\nurl: https://example.org/a.qcow2\ndigest: sha256:${SHA}\n`);
    const c = await entryFrom('k', `url: https://example.org/a.qcow2\ndigest: sha256:${'b'.repeat(64)}\n`);
    if (a.kind !== 'download' || b.kind !== 'download' || c.kind !== 'download') throw new Error('not download entries');
    expect(downloadHash(a.download)).toBe(downloadHash(b.download));
    expect(downloadHash(a.download)).not.toBe(downloadHash(c.download));
  });
});

describe('the shipped catalog', () => {
  const shipped = [path.resolve('images')];
  test('has the official cloud images, each from https with a checksum file or a pinned digest', async () => {
    const downloads = [];
    for (const file of (await listImageFiles(shipped)).values()) {
      const entry = await loadEntry(file, shipped);
      if (entry.kind === 'download') downloads.push(entry.download);
    }
    expect(downloads.map((d) => d.name).sort()).toEqual(
      ['almalinux-9', 'alpine-3.23', 'debian-12-genericcloud', 'debian-13-genericcloud', 'fedora-44', 'rocky-9', 'ubuntu-22.04', 'ubuntu-24.04'],
    );
    for (const d of downloads) {
      expect(d.url, d.name).toMatch(/^https:\/\//);
      expect(d.checksums ?? d.digest, d.name).toBeDefined();
      if (d.checksums) expect(new URL(d.checksums).host, d.name).toBe(new URL(d.url).host);
    }
  });

  test('the README lists every catalog entry', async () => {
    const readme = await fs.readFile('README.md', 'utf8');
    for (const name of (await listImageFiles(shipped)).keys()) expect(readme, name).toContain(`| \`${name}\``);
  });

  test('debian-12-firmware boots through firmware; its command line is part of its hash', async () => {
    const recipe = await resolveRecipe('debian-12-firmware', shipped);
    expect(recipe.boot).toBe('firmware');
    expect(recipeHash({ ...recipe, cmdline: `${recipe.cmdline} quiet` })).not.toBe(recipeHash(recipe));
    const direct = await resolveRecipe('debian-12', shipped);
    expect(direct.boot).toBe('kernel');
    expect(recipeHash({ ...direct, cmdline: `${direct.cmdline} quiet` })).toBe(recipeHash(direct));
  });
});

test('checksum files: GNU, BSD, and a file that holds one bare digest', () => {
  expect(findChecksum(`${SHA}  other.img\n${'c'.repeat(64)} *disk.img\n`, 'disk.img')).toEqual({ algorithm: 'sha256', hex: 'c'.repeat(64) });
  expect(findChecksum(`-----BEGIN PGP SIGNED MESSAGE-----\n# disk.qcow2: 5 bytes\nSHA256 (disk.qcow2) = ${SHA}\n`, 'disk.qcow2')).toEqual({ algorithm: 'sha256', hex: SHA });
  expect(findChecksum(`${'d'.repeat(128)}\n`, 'anything.qcow2')).toEqual({ algorithm: 'sha512', hex: 'd'.repeat(128) });
  expect(findChecksum(`${SHA}  other.img\n`, 'disk.img')).toBeUndefined();
});

describe('firmware boot', () => {
  const base: QemuConfig = { name: 'g', tag: 't', accel: 'tcg', machine: 'pc-q35-7.2', cpus: 1, memoryMiB: 512, disk: '/d/disk.qcow2', seed: '/d/seed.iso', qmpSocket: '/d/qmp', serialLog: '/d/serial', sshHostPort: 0 };

  test('SeaBIOS and a bootloader on the disk: no -kernel and no pflash', () => {
    const argv = buildQemuArgv(base);
    expect(argv).not.toContain('-kernel');
    expect(argv.join(' ')).not.toContain('pflash');
  });

  test('UEFI: OVMF code read-only, the guest\'s own variable store writable, before the disks', () => {
    const argv = buildQemuArgv({ ...base, uefi: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/d/efivars,1.qcow2' } });
    expect(argv).toContain('if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd');
    expect(argv).toContain('if=pflash,format=qcow2,unit=1,file=/d/efivars,,1.qcow2');
    expect(argv.indexOf('if=pflash,format=qcow2,unit=1,file=/d/efivars,,1.qcow2')).toBeLessThan(argv.findIndex((a) => a.startsWith('if=none,id=disk0')));
  });

  test('a guest spec may ask for a firmware; anything else names the choices', () => {
    expect(resolveSpec({ image: 'debian-12' }).firmware).toBeUndefined();
    expect(resolveSpec({ image: 'debian-12', firmware: 'uefi' }).firmware).toBe('uefi');
    expect(() => resolveSpec({ image: 'debian-12', firmware: 'efi' as 'uefi' })).toThrow(/firmware/);
  });

  test('both loaders boot at once with the same command line on the serial console', () => {
    const configs = bootloaderConfigs('root=LABEL=root ro console=ttyS0');
    expect(configs['/syslinux/syslinux.cfg']).toMatch(/^TIMEOUT 0$/m);
    expect(configs['/syslinux/syslinux.cfg']).toMatch(/^ {2}APPEND root=LABEL=root ro console=ttyS0$/m);
    expect(configs['/loader/loader.conf']).toMatch(/^timeout 0$/m);
    expect(configs['/loader/entries/guestlab.conf']).toMatch(/^options root=LABEL=root ro console=ttyS0$/m);
    expect(() => bootloaderConfigs('root=LABEL=root\nDEFAULT evil')).toThrow(/line break/);
  });
});
