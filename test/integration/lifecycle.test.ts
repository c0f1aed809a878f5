// Start, stop, boot deadline, preflight: nothing may outlive a guest, whichever way it ends.
import fs from 'node:fs/promises';
import path from 'node:path';
import { BootTimeoutError, GuestStoppedError, HostRequirementError, startGuest } from 'guestlab';
import { describe, expect, test } from 'vitest';
import { alive, processesMentioning, usePrivateInstancesDir } from './helpers.ts';

describe('guest lifecycle', () => {
  const instances = usePrivateInstancesDir();

  test('stop() ends QEMU and removes the instance directory; it is idempotent', async () => {
    const guest = await startGuest({ image: 'debian-12', cpus: 1, memoryMiB: 768 });
    const { pid, instanceDir } = guest;
    expect(alive(pid)).toBe(true);
    expect((await fs.stat(instanceDir)).mode & 0o777).toBe(0o700);
    expect((await fs.stat(guest.ssh.privateKeyPath)).mode & 0o777).toBe(0o600);
    expect(path.dirname(instanceDir)).toBe(instances());
    expect(guest.timings.cloudInitDoneMs).toBeGreaterThanOrEqual(guest.timings.sshReadyMs);

    await guest.stop();
    expect(alive(pid)).toBe(false);
    await expect(fs.stat(instanceDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await processesMentioning(instanceDir)).toEqual([]);
    await expect(guest.stop()).resolves.toBeUndefined();
    await expect(guest.exec(['true'])).rejects.toBeInstanceOf(GuestStoppedError);
  });

  test('a boot that misses its deadline is stopped, and the error carries the serial console', async () => {
    // A cold boot: restored from the template cache, the guest would be up within the deadline.
    const error = await startGuest({ image: 'debian-12', bootTimeoutMs: 4000 }, { template: false }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BootTimeoutError);
    expect((error as Error).message).toMatch(/did not answer SSH within 4000 ms/);
    expect((error as Error).message).toMatch(/serial console, last 50 lines ---\n[\s\S]*Linux version|serial console, last 50 lines ---\n[\s\S]*\S/);
    expect(await fs.readdir(instances())).toEqual([]);
    expect(await processesMentioning(instances())).toEqual([]);
  });

  test('await using stops the guest at the end of the block', async () => {
    let pid = 0;
    {
      await using guest = await startGuest({ image: 'debian-12' });
      pid = guest.pid;
      expect(await guest.succeed(['echo', 'inside'])).toBe('inside\n');
    }
    expect(alive(pid)).toBe(false);
    expect(await fs.readdir(instances())).toEqual([]);
  });

  test('QEMU killed under a running command: the command fails at once, naming the exit, and stop() leaves nothing', async () => {
    const guest = await startGuest({ image: 'debian-12' });
    const running = guest.exec(['sleep', '60']).then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    const killedAt = Date.now();
    process.kill(guest.pid, 'SIGKILL');
    const error = await running;
    console.log(`command failed ${Date.now() - killedAt} ms after QEMU was killed: ${error?.message.split('\n')[0]}`);
    expect(error).toBeInstanceOf(Error);
    expect(error!.message).toMatch(/^QEMU was killed by SIGKILL while guest \S+ ran sleep 60:/);
    expect((error!.cause as Error).message).toMatch(/agent channel closed/);
    await expect(guest.exec(['true'])).rejects.toThrow(/^QEMU was killed by SIGKILL earlier: guest \S+ is gone \(stop\(\) it to clean up\)/);
    await guest.stop();
    expect(await fs.readdir(instances())).toEqual([]);
    expect(await processesMentioning(instances())).toEqual([]);
  });

  test('a host disk below the free-space minimum is refused before boot', async () => {
    process.env.GUESTLAB_MIN_FREE_DISK_MIB = String(1024 ** 3);
    try {
      const error = await startGuest({ image: 'debian-12' }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HostRequirementError);
      expect((error as Error).message).toMatch(/^Only \d+ MiB free at .*, below the 1073741824 MiB a guest's overlay may need\. Free disk space there/);
    } finally {
      delete process.env.GUESTLAB_MIN_FREE_DISK_MIB;
    }
    expect(await fs.readdir(instances())).toEqual([]);
  });

  test('bad input fails before anything starts', async () => {
    await expect(startGuest({ image: 'no-such-image' })).rejects.toThrow(/Unknown image "no-such-image". Known images: .*debian-12/);
    await expect(startGuest({ image: 'debian-12', memoryMiB: -1 })).rejects.toThrow('Expected `memoryMiB` to be a positive integer, got -1 (number)');
    await expect(startGuest({ image: 'debian-12', cloudConfig: { ssh_keys: {} } })).rejects.toThrow(/cloudConfig.ssh_keys/);
    expect(await fs.readdir(instances())).toEqual([]);
  });
});
