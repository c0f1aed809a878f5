// The cross-distro recipe: the same checks on every release, one describe block per image name.
// Each test gets a fresh clone of a template booted once per release (scope 'test'), so the
// releases run one after another within the host budget. One vCPU each: under a budget shared
// with other suites, a request for 2 CPUs can wait long behind a stream of 1-CPU guests.
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { describe, expect, test as base } from 'vitest';

const RELEASES = [
  { image: 'debian-11', versionId: '11', codename: 'bullseye' },
  { image: 'debian-12', versionId: '12', codename: 'bookworm' },
  { image: 'debian-13', versionId: '13', codename: 'trixie' },
];

describe.each(RELEASES)('$image', ({ image, versionId, codename }) => {
  const test = base.extend<{ vm: StartedGuest }>({
    vm: guestFixture({ image, cpus: 1, cloudConfig: { write_files: [{ path: '/etc/guestlab-matrix', content: `${image}\n` }] } }, { scope: 'test' }),
  });

  test('runs the release it claims, with cloud-init done and our files in place', async ({ vm }) => {
    const osRelease = await vm.succeed(['cat', '/etc/os-release']);
    expect(osRelease).toMatch(new RegExp(`^VERSION_ID="${versionId}"$`, 'm'));
    expect(osRelease).toMatch(new RegExp(`^VERSION_CODENAME=${codename}$`, 'm'));
    expect(await vm.succeed(['cloud-init', 'status'])).toMatch(/status: done/);
    expect(await vm.succeed(['cat', '/etc/guestlab-matrix'])).toBe(`${image}\n`);
  });

  test('sshd serves only the pinned key, the user has sudo, the hostname is set', async ({ vm }) => {
    await expect(vm).toHaveActiveUnit('ssh');
    expect(await vm.succeed(['whoami'], { sudo: true })).toBe('root\n');
    expect(await vm.succeed(['hostname'])).toBe(`${vm.name}\n`);
    const served = await vm.succeed(['sh', '-c', 'cat /etc/ssh/ssh_host_*_key.pub'], { sudo: true });
    expect(served.trim().split(' ').slice(0, 2).join(' ')).toBe(vm.ssh.hostKey.trim().split(' ').slice(0, 2).join(' '));
  });

  test('packages, services and files inspect the same way on every release', async ({ vm }) => {
    await expect(vm).toHavePackage('openssh-server');
    await expect(vm).toListenOn(22);
    await vm.writeFile('/var/tmp/matrix', 'same API everywhere\n');
    expect((await vm.readFile('/var/tmp/matrix')).toString('utf8')).toBe('same API everywhere\n');
  });
});
