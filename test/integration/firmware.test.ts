// Firmware boot of a disk that carries its own bootloader (debian-12-firmware: GPT, an EFI system
// partition with the kernel, syslinux and systemd-boot, then the root filesystem).
// 1. As a download entry: the disk served by a local HTTP server, named in a user's YAML entry,
//    pulled, verified and imported, then booted through SeaBIOS; it answers over SSH, and through
//    the guest agent that cloud-init installed (a download entry has no `agent` feature).
// 2. Under UEFI (OVMF): a template boots through systemd-boot, and a clone of it, with its own
//    copy of the variable store, answers too.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createTemplate, ensureImage, startGuest } from '../../src/index.ts';
import { removeImages } from '../../src/images/archive.ts';
import { usePrivateInstancesDir } from './helpers.ts';

const instancesDir = usePrivateInstancesDir();
let server: http.Server;
let base = '';
let sha256 = '';
const requests: string[] = [];
let entries: { path: string; cleanup: () => Promise<void> };
const saved = { ...process.env };

beforeAll(async () => {
  const disk = (await ensureImage('debian-12-firmware')).disk;
  const { size } = await fs.stat(disk);
  const hash = createHash('sha256');
  await pipeline(createReadStream(disk), hash);
  sha256 = hash.digest('hex');
  server = http.createServer((req, res) => {
    requests.push(req.url!);
    if (req.url === '/images/SHA256SUMS') return res.writeHead(200).end(`${sha256}  debian-12-firmware.qcow2\n`);
    if (req.url !== '/images/debian-12-firmware.qcow2') return res.writeHead(404).end();
    res.writeHead(200, { 'content-length': String(size) });
    createReadStream(disk).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  // The user's own catalog entry, in a directory searched before the shipped ones.
  entries = await dir({ unsafeCleanup: true, prefix: 'gl-entries-' });
  await fs.writeFile(
    path.join(entries.path, 'served-firmware.yaml'),
    `description: debian-12-firmware, served by the test\nrelease: Debian 12 (served)\nurl: ${base}/images/debian-12-firmware.qcow2\nchecksums: ${base}/images/SHA256SUMS\n`,
  );
  process.env.GUESTLAB_IMAGES_PATH = entries.path;
});
afterAll(async () => {
  await removeImages(['served-firmware']).catch(() => undefined);
  process.env = { ...saved };
  await entries?.cleanup();
  await new Promise((resolve) => server?.close(resolve));
});

test('a downloaded disk with its own bootloader boots through SeaBIOS and answers over SSH and through the agent cloud-init installed', async () => {
  const pulled = await ensureImage('served-firmware');
  expect(pulled).toMatchObject({ source: 'download', boot: 'firmware', firmware: 'bios', kernel: undefined });
  expect(requests).toEqual(['/images/SHA256SUMS', '/images/debian-12-firmware.qcow2']);

  const guest = await startGuest({ image: 'served-firmware', cpus: 1 });
  try {
    console.log(`served-firmware (SeaBIOS, syslinux): SSH after ${guest.timings.sshReadyMs} ms, ready after ${guest.timings.cloudInitDoneMs} ms`);
    // syslinux started the kernel from the ESP (it adds BOOT_IMAGE=; QEMU's -kernel does not).
    expect(await guest.succeed(['cat', '/proc/cmdline'])).toMatch(/^BOOT_IMAGE=\/vmlinuz root=LABEL=root ro console=ttyS0/);
    expect((await guest.exec(['test', '-d', '/sys/firmware/efi'])).exitCode).toBe(1);
    expect(await guest.succeed(['findmnt', '-n', '-o', 'SOURCE', '/'])).toBe('/dev/vda2\n');
    expect(await guest.succeed(['lsblk', '-n', '-o', 'PARTLABEL', '/dev/vda1'])).toBe('ESP\n');
    expect(await guest.succeed(['cloud-init', 'status'])).toMatch(/status: done/);
    // cloud-init installed the agent from the seed and started it; guestlab connected once cloud-init
    // was done. (This disk has an agent of its own already: cloud-init replaced it with the host's.)
    expect((await guest.exec(['true'], { via: 'agent' })).exitCode).toBe(0);
    expect(await guest.succeed(['systemctl', 'is-enabled', 'guestlab-agent.service'], { via: 'agent' })).toBe('enabled\n');
    expect((await guest.exec(['test', '-e', '/run/guestlab/guestlab-agent'])).exitCode).toBe(1);
  } finally {
    await guest.stop();
  }
  expect(await fs.readdir(instancesDir())).toEqual([]);
});

test('UEFI: OVMF boots the disk through systemd-boot; a clone of that guest answers too', async () => {
  const template = await createTemplate({ image: 'debian-12-firmware', firmware: 'uefi', name: 'uefi-tpl', cpus: 1 });
  try {
    console.log(`debian-12-firmware (OVMF, systemd-boot): template ready after ${template.timings.boot.cloudInitDoneMs} ms, saved in ${template.timings.saveMs} ms`);
    const clone = await template.clone();
    try {
      console.log(`UEFI clone: first command after ${clone.timings.cloudInitDoneMs} ms (restore ${clone.timings.restoreMs} ms)`);
      expect(await clone.succeed(['cat', '/sys/firmware/efi/fw_platform_size'])).toBe('64\n');
      expect(await clone.succeed(['cat', '/proc/cmdline'])).toMatch(/root=LABEL=root ro console=ttyS0/);
      expect(await clone.succeed(['findmnt', '-n', '-o', 'SOURCE', '/'])).toBe('/dev/vda2\n');
      // The clone runs on a variable store of its own, copied from the template's.
      const vars = path.join(clone.instanceDir, 'efivars.qcow2');
      expect((await fs.stat(vars)).mode & 0o777).toBe(0o600);
      // Checkpoints take the variable store along with the disk (it is qcow2, as savevm needs).
      await clone.checkpoint('before', { inventory: false });
      await clone.writeFile('/var/tmp/after', 'x\n');
      await clone.restore('before');
      expect((await clone.exec(['test', '-e', '/var/tmp/after'])).exitCode).toBe(1);
      expect(await clone.succeed(['cat', '/sys/firmware/efi/fw_platform_size'])).toBe('64\n');
    } finally {
      await clone.stop();
    }
  } finally {
    await template.release();
  }
  expect(await fs.readdir(instancesDir())).toEqual([]);
});
