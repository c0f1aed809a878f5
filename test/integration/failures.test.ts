// Guests that fail after boot started: nothing may outlive them, and the error must say why.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { CloudInitError, startGuest } from 'guestlab';
import { describe, expect, test } from 'vitest';
import { processesMentioning, usePrivateInstancesDir } from './helpers.ts';

describe('guest failures', () => {
  const instances = usePrivateInstancesDir();

  test('a cloud-init failure is reported with its detail, and the guest is stopped', async () => {
    const error = await startGuest({
      image: 'debian-12',
      cloudConfig: { runcmd: [['sh', '-c', 'echo guestlab-runcmd-failed >&2; exit 3']] },
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CloudInitError);
    expect((error as Error).message).toMatch(/cloud-init finished with status "error"/);
    expect((error as Error).message).toContain('guestlab-runcmd-failed');
    expect(await fs.readdir(instances())).toEqual([]);
    expect(await processesMentioning(instances())).toEqual([]);
  });

  // A full host disk pauses QEMU (werror=enospc); guestlab must turn that into an error.
  test.runIf(process.getuid?.() === 0)('a guest whose host disk fills up fails with DiskFullError instead of hanging', async () => {
    const small = path.join(instances(), 'small-disk');
    await fs.mkdir(small, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=400m,mode=0700', 'guestlab-test', small]);
    process.env.GUESTLAB_INSTANCES_DIR = small;
    process.env.GUESTLAB_MIN_FREE_DISK_MIB = '100';
    try {
      const guest = await startGuest({ image: 'debian-12' });
      const filling = await guest.exec(['dd', 'if=/dev/zero', 'of=/var/tmp/fill', 'bs=1M', 'count=600', 'oflag=direct'], { sudo: true }).catch((e: unknown) => e);
      expect(filling).toMatchObject({ name: 'DiskFullError', code: 'ERR_DISK_FULL' });
      expect((filling as Error).message).toMatch(/host disk holding guest .* is full; QEMU paused the guest/);
      await expect(guest.exec(['true'])).rejects.toMatchObject({ code: 'ERR_DISK_FULL' });
      await guest.stop();
      expect(await fs.readdir(small)).toEqual([]);
    } finally {
      delete process.env.GUESTLAB_MIN_FREE_DISK_MIB;
      execFileSync('umount', [small]);
    }
  });

});
