// Files in and out of a real guest, and a port forwarded from the host at run time.
import { execFile } from 'node:child_process';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { GuestCommandError, startGuest, type StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, describe, expect, test as base } from 'vitest';

const run = promisify(execFile);

const SPEC = {
  image: 'debian-12',
  name: 'files',
  cloudConfig: {
    // A web server on port 80 serving one page, as a unit so that it is up once boot is done.
    write_files: [
      { path: '/srv/www/index.html', content: '<h1>hello from the guest</h1>\n' },
      {
        path: '/etc/systemd/system/www.service',
        content: '[Unit]\nDescription=test web server\n[Service]\nExecStart=/usr/bin/python3 -m http.server 80 --directory /srv/www\n[Install]\nWantedBy=multi-user.target\n',
      },
    ],
    runcmd: [['systemctl', 'enable', '--now', 'www.service']],
  },
};

const test = base.extend<{ vm: StartedGuest }>({ vm: guestFixture(SPEC) });

let scratch: { path: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  scratch = await dir({ unsafeCleanup: true, prefix: 'gl-files-' });
});
afterAll(async () => scratch.cleanup());

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

describe('files', () => {
  test('a 100 MiB file round-trips byte-identical', async ({ vm }) => {
    const original = path.join(scratch.path, 'big.bin');
    const back = path.join(scratch.path, 'big.back');
    const handle = await fs.open(original, 'w');
    for (let i = 0; i < 100; i++) await handle.write(randomBytes(1024 * 1024));
    await handle.close();

    await vm.copyTo(original, '/var/tmp/big.bin');
    const inGuest = (await vm.succeed(['sha256sum', '/var/tmp/big.bin'])).split(' ')[0];
    await vm.copyFrom('/var/tmp/big.bin', back);

    const expected = await sha256(original);
    expect(inGuest).toBe(expected);
    expect(await sha256(back)).toBe(expected);
    expect((await fs.stat(back)).size).toBe(100 * 1024 * 1024);
    await vm.succeed(['rm', '/var/tmp/big.bin']);
  });

  test('writeFile sets mode and owner atomically; readFile reads it back as root', async ({ vm }) => {
    await vm.writeFile('/etc/guestlab/app.conf', 'key = "value with spaces; $(not run)"\n', { mode: '0640', owner: 'root:adm' });
    expect(await vm.succeed(['stat', '-c', '%a %U:%G', '/etc/guestlab/app.conf'])).toBe('640 root:adm\n');
    expect(await vm.readFile('/etc/guestlab/app.conf', { sudo: true, encoding: 'utf8' })).toBe('key = "value with spaces; $(not run)"\n');
    // No temporary file is left beside it.
    expect(await vm.succeed(['ls', '-A', '/etc/guestlab'])).toBe('app.conf\n');
  });

  test('a file name with spaces, quotes and a dollar sign is taken literally', async ({ vm }) => {
    const name = `/tmp/it's a "file" $HOME`;
    await vm.writeFile(name, 'x');
    expect(await vm.readFile(name, { encoding: 'utf8' })).toBe('x');
  });

  test('directories copy recursively in both directions with modes kept', async ({ vm }) => {
    const tree = path.join(scratch.path, 'tree');
    await fs.mkdir(path.join(tree, 'sub'), { recursive: true });
    await fs.writeFile(path.join(tree, 'top.txt'), 'top\n');
    await fs.writeFile(path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\necho ran\n', { mode: 0o755 });
    await vm.copyTo(tree, '/opt/tree', { sudo: true });
    expect(await vm.succeed(['/opt/tree/sub/run.sh'])).toBe('ran\n');
    expect(await vm.succeed(['stat', '-c', '%a %U', '/opt/tree/top.txt', '/opt/tree/sub/run.sh'])).toBe('644 root\n755 root\n');

    const back = path.join(scratch.path, 'tree-back');
    await vm.copyFrom('/opt/tree', back);
    expect(await fs.readFile(path.join(back, 'sub', 'run.sh'), 'utf8')).toBe('#!/bin/sh\necho ran\n');
    expect((await fs.stat(path.join(back, 'sub', 'run.sh'))).mode & 0o777).toBe(0o755);
  });

  test('files are written with the login user permissions unless sudo, on the agent and over SSH alike', async ({ vm }) => {
    for (const via of ['agent', 'ssh'] as const) {
      await expect(vm.writeFile(`/root/${via}`, 'x', { via })).rejects.toThrow(/Permission denied/);
      await expect(vm.readFile('/etc/shadow', { via })).rejects.toThrow(/Permission denied/);
      await vm.writeFile(`/root/${via}`, `as root over ${via}`, { sudo: true, mode: 0o600, via });
      expect(await vm.readFile(`/root/${via}`, { sudo: true, encoding: 'utf8', via })).toBe(`as root over ${via}`);
      await vm.writeFile(`/home/guestlab/${via}/nested/file`, 'mine', { via });
      expect(await vm.succeed(['stat', '-c', '%U %a', `/home/guestlab/${via}/nested`, `/home/guestlab/${via}/nested/file`])).toBe('guestlab 755\nguestlab 644\n');
    }
    expect(await vm.succeed(['ls', '-A', '/root', '/home/guestlab/agent/nested'], { sudo: true })).not.toMatch(/guestlab-/);
  });

  test('bad input is refused with the fix in the message', async ({ vm }) => {
    await expect(vm.writeFile('relative/path', 'x')).rejects.toThrow(/absolute path in the guest/);
    await expect(vm.writeFile('/tmp/x', 'x', { mode: '999' })).rejects.toThrow(/permission mode such as 0o644/);
    await expect(vm.copyTo(path.join(scratch.path, 'missing'), '/tmp/x')).rejects.toThrow(/no such file or directory on the host/);
    await expect(vm.copyFrom('/does/not/exist', path.join(scratch.path, 'nothing'))).rejects.toThrow(GuestCommandError);
    await expect(fs.access(path.join(scratch.path, 'nothing'))).rejects.toThrow();
  });
});

describe('forward', () => {
  test('a host fetch through forward(80) gets the guest page, and the port is on 127.0.0.1 only', async ({ vm }) => {
    await vm.waitForPort(80);
    const port = await vm.forward(80);
    const response = await fetch(`http://127.0.0.1:${port}/`);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('<h1>hello from the guest</h1>\n');
    expect(await vm.forward(80)).toBe(port);

    const { stdout } = await run('ss', ['-Hltn', `sport = :${port}`]);
    const local = stdout.trim().split('\n').map((line) => line.trim().split(/\s+/)[3]);
    expect(local).toEqual([`127.0.0.1:${port}`]);

    await vm.unforward(80);
    await expect(fetch(`http://127.0.0.1:${port}/`)).rejects.toThrow();
    expect((await run('ss', ['-Hltn', `sport = :${port}`])).stdout.trim()).toBe('');
  });

  test('an invalid port is refused', async ({ vm }) => {
    await expect(vm.forward(0)).rejects.toThrow(/guestPort/);
    await expect(vm.forward(70000)).rejects.toThrow(/1 to 65535/);
  });
});

describe('internet: false', () => {
  test('the guest cannot reach the host\'s loopback through 10.0.2.2; SSH, forwards and commands still come in', async ({ vm }) => {
    // A service on the host's 127.0.0.1 only, as test databases and other guests' forwards are.
    const server = net.createServer((socket) => socket.end('host loopback\n'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    const probe = ['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/10.0.2.2/${port} && cat <&3`];
    const fenced = await startGuest({ ...SPEC, name: 'fenced', internet: false });
    try {
      // The default guest reaches it (QEMU's user network maps 10.0.2.2 to the host's loopback).
      expect(await vm.succeed(probe)).toBe('host loopback\n');
      // Same template, restored with the user network restricted: the connection goes nowhere.
      expect(fenced.timings.template?.key).toBe(vm.timings.template?.key);
      const refused = await fenced.fail(probe);
      expect(refused.stdout).toBe('');
      // What comes in from the host still works: the agent, SSH and a forward.
      expect(await fenced.succeed(['hostname'])).toBe('fenced\n');
      expect(await fenced.succeed(['hostname'], { via: 'ssh' })).toBe('fenced\n');
      await fenced.waitForPort(80);
      const forwarded = await fenced.forward(80);
      expect(await (await fetch(`http://127.0.0.1:${forwarded}/`)).text()).toBe('<h1>hello from the guest</h1>\n');
    } finally {
      await fenced.stop();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
