// Read-only disks in a real QEMU, paused at -S with no guest OS: the command line a guest gets (with
// a boot-time mount disk) is accepted, disks hot-plug onto the always-present virtio-scsi controller
// read-only, unplug without guest cooperation (DEVICE_DELETED comes at once), plug again under the
// same id, and do not stop a checkpoint; QEMU quits and its pid is gone.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { findExecutable } from '../../src/host/probe.ts';
import { createLogger } from '../../src/log.ts';
import { buildFsImage } from '../../src/mounts/fs-image.ts';
import { mountSerial } from '../../src/mounts/device.ts';
import { buildQemuArgv } from '../../src/qemu/argv.ts';
import { closeQemu } from '../../src/qemu/close.ts';
import { QemuMonitor } from '../../src/qemu/monitor.ts';
import { launchQemu, type QemuProcess } from '../../src/qemu/process.ts';

const hasQemu = (await findExecutable('qemu-system-x86_64')) !== undefined && (await findExecutable('qemu-img')) !== undefined;
const quiet = createLogger('test', () => undefined);

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!hasQemu)('read-only disks in a running QEMU', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  let qemu: QemuProcess | undefined;
  beforeEach(async () => ({ path: root, cleanup } = await dir({ unsafeCleanup: true })));
  afterEach(async () => {
    if (qemu && !qemu.hasExited) {
      qemu.kill('SIGKILL');
      await qemu.exited;
    }
    await cleanup();
  });

  test('attach, list read-only, detach, re-attach, checkpoint, quit', async () => {
    const at = (name: string) => path.join(root, name);
    await fs.mkdir(at('tree'));
    await fs.writeFile(at('tree/hello.txt'), 'hello\n');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', at('disk.qcow2'), '64M']);
    await fs.writeFile(at('seed.iso'), Buffer.alloc(65536));
    const images: string[] = [];
    for (let i = 0; i < 3; i++) images.push((await buildFsImage({ source: at('tree'), dir: root, name: mountSerial(i) })).file);

    const argv = buildQemuArgv({
      name: 'mounts', tag: 'guestlab:test', accel: 'tcg', machine: 'pc-q35-7.2', cpus: 1, memoryMiB: 128,
      disk: at('disk.qcow2'), seed: at('seed.iso'), qmpSocket: at('qmp.sock'), serialLog: at('serial.log'), sshHostPort: 0,
      scsiDisks: [{ id: 'glmnt0', file: images[0]!, serial: 'glmnt0' }],
    });
    qemu = await launchQemu([...argv, '-S'], quiet, { outputFile: at('qemu.log') });
    const monitor = await QemuMonitor.connect(at('qmp.sock'), qemu, { label: 'guest mounts', deadline: Date.now() + 30_000 });
    const mountDisks = async () => (await monitor.blockDevices()).filter((d) => d.device.startsWith('glmnt')).sort((a, b) => a.device.localeCompare(b.device));

    await monitor.attachDisk({ id: 'glmnt1', file: images[1]!, format: 'raw', serial: 'glmnt1' });
    await monitor.attachDisk({ id: 'glmnt2', file: images[2]!, format: 'raw', serial: 'glmnt2' });
    expect(await mountDisks()).toEqual([0, 1, 2].map((i) => ({ device: `glmnt${i}`, node: `glmnt${i}`, file: images[i], readOnly: true })));
    // The overlay stays writable.
    expect((await monitor.blockDevices()).find((d) => d.file === at('disk.qcow2'))?.readOnly).toBe(false);
    // A second disk under a taken id is refused, and the first one stays.
    await expect(monitor.attachDisk({ id: 'glmnt1', file: images[2]!, format: 'raw', serial: 'glmnt9' })).rejects.toThrow(/QEMU could not open read-only disk glmnt1/);

    const started = Date.now();
    await monitor.detachDisk('glmnt1', Date.now() + 5000);
    const detachMs = Date.now() - started;
    expect((await mountDisks()).map((d) => d.device)).toEqual(['glmnt0', 'glmnt2']);
    // The boot-time disk goes the same way; then its id can be used again (a remount).
    await monitor.detachDisk('glmnt0');
    await monitor.attachDisk({ id: 'glmnt0', file: images[1]!, format: 'raw', serial: 'glmnt0' });
    expect((await mountDisks()).map((d) => [d.device, d.file])).toEqual([['glmnt0', images[1]], ['glmnt2', images[2]]]);
    // Read-only disks are left out of savevm: a checkpoint of the overlay still works.
    expect((await monitor.saveSnapshot('with-mounts'))?.tag).toBe('with-mounts');

    const pid = qemu.pid;
    expect(await closeQemu(qemu, monitor, quiet)).toBe('quit');
    expect(isAlive(pid)).toBe(false);
    expect(detachMs).toBeLessThan(5000);
    console.log(`detachDisk without a guest: ${detachMs} ms`);
  }, 60_000);
});
