// SshSession against a real SSH server (ssh2's Server on 127.0.0.1) whose exec requests run the
// real login shell of this host, as sshd would: the command shell's framing, its reuse, and the
// fallbacks to a channel of its own, without the latency of a TCG guest hiding races.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, test } from 'vitest';
import ssh2 from 'ssh2';
import { generateEd25519, publicKeyBlob } from '../../src/ssh/keys.ts';
import { COMMAND_SHELL, SshSession } from '../../src/ssh/session.ts';

const hostKey = generateEd25519('test-host');
const clientKey = generateEd25519('test-client');
const execRequests: string[] = [];
const loginShell = process.env.SHELL && /\/(bash|sh|dash)$/.test(process.env.SHELL) ? process.env.SHELL : '/bin/sh';
let server: ssh2.Server;
let session: SshSession;

beforeAll(async () => {
  server = new ssh2.Server({ hostKeys: [hostKey.privateKey] }, (client) => {
    // As sshd behind QEMU's user network does (libslirp sets TCP_NODELAY on forwarded connections).
    (client as unknown as { setNoDelay(on: boolean): void }).setNoDelay(true);
    client.on('authentication', (ctx) => {
      if (ctx.method === 'publickey' && ctx.key.data.equals(publicKeyBlob(clientKey.publicKey))) ctx.accept();
      else ctx.reject(['publickey']);
    });
    client.on('session', (accept) => {
      accept().on('exec', (acceptExec, _reject, info) => {
        execRequests.push(info.command);
        const channel = acceptExec();
        // As sshd does: the login shell (here this process's $SHELL) runs the command with -c.
        const child = spawn(loginShell, ['-c', info.command], { stdio: ['pipe', 'pipe', 'pipe'] });
        channel.pipe(child.stdin).on('error', () => {});
        child.stdout.pipe(channel, { end: false });
        child.stderr.pipe(channel.stderr, { end: false });
        let outputs = 2;
        let code: number | null = null;
        const finish = () => {
          if (--outputs > 0 || code === null) return;
          channel.exit(code);
          channel.end();
        };
        child.stdout.on('end', finish);
        child.stderr.on('end', finish);
        child.on('close', (exitCode, signal) => {
          code = exitCode ?? (signal ? 128 : 255);
          outputs++;
          finish();
        });
        channel.on('close', () => child.kill('SIGKILL'));
      });
    });
    client.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  session = await SshSession.connect({ host: '127.0.0.1', port, user: 'tester', privateKey: clientKey.privateKey, hostKey: hostKey.publicKey });
});

afterAll(async () => {
  session?.close();
  await new Promise((resolve) => server?.close(resolve));
});

const text = (result: { stdout: Buffer; stderr: Buffer; exitCode: number }) => ({
  stdout: result.stdout.toString('latin1'),
  stderr: result.stderr.toString('latin1'),
  exitCode: result.exitCode,
});

test('commands on the command shell get their own stdout, stderr and exit status, byte for byte', async () => {
  expect(text(await session.run('printf abc'))).toEqual({ stdout: 'abc', stderr: '', exitCode: 0 });
  expect(text(await session.run("printf 'out\\n'; printf 'err' >&2; exit 7"))).toEqual({ stdout: 'out\n', stderr: 'err', exitCode: 7 });
  expect(text(await session.run("printf '\\000\\377\\n\\n'"))).toEqual({ stdout: '\0\xff\n\n', stderr: '', exitCode: 0 });
  expect(text(await session.run('true'))).toEqual({ stdout: '', stderr: '', exitCode: 0 });
  // A quoted argument that spans lines is still one argument.
  expect(text(await session.run("printf '%s|' 'a\nb' c"))).toEqual({ stdout: 'a\nb|c|', stderr: '', exitCode: 0 });
});

test('the command shell is the login shell: a command means the same as on a channel of its own', async () => {
  for (const command of ["echo 'a\\nb'", 'printf %s "${BASH_VERSION:-not bash}"', 'echo "$HOME $USER $PATH"', 'pwd']) {
    expect(text(await session.run(command)), command).toEqual(text(await session.run(command, { ownChannel: true })));
  }
});

test('one shell serves command after command; state does not carry over between commands', async () => {
  const before = execRequests.length;
  for (let i = 0; i < 30; i++) expect((await session.run(`echo ${i}`)).stdout.toString()).toBe(`${i}\n`);
  expect(execRequests.length - before).toBeLessThanOrEqual(1);
  await session.run('cd /; export GUESTLAB_LEAK=1; exit 3');
  const after = text(await session.run('pwd; echo "leak=${GUESTLAB_LEAK:-}"'));
  expect(after.stdout).toBe(`${process.cwd()}\nleak=\n`);
});

test('a stateless command runs in the command shell itself (no subshell); any other command in a subshell', async () => {
  // Only a command run in the shell itself can leave a variable behind in it.
  await session.run('GUESTLAB_PROBE=in-place', { stateless: true });
  expect((await session.run('echo "${GUESTLAB_PROBE:-}"')).stdout.toString()).toBe('in-place\n');
  await session.run('GUESTLAB_PROBE=subshell');
  expect((await session.run('echo "${GUESTLAB_PROBE:-}"')).stdout.toString()).toBe('in-place\n');
  await session.run('unset GUESTLAB_PROBE', { stateless: true });
  expect(text(await session.run('test -d /', { stateless: true }))).toEqual({ stdout: '', stderr: '', exitCode: 0 });
  expect(text(await session.run("printf '%s\\n' x >&2; false", { stateless: true }))).toEqual({ stdout: '', stderr: 'x\n', exitCode: 1 });
});

test('outputs of every size come back whole, wherever the marker falls in a chunk', async () => {
  for (const size of [1, 31, 32, 33, 40, 41, 4095, 4096, 32767, 32768, 32769, 65536 + 5, 1024 * 1024 + 7]) {
    const result = await session.run(`f=$(mktemp); head -c ${size} /dev/urandom > "$f"; cat "$f"; cat "$f" >&2; rm -f "$f"`).catch((e) => { throw new Error(`size ${size}: ${e.message}`); });
    expect({ size, stdout: result.stdout.length, stderr: result.stderr.length, exitCode: result.exitCode }).toEqual({ size, stdout: size, stderr: size, exitCode: 0 });
    expect(createHash('sha256').update(result.stdout).digest('hex')).toBe(createHash('sha256').update(result.stderr).digest('hex'));
  }
});

test('concurrent commands: two shells, then channels of their own; each gets its own output', async () => {
  const before = execRequests.length;
  const results = await Promise.all(Array.from({ length: 6 }, (_, i) => session.run(`sleep 0.3; echo ${i}; echo e${i} >&2`)));
  expect(results.map(text)).toEqual(Array.from({ length: 6 }, (_, i) => ({ stdout: `${i}\n`, stderr: `e${i}\n`, exitCode: 0 })));
  // Six at once: the shells were busy, so at least four ran on channels of their own.
  const opened = execRequests.slice(before);
  expect(opened.filter((c) => c !== COMMAND_SHELL).length).toBeGreaterThanOrEqual(4);
  expect(opened.filter((c) => c === COMMAND_SHELL).length).toBeLessThanOrEqual(1);
});

test('stdin and ownChannel take a channel of their own', async () => {
  const before = execRequests.length;
  expect(text(await session.run('cat', { stdin: 'fed' }))).toEqual({ stdout: 'fed', stderr: '', exitCode: 0 });
  expect(text(await session.run('echo own', { ownChannel: true }))).toEqual({ stdout: 'own\n', stderr: '', exitCode: 0 });
  expect(execRequests.slice(before)).toEqual(['cat', 'echo own']);
});

test('a command the host gives up on (timeout, abort) takes its shell with it; the next command works', async () => {
  const timedOut = await session.run('echo started; sleep 30', { timeoutMs: 300 });
  expect(timedOut.timedOut).toBe(true);
  expect(timedOut.stdout.toString()).toBe('started\n');
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error('test over')), 200);
  await expect(session.run('sleep 30', { signal: controller.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  expect(text(await session.run('echo fine'))).toEqual({ stdout: 'fine\n', stderr: '', exitCode: 0 });
});

test('a command that kills its own shell fails with a clear error, and the next one gets a new shell', async () => {
  await expect(session.run('kill -9 $$; sleep 1')).rejects.toThrow(/command shell closed/);
  expect(text(await session.run('echo again'))).toEqual({ stdout: 'again\n', stderr: '', exitCode: 0 });
});
