// The example suite: one Debian 12 guest for this file, declared by name (fixtures/debian-basic.yaml).
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { expect, test as base } from 'vitest';

const test = base.extend<{ vm: StartedGuest }>({ vm: guestFixture('debian-basic') });

test('the guest runs Debian 12', async ({ vm }) => {
  expect(await vm.succeed(['cat', '/etc/debian_version'])).toMatch(/^12\./);
});

test('cloud-init applied the fixture: the motd and the runcmd marker', async ({ vm }) => {
  expect(await vm.succeed(['cat', '/etc/motd'])).toContain('made by guestlab');
  expect((await vm.exec(['test', '-f', '/var/lib/guestlab-example-ran'])).exitCode).toBe(0);
});

test('sshd is running and the test user can become root', async ({ vm }) => {
  expect(await vm.succeed(['systemctl', 'is-active', 'ssh'])).toBe('active\n');
  expect(await vm.succeed(['whoami'], { sudo: true })).toBe('root\n');
});
