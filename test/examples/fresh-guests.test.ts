// A fresh guest for every test: with scope 'test', each test gets its own clone of a template that
// was booted once for this file, in a second or two instead of a full boot. Each test proves that
// nothing of the tests before it is left: not their files, not their processes.
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { expect, test as base } from 'vitest';

const test = base.extend<{ vm: StartedGuest }>({ vm: guestFixture('debian-basic', { scope: 'test' }) });

const seen = { instanceIds: new Set<string>(), bootIds: new Set<string>(), templates: new Set<string>() };

for (let i = 1; i <= 20; i++) {
  test(`test ${i} gets a fresh guest`, async ({ vm }) => {
    // What the fixture's cloud-config did is there: the template ran it once for every clone.
    expect((await vm.exec(['test', '-f', '/var/lib/guestlab-example-ran'])).exitCode).toBe(0);
    // No marker from an earlier test, on disk or in memory, and no process one of them started.
    expect(await vm.succeed(['sh', '-c', 'ls /var/tmp/marker-* /dev/shm/marker-* 2>/dev/null || true'])).toBe('');
    expect((await vm.exec(['pgrep', '-f', 'sleep 4242'])).exitCode).toBe(1);
    await vm.writeFile(`/var/tmp/marker-${i}`, `test ${i}\n`);
    await vm.succeed(['sh', '-c', `echo ${i} > /dev/shm/marker-${i}`]);
    await vm.succeed(['systemd-run', '--quiet', '--unit', `left-behind-${i}`, 'sleep', '4242'], { sudo: true });

    expect(seen.instanceIds.has(vm.instanceId)).toBe(false);
    seen.instanceIds.add(vm.instanceId);
    // Clones of one template: the same boot (restored, not rebooted), each its own instance.
    expect(vm.clonedFrom).toBeDefined();
    seen.templates.add(vm.clonedFrom!);
    seen.bootIds.add(await vm.succeed(['cat', '/proc/sys/kernel/random/boot_id']));
    expect(seen.templates.size).toBe(1);
    expect(seen.bootIds.size).toBe(1);
    expect(seen.instanceIds.size).toBe(i);
  });
}
