// Guests that fail after boot started: nothing may outlive them, and the error must say why.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { CloudInitError, GuestDeadEndError, startGuest } from 'guestlab';
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

  // Both boots at once (one vCPU each): each pays for one boot's CI time, not two.
  test('a boot that reaches a dead end fails at once with the guest\'s evidence: sshd refusing its config, a kernel panic', async () => {
    const started = performance.now();
    const [brokenSshd, panicked] = await Promise.all([
      // Written by cloud-init's init stage, before sshd starts: sshd -t refuses the option.
      startGuest({
        image: 'debian-12',
        name: 'broken-sshd',
        cloudConfig: { write_files: [{ path: '/etc/ssh/sshd_config.d/99-broken.conf', content: 'NoSuchOption yes\n' }] },
      }).catch((e: unknown) => e),
      startGuest({ image: 'debian-12', name: 'panics', cloudConfig: { bootcmd: ['echo c > /proc/sysrq-trigger'] } }).catch((e: unknown) => e),
    ]);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    // The default boot timeout under TCG is ten minutes: a dead-end error means the wait was not served.
    expect(brokenSshd, seconds).toBeInstanceOf(GuestDeadEndError);
    expect(brokenSshd).toMatchObject({ code: 'ERR_GUEST_DEAD_END', kind: 'unit-failed', unit: 'ssh.service', phase: 'ssh-banner' });
    const sshdError = brokenSshd as GuestDeadEndError;
    expect(sshdError.evidence).toMatch(/Active: failed/);
    expect(sshdError.evidence).toMatch(/99-broken\.conf: line 1: Bad configuration option: NoSuchOption/);
    expect(sshdError.message).toMatch(/^Guest broken-sshd reports that ssh\.service failed for good during boot/);
    expect(panicked, seconds).toBeInstanceOf(GuestDeadEndError);
    expect(panicked).toMatchObject({ kind: 'panic' });
    expect((panicked as GuestDeadEndError).evidence).toMatch(/Kernel panic - not syncing: sysrq triggered crash/);
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
