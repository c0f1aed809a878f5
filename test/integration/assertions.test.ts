// Every wait and every matcher against a real guest, each with a passing and a failing case; the
// failing cases check that the message shows what was actually found.
import { type StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { describe, expect, test as base } from 'vitest';

const test = base.extend<{ vm: StartedGuest }>({
  vm: guestFixture({
    image: 'debian-12',
    name: 'asserts',
    cloudConfig: {
      write_files: [
        { path: '/srv/www/index.html', content: 'ok\n' },
        {
          path: '/etc/systemd/system/www.service',
          content: '[Service]\nExecStart=/usr/bin/python3 -m http.server 8080 --directory /srv/www\n[Install]\nWantedBy=multi-user.target\n',
        },
        {
          path: '/etc/systemd/system/broken.service',
          content: "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo broken-unit-says-goodbye >&2; exit 3'\n",
        },
      ],
      runcmd: [
        ['systemctl', 'enable', '--now', 'www.service'],
        ['useradd', '--create-home', '--shell', '/bin/bash', '--groups', 'adm', 'alice'],
      ],
    },
  }),
});

// Waits that are meant to fail give up quickly; the passing ones use the scaled defaults.
const SHORT = { timeoutMs: 3000 };

describe('waits', () => {
  test('waitForUnit: an active unit resolves; a failed one rejects at once with its journal', async ({ vm }) => {
    await expect(vm.waitForUnit('www.service')).resolves.toMatchObject({ active: true, state: 'active', subState: 'running' });

    await vm.exec(['sudo', 'systemctl', 'start', 'broken.service']);
    const started = Date.now();
    const error = (await vm.waitForUnit('broken.service', { timeoutMs: 120_000 }).catch((e: unknown) => e)) as Error;
    expect(error).toMatchObject({ name: 'UnitFailedError', code: 'ERR_UNIT_FAILED' });
    expect(error.message).toMatch(/unit broken\.service failed \(ActiveState=failed, SubState=failed, Result=exit-code\)/);
    expect(error.message).toContain('broken-unit-says-goodbye');
    expect(Date.now() - started).toBeLessThan(60_000);
  });

  test('waitForUnit: a unit that never appears times out saying so', async ({ vm }) => {
    await expect(vm.waitForUnit('never-there.service', SHORT)).rejects.toThrow(/timed out after 3000 ms waiting for unit never-there\.service to be active.*not loaded.*LoadState=not-found/s);
  });

  test('waitForPort: a listening port resolves; a silent one times out listing what listens', async ({ vm }) => {
    await expect(vm.waitForPort(8080)).resolves.toMatchObject({ protocol: 'tcp', port: 8080 });
    // ss lists sockets in hash order: what listens is checked, not in which order.
    const error = (await vm.waitForPort(9999, SHORT).catch((e: unknown) => e)) as Error;
    expect(error.message).toMatch(/waiting for tcp port 9999 to listen.*listening: /s);
    expect(error.message).toMatch(/listening: .*:22\b/);
    expect(error.message).toMatch(/listening: .*:8080\b/);
  });

  test('waitForFile: a file created later resolves; a missing one shows its directory', async ({ vm }) => {
    await vm.succeed(['sh', '-c', 'setsid sh -c "sleep 2; touch /tmp/later" >/dev/null 2>&1 </dev/null &']);
    await expect(vm.waitForFile('/tmp/later')).resolves.toBeUndefined();
    await expect(vm.waitForFile('/tmp/never/file', SHORT)).rejects.toThrow(/waiting for file \/tmp\/never\/file.*does not exist; its directory:.*No such file or directory/s);
  });

  test('waitForConsole: text written to the serial console is seen; absent text shows the console tail', async ({ vm }) => {
    await vm.succeed(['sh', '-c', 'echo guestlab-marker-4711 > /dev/ttyS0'], { sudo: true });
    const match = await vm.waitForConsole(/guestlab-marker-(\d+)/);
    expect(match[1]).toBe('4711');
    await expect(vm.waitForConsole('never-printed', { ...SHORT, fromNow: true })).rejects.toThrow(/console output matching \/never-printed\/.*serial console, last lines/s);
  });

  test('waitUntil: a command that starts succeeding resolves; one that keeps failing shows its exit code and stderr', async ({ vm }) => {
    await vm.succeed(['sh', '-c', 'setsid sh -c "sleep 2; touch /tmp/flag" >/dev/null 2>&1 </dev/null &']);
    await expect(vm.waitUntil(['test', '-e', '/tmp/flag'])).resolves.toMatchObject({ exitCode: 0 });
    await expect(vm.waitUntil('echo not-yet >&2; exit 4', SHORT)).rejects.toThrow(/`echo not-yet >&2; exit 4` to succeed.*exit code 4.*not-yet/s);
  });
});

describe('matchers', () => {
  test('toHaveActiveUnit', async ({ vm }) => {
    await expect(vm).toHaveActiveUnit('www.service');
    await expect(vm).not.toHaveActiveUnit('broken.service');
    await expect(expect(vm).toHaveActiveUnit('broken.service')).rejects.toThrow(/to have broken\.service active, but it is not \(ActiveState=failed.*broken-unit-says-goodbye/s);
  });

  test('toListenOn', async ({ vm }) => {
    await expect(vm).toListenOn(8080);
    await expect(vm).toListenOn(22, { protocol: 'tcp' });
    await expect(vm).not.toListenOn(8080, { protocol: 'udp' });
    await expect(expect(vm).toListenOn(9999)).rejects.toThrow(/to listen on tcp port 9999, but it listens on: .*8080/);
  });

  test('toHaveFile', async ({ vm }) => {
    await expect(vm).toHaveFile('/etc/systemd/system/www.service', { type: 'file', mode: '0644', owner: 'root', group: 'root', contains: 'http.server' });
    await expect(vm).toHaveFile('/srv/www', { type: 'directory' });
    await expect(vm).not.toHaveFile('/etc/not-here');
    await expect(expect(vm).toHaveFile('/etc/systemd/system/www.service', { mode: 0o600, contains: /nginx/ })).rejects.toThrow(
      /its mode is 0644, not 0600; its content does not contain \/nginx\//,
    );
    await expect(expect(vm).toHaveFile('/etc/not-here')).rejects.toThrow(/file \/etc\/not-here, but it does not exist/);
  });

  test('toHavePackage', async ({ vm }) => {
    await expect(vm).toHavePackage('openssh-server');
    await expect(vm).toHavePackage('openssh-server', { version: /^1:9\.2p1/ });
    await expect(vm).not.toHavePackage('nginx-light');
    await expect(expect(vm).toHavePackage('nginx-light')).rejects.toThrow(/package nginx-light installed, but it is not installed \(dpkg\)/);
    await expect(expect(vm).toHavePackage('sudo', { version: '0.1' })).rejects.toThrow(/package sudo "0\.1" installed, but 1\.9\.\S+ is installed \(dpkg\)/);
  });

  test('toHaveUser', async ({ vm }) => {
    await expect(vm).toHaveUser('alice', { groups: ['adm'], shell: '/bin/bash', home: '/home/alice' });
    await expect(vm).not.toHaveUser('mallory');
    await expect(expect(vm).toHaveUser('alice', { groups: ['sudo'] })).rejects.toThrow(/to have user alice \(in sudo\), but it is not in sudo \(uid \d+/);
  });

  test('toSucceed', async ({ vm }) => {
    expect(await vm.exec(['true'])).toSucceed();
    await expect(vm.exec(['id', '-u'])).toSucceed();
    expect(await vm.exec(['false'])).not.toSucceed();
    await expect(expect(vm.exec(['sh', '-c', 'echo went-wrong >&2; exit 2'])).toSucceed()).rejects.toThrow(/to succeed, but it exited with code 2.*went-wrong/s);
  });

  test('fail(): a command that must fail returns its result; one that succeeds or times out throws', async ({ vm }) => {
    const refused = await vm.fail(['sh', '-c', 'echo no-such-thing >&2; exit 3']);
    expect(refused).toMatchObject({ exitCode: 3, stderr: 'no-such-thing\n' });
    expect((await vm.fail('test -e /nonexistent')).exitCode).toBe(1);
    await expect(vm.fail(['true'])).rejects.toThrow(/^Command exited with code 0 in guest .*, expected to fail: true$/);
    await expect(vm.fail(['sleep', '30'], { timeoutMs: 1000 })).rejects.toThrow(/timed out .*expected to fail, not to run out of time: sleep 30/);
  });
});
