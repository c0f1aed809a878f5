// Checkpoints on a real guest: restore brings back disk, memory and services as they were, with
// the clock set to now and SSH reconnected; diffSince lists exactly what changed.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startGuest, type StartedGuest } from '../../src/index.ts';

let vm: StartedGuest;
beforeAll(async () => {
  vm = await startGuest({ image: 'debian-12', name: 'checkpoint' });
});
afterAll(async () => {
  await vm?.stop();
});

test('restore returns to the checkpoint: files, processes, clock; the guest stays usable', async () => {
  const bootId = await vm.succeed(['cat', '/proc/sys/kernel/random/boot_id']);
  const saved = await vm.checkpoint('clean');
  expect(saved).toMatchObject({ label: 'clean', saveMs: expect.any(Number) });
  expect(saved.vmStateBytes).toBeGreaterThan(10 * 1024 ** 2);
  expect(vm.checkpoints().map((c) => c.label)).toEqual(['clean']);

  await vm.writeFile('/opt/marker', 'after the checkpoint\n', { sudo: true });
  await vm.succeed(['systemd-run', '--unit=sleeper', 'sleep', '1000'], { sudo: true });
  await vm.succeed(['systemctl', 'enable', 'e2scrub_reap.service'], { sudo: true }).catch(() => undefined);
  // Let the host clock run ahead of the checkpoint's.
  await new Promise((resolve) => setTimeout(resolve, 5000));

  const timings = await vm.restore('clean');
  console.log(`checkpoint saved in ${saved.saveMs} ms (${((saved.vmStateBytes ?? 0) / 1024 ** 2).toFixed(0)} MiB of memory state); restored in ${timings.totalMs} ms (loadvm ${timings.loadMs} ms, reconnect and clock ${timings.reconnectMs} ms)`);
  expect((await vm.exec(['test', '-e', '/opt/marker'])).exitCode).toBe(1);
  expect((await vm.exec(['systemctl', 'is-active', 'sleeper.service'])).stdout.trim()).not.toBe('active');
  // The same boot, resumed: not a reboot.
  expect(await vm.succeed(['cat', '/proc/sys/kernel/random/boot_id'])).toBe(bootId);
  const guestNow = Number(await vm.succeed(['date', '+%s']));
  expect(Math.abs(guestNow - Date.now() / 1000)).toBeLessThan(5);

  // Repeatable: the checkpoint stays.
  await vm.writeFile('/opt/second', 'x', { sudo: true });
  await vm.restore('clean');
  expect((await vm.exec(['test', '-e', '/opt/second'])).exitCode).toBe(1);
});

test('diffSince lists exactly the files, packages and enabled units that changed', async () => {
  await vm.checkpoint('base');
  await vm.writeFile('/etc/motd', 'changed\n', { sudo: true });
  await vm.writeFile('/opt/app/config.ini', '[app]\n', { sudo: true, mode: 0o640 });
  await vm.succeed(['systemctl', 'disable', 'e2scrub_all.timer'], { sudo: true });
  const diff = await vm.diffSince('base');
  expect(diff.files.added).toEqual(['/opt/app', '/opt/app/config.ini']);
  expect(diff.files.removed).toEqual(['/etc/systemd/system/timers.target.wants/e2scrub_all.timer']);
  expect(diff.files.changed).toEqual([{ path: '/etc/motd', what: ['content'] }]);
  expect(diff.units).toEqual({ enabled: [], disabled: ['e2scrub_all.timer'] });
  expect(diff.packages).toEqual({ installed: [], removed: [], changed: [] });
});

test('bad labels and unknown checkpoints are refused with the fix', async () => {
  await expect(vm.restore('nosuch')).rejects.toThrow(/has no checkpoint "nosuch" \(has: clean, base\); take one with guest\.checkpoint\("nosuch"\)/);
  await expect(vm.checkpoint('two words')).rejects.toThrow(/Invalid `label`/);
  await expect(vm.checkpoint('42')).rejects.toThrow(/all digits/);
  await expect(vm.diffSince('nosuch')).rejects.toThrow(/no inventory for checkpoint "nosuch"/);
});
