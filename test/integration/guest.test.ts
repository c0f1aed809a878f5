// One real debian-12 guest for this file (scope 'file'), checked from the outside. It asks for the
// whole of a 2-CPU budget, as a new user's fixture does on a 2-core host: the last test starts
// one more guest beside it from the same file.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { GuestCommandError, type StartedGuest } from 'guestlab';
import { guestFixture } from 'guestlab/vitest';
import { afterAll, describe, expect, test as base } from 'vitest';
import { startGuest } from 'guestlab';
import { generateEd25519, publicKeyBlob } from '../../src/ssh/keys.ts';
import { SshSession } from '../../src/ssh/session.ts';

// This process's own budget (other processes keep theirs): two CPUs, on any host.
const savedBudgetCpus = process.env.GUESTLAB_BUDGET_CPUS;
process.env.GUESTLAB_BUDGET_CPUS = '2';
afterAll(() => {
  if (savedBudgetCpus === undefined) delete process.env.GUESTLAB_BUDGET_CPUS;
  else process.env.GUESTLAB_BUDGET_CPUS = savedBudgetCpus;
});

const test = base.extend<{ vm: StartedGuest }>({
  vm: guestFixture({
    image: 'debian-12',
    cpus: 2,
    cloudConfig: {
      write_files: [{ path: '/etc/guestlab-test.conf', content: 'answer = 42\n', permissions: '0640', owner: 'root:root' }],
    },
  }),
});

describe('a booted debian-12 guest', () => {
  test('runs Debian 12', async ({ vm }) => {
    const osRelease = await vm.succeed(['cat', '/etc/os-release']);
    expect(osRelease).toMatch(/^ID=debian$/m);
    expect(osRelease).toMatch(/^VERSION_ID="12"$/m);
    expect(['kvm', 'tcg']).toContain(vm.accel);
  });

  test('cloud-init finished with status done and applied write_files with its mode', async ({ vm }) => {
    expect(await vm.succeed(['cloud-init', 'status'])).toMatch(/status: done/);
    expect(await vm.succeed(['stat', '-c', '%a %U:%G', '/etc/guestlab-test.conf'])).toBe('640 root:root\n');
    expect(await vm.succeed(['sudo', 'cat', '/etc/guestlab-test.conf'])).toBe('answer = 42\n');
  });

  test('the hostname is the guest name and resolves', async ({ vm }) => {
    expect((await vm.succeed(['hostname'])).trim()).toBe(vm.name);
    expect(await vm.succeed(['getent', 'hosts', vm.name])).toContain(vm.name);
  });

  test('a failing command yields its exit code and stderr', async ({ vm }) => {
    await expect(vm.exec(['sh', '-c', 'echo oops >&2; exit 7'])).resolves.toMatchObject({ exitCode: 7, stderr: 'oops\n' });
    const missing = await vm.exec(['ls', '/does-not-exist']);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain('No such file or directory');
  });

  test('succeed() throws GuestCommandError carrying command, exit code and stderr tail', async ({ vm }) => {
    const error = await vm.succeed(['ls', '/does-not-exist']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GuestCommandError);
    expect(error).toMatchObject({ exitCode: 2, command: 'ls /does-not-exist', code: 'ERR_GUEST_COMMAND' });
    expect((error as Error).message).toContain('No such file or directory');
  });

  test('sudo works without a password', async ({ vm }) => {
    expect(await vm.succeed(['sudo', '-n', 'id', '-u'])).toBe('0\n');
    expect(await vm.succeed(['id', '-un'], { sudo: true })).toBe('root\n');
    expect(await vm.succeed(['id', '-un'])).toBe(`${vm.ssh.user}\n`);
  });

  test('argv reaches the guest byte for byte: quotes, $(), backslashes, newlines, unicode', async ({ vm }) => {
    const args = ["it's", '"double"', '$(touch /tmp/pwned)', '`id`', '${HOME}', 'back\\slash', 'two\nlines', 'tab\there', ' lead', 'trail ', '*', '~', ';', '&&', '|', '#x', '', 'héllo 日本 🦀', '--', '-n'];
    const result = await vm.exec(['printf', '%s\\0', ...args]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout.split('\0').slice(0, -1)).toEqual(args);
    expect((await vm.exec(['test', '-e', '/tmp/pwned'])).exitCode).toBe(1);
  });

  test('shell() runs a script through sh -c', async ({ vm }) => {
    expect(await vm.succeed('for i in 1 2 3; do printf "$i"; done; echo " $((6 * 7))"')).toBe('123 42\n');
  });

  test('stdin, cwd and env reach the command', async ({ vm }) => {
    expect(await vm.succeed(['cat'], { stdin: 'from the host\n' })).toBe('from the host\n');
    expect(await vm.succeed(['pwd'], { cwd: '/etc' })).toBe('/etc\n');
    expect(await vm.succeed(['sh', '-c', 'printf %s "$GREETING"'], { env: { GREETING: "it's $(me)" } })).toBe("it's $(me)");
  });

  test('a command past its timeout is killed and reported, and the guest stays usable', async ({ vm }) => {
    const result = await vm.exec(['sleep', '60'], { timeoutMs: 1000 });
    expect(result.timedOut).toBe(true);
    await expect(vm.succeed(['sleep', '60'], { timeoutMs: 500 })).rejects.toThrow(/timed out/);
    expect(await vm.succeed(['echo', 'still here'])).toBe('still here\n');
  });

  test('the guest serves the pinned host key, and OpenSSH accepts it from known_hosts', async ({ vm }) => {
    const served = await vm.succeed(['cat', '/etc/ssh/ssh_host_ed25519_key.pub'], { sudo: true });
    expect(publicKeyBlob(served).equals(publicKeyBlob(vm.ssh.hostKey))).toBe(true);
    expect((await vm.exec(['sh', '-c', 'ls /etc/ssh/ssh_host_*_key'], { sudo: true })).stdout.trim().split('\n')).toEqual(['/etc/ssh/ssh_host_ed25519_key']);
    const { stdout } = await promisify(execFile)('ssh', [
      '-i', vm.ssh.privateKeyPath, '-p', String(vm.ssh.port),
      '-o', `UserKnownHostsFile=${vm.ssh.knownHostsPath}`, '-o', 'StrictHostKeyChecking=yes',
      '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes',
      `${vm.ssh.user}@${vm.ssh.host}`, 'echo', 'pinned',
    ]);
    expect(stdout).toBe('pinned\n');
  });

  test('a connection that expects a different host key is refused', async ({ vm }) => {
    const { readFile } = await import('node:fs/promises');
    const error = await SshSession.connect({
      host: vm.ssh.host,
      port: vm.ssh.port,
      user: vm.ssh.user,
      privateKey: await readFile(vm.ssh.privateKeyPath, 'utf8'),
      hostKey: generateEd25519('impostor').publicKey,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'HostKeyMismatchError', code: 'ERR_HOST_KEY_MISMATCH' });
    expect((error as Error).message).toMatch(/expected SHA256:\S+, the server offered SHA256:\S+/);
  });

  test('the SSH forward listens on 127.0.0.1 only', async ({ vm }) => {
    const { stdout } = await promisify(execFile)('ss', ['-Hltn', `sport = :${vm.ssh.port}`]);
    const listeners = stdout.trim().split('\n').map((l) => l.trim().split(/\s+/)[3]);
    expect(listeners).toEqual([`127.0.0.1:${vm.ssh.port}`]);
  });

  test('the serial console log is readable', async ({ vm }) => {
    const log = await vm.consoleLog();
    expect(log).toContain('Linux version');
    expect(log).toMatch(/cloud-init/);
  });

  // The fixture holds the whole 2-CPU budget; this process holds every lease there is, so its
  // next guest may overcommit CPUs (never memory) instead of waiting for itself until the timeout.
  test('one more guest starts beside a fixture that holds the whole budget', async ({ vm }) => {
    expect(vm.cpus).toBe(2);
    await using extra = await startGuest({ image: 'debian-12', cpus: 1, name: 'extra' });
    expect(await extra.succeed(['nproc'])).toBe('1\n');
    expect(await vm.succeed(['nproc'])).toBe('2\n');
  });
});
