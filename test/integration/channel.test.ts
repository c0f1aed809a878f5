// The command channel and the boot without cloud-init, on one real debian-12 guest whose spec gives
// cloud-init nothing to do: guestlab's setup comes through fw_cfg, commands through the guest agent
// on a virtio-serial port, and SSH still serves real clients with the pinned host key. The last
// test takes the guest's network and sshd down, so it goes last.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { afterAll, describe, expect, test as base } from 'vitest';

const run = promisify(execFile);

// A host directory the guest boots with, and one it mounts at run time.
// Modes and numeric owners travel as they are: the directories are made readable for the guest's user.
const bootDir = mkdtempSync(path.join(os.tmpdir(), 'gl-mount-'));
chmodSync(bootDir, 0o755);
const blob = randomBytes(3 * 1048576 + 17);
mkdirSync(path.join(bootDir, 'sub'));
writeFileSync(path.join(bootDir, 'sub', 'blob.bin'), blob);
writeFileSync(path.join(bootDir, 'run.sh'), '#!/bin/sh\necho ran\n', { mode: 0o755 });
symlinkSync('sub/blob.bin', path.join(bootDir, 'link'));
afterAll(() => rmSync(bootDir, { recursive: true, force: true }));

const test = base.extend<{ vm: StartedGuest }>({
  vm: guestFixture({ image: 'debian-12', mounts: [{ host: bootDir, guest: '/mnt/boot' }] }, { scope: 'file' }),
});

describe('a guest with nothing for cloud-init', () => {
  test('boots with cloud-init left off, and guestlab’s setup in place', async ({ vm }) => {
    expect(vm.timings.cloudInit).toBe('skipped');
    expect(vm.timings.steps).toHaveProperty('agent');
    expect(await vm.exec(['cloud-init', 'status'])).toMatchObject({ stdout: expect.stringMatching(/status: disabled/) });
    expect((await vm.succeed(['hostname'])).trim()).toBe(vm.name);
    expect(await vm.succeed(['getent', 'hosts', vm.name])).toContain(vm.name);
    expect(await vm.succeed(['id', '-un'])).toBe(`${vm.ssh.user}\n`);
    expect(await vm.succeed(['id', '-un'], { sudo: true })).toBe('root\n');
    expect(await vm.succeed(['sudo', '-n', 'true'])).toBe('');
    expect(await vm.succeed(['sh', '-c', 'echo "$HOME $PWD $LANG"'])).toBe(`/home/${vm.ssh.user} /home/${vm.ssh.user} C.UTF-8\n`);
  });

  test('OpenSSH connects with StrictHostKeyChecking=yes against the pinned key', async ({ vm }) => {
    const { stdout } = await run('ssh', [
      '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', `UserKnownHostsFile=${vm.ssh.knownHostsPath}`, '-o', 'IdentitiesOnly=yes',
      '-i', vm.ssh.privateKeyPath, '-p', String(vm.ssh.port), `${vm.ssh.user}@${vm.ssh.host}`, 'cat /etc/ssh/ssh_host_ed25519_key.pub',
    ]);
    expect(stdout.split(' ').slice(0, 2).join(' ')).toBe(vm.ssh.hostKey.split(' ').slice(0, 2).join(' '));
    // The only host key the guest has is the pinned one.
    expect((await vm.succeed(['sh', '-c', 'ls /etc/ssh/ssh_host_*'])).trim().split('\n')).toEqual(['/etc/ssh/ssh_host_ed25519_key', '/etc/ssh/ssh_host_ed25519_key.pub']);
  });

  test('commands keep their semantics on the channel: argv, stdin, env, cwd, exit codes, timeouts', async ({ vm }) => {
    expect(await vm.succeed(['printf', '%s|', 'a b', '$HOME', "it's", '*'])).toBe("a b|$HOME|it's|*|");
    expect(await vm.succeed(['cat'], { stdin: 'from stdin\n' })).toBe('from stdin\n');
    expect(await vm.succeed(['sh', '-c', 'echo "$GREETING"; pwd'], { env: { GREETING: 'hi there' }, cwd: '/tmp' })).toBe('hi there\n/tmp\n');
    expect(await vm.exec(['sh', '-c', 'echo out; echo err >&2; exit 3'])).toMatchObject({ stdout: 'out\n', stderr: 'err\n', exitCode: 3 });
    expect(await vm.exec(['no-such-program'])).toMatchObject({ exitCode: 127, stderr: expect.stringContaining('no-such-program') });
    const slow = await vm.exec(['sh', '-c', 'sleep 60 & sleep 60'], { timeoutMs: 1000 });
    expect(slow.timedOut).toBe(true);
    // The command's whole process group went, the background sleep with it.
    expect((await vm.exec(['pgrep', '-x', 'sleep'])).exitCode).toBe(1);
  });

  test('files move through the channel byte for byte', async ({ vm }) => {
    const data = randomBytes(8 * 1048576);
    await vm.writeFile('/tmp/blob', data);
    expect(await vm.succeed(['sha256sum', '/tmp/blob'])).toBe(`${createHash('sha256').update(data).digest('hex')}  /tmp/blob\n`);
    expect(Buffer.compare((await vm.readFile('/tmp/blob')) as Buffer, data)).toBe(0);
  });

  test('a host directory mounted at boot shows byte for byte, read-only', async ({ vm }) => {
    expect(await vm.succeed(['sha256sum', '/mnt/boot/sub/blob.bin'])).toBe(`${createHash('sha256').update(blob).digest('hex')}  /mnt/boot/sub/blob.bin\n`);
    expect(await vm.succeed(['/mnt/boot/run.sh'])).toBe('ran\n');
    expect(await vm.succeed(['readlink', '/mnt/boot/link'])).toBe('sub/blob.bin\n');
    const write = await vm.exec(['touch', '/mnt/boot/new'], { sudo: true });
    expect(write.exitCode).not.toBe(0);
    expect(write.stderr).toMatch(/Read-only file system/);
    expect(vm.mounts.map((m) => m.guest)).toEqual(['/mnt/boot']);
  });

  test('a directory mounted at run time is a snapshot; unmount unplugs it', async ({ vm }) => {
    const later = await fs.mkdtemp(path.join(os.tmpdir(), 'gl-mount-'));
    await fs.chmod(later, 0o755);
    try {
      await fs.writeFile(path.join(later, 'a.txt'), 'first\n');
      const mount = await vm.mount({ host: later, guest: '/srv/later' });
      expect(await vm.succeed(['cat', '/srv/later/a.txt'])).toBe('first\n');
      await fs.writeFile(path.join(later, 'a.txt'), 'second\n');
      expect(await vm.succeed(['cat', '/srv/later/a.txt'])).toBe('first\n');
      await vm.unmount('/srv/later');
      expect((await vm.exec(['mountpoint', '-q', '/srv/later'])).exitCode).not.toBe(0);
      expect(await vm.exec(['test', '-e', `/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${mount.serial}`])).toMatchObject({ exitCode: 1 });
      await fs.access(mount.file).then(() => expect.unreachable('the image is removed'), () => undefined);
      await vm.mount({ host: later, guest: '/srv/later' });
      expect(await vm.succeed(['cat', '/srv/later/a.txt'])).toBe('second\n');
      await expect(vm.mount({ host: later, guest: '/srv/later/x' })).rejects.toThrow(/mount\(\)\.guest/);
      await expect(vm.mount({ host: path.join(later, 'missing'), guest: '/srv/other' })).rejects.toThrow(/missing/);
    } finally {
      await fs.rm(later, { recursive: true, force: true });
    }
  });

  test('nobody but the instance directory’s owner can connect to the channel’s socket', async ({ vm }) => {
    const socket = path.join(vm.instanceDir, 'agent.sock');
    const stat = await fs.stat(socket);
    expect(stat.isSocket()).toBe(true);
    expect(stat.mode & 0o077).toBe(0);
    expect(stat.uid).toBe(process.getuid!());
    expect((await fs.stat(vm.instanceDir)).mode & 0o077).toBe(0);
    // Another user (nobody) is refused before anything reaches the guest.
    const probe = `require('net').connect(${JSON.stringify(socket)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(0); })`;
    const { stdout } = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', probe]);
    expect(stdout.trim()).toBe('EACCES');
  });

  test('with eth0 down and sshd stopped, commands still run', async ({ vm }) => {
    await vm.succeed(['systemctl', 'stop', 'ssh.service', 'ssh.socket'], { sudo: true });
    await vm.succeed(['ip', 'link', 'set', 'eth0', 'down'], { sudo: true });
    expect(await vm.succeed(['cat', '/sys/class/net/eth0/operstate'])).toBe('down\n');
    expect((await vm.exec(['systemctl', 'is-active', 'ssh.service'])).stdout.trim()).not.toBe('active');
    expect(await vm.succeed(['echo', 'still here'])).toBe('still here\n');
    await vm.succeed(['ip', 'link', 'set', 'eth0', 'up'], { sudo: true });
  });
});
