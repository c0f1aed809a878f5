// The agent runs commands the way exec() over SSH does: exit codes and signals, stdout apart
// from stderr, big output and input byte for byte, many commands at once, execvp's 126/127, cwd,
// a clean environment, another user. The real binary on a socketpair, driven by AgentClient.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { AgentClient } from '../../src/agent/client.ts';
import { PROTOCOL_VERSION } from '../../src/agent/protocol.ts';
import { compileAgent, type SpawnedAgent, startAgent } from './agent-harness.ts';

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const text = (data: Buffer) => data.toString('utf8');

let agent: SpawnedAgent;
let client: AgentClient;
let work: string;
let bigFile: string;
let big: Buffer;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  const built = await compileAgent();
  cleanups.push(built.cleanup);
  ({ agent, client } = await startAgent(built.binary, { ...process.env, GUESTLAB_AGENT_TEST_SECRET: 'host-only' }));
  const tmp = await dir({ unsafeCleanup: true });
  cleanups.push(tmp.cleanup);
  work = tmp.path;
  big = randomBytes(50 * 1024 * 1024);
  bigFile = path.join(work, 'big');
  await fs.writeFile(bigFile, big);
}, 60_000);

afterAll(async () => {
  client?.close();
  await agent?.exited;
  for (const cleanup of cleanups) await cleanup();
});

describe('the agent runs commands', () => {
  test('exit code, stdout and stderr apart, a signal by name', async () => {
    const result = await client.exec({ argv: ['sh', '-c', 'printf out; printf err >&2; exit 7'] });
    expect({ ...result, stdout: text(result.stdout), stderr: text(result.stderr) }).toEqual({ stdout: 'out', stderr: 'err', exitCode: 7, signal: null, timedOut: false });
    const killed = await client.exec({ argv: ['sh', '-c', 'kill -KILL $$'] });
    expect([killed.exitCode, killed.signal]).toEqual([null, 'KILL']);
  });

  test('true, : and false are answered as builtins; with an argument they are programs', async () => {
    const codes = await Promise.all([['true'], [':'], ['false'], ['true', 'x'], ['false', 'x']].map(async (argv) => (await client.exec({ argv })).exitCode));
    expect(codes).toEqual([0, 0, 1, 0, 1]);
  });

  test('a program not found exits 127, one that cannot be executed 126, each with a message', async () => {
    const missing = await client.exec({ argv: ['guestlab-no-such-program', 'arg'] });
    expect([missing.exitCode, text(missing.stderr)]).toEqual([127, 'guestlab-agent: guestlab-no-such-program: No such file or directory\n']);
    const plain = path.join(work, 'not-executable');
    await fs.writeFile(plain, 'echo no\n', { mode: 0o644 });
    const denied = await client.exec({ argv: [plain] });
    expect([denied.exitCode, text(denied.stderr)]).toEqual([126, `guestlab-agent: ${plain}: Permission denied\n`]);
    const script = path.join(work, 'script-without-shebang');
    await fs.writeFile(script, 'echo "ran as a script: $1"\n', { mode: 0o755 });
    expect(text((await client.exec({ argv: [script, 'yes'] })).stdout)).toBe('ran as a script: yes\n');
  });

  test('cwd: given, the home by default, and 1 with a message when it cannot be entered', async () => {
    expect(text((await client.exec({ argv: ['pwd'], cwd: work })).stdout)).toBe(`${work}\n`);
    expect(text((await client.exec({ argv: ['pwd'] })).stdout)).toBe('/root\n');
    const missing = await client.exec({ argv: ['pwd'], cwd: '/guestlab-no-such-dir' });
    expect([missing.exitCode, text(missing.stdout), text(missing.stderr)]).toEqual([1, '', 'guestlab-agent: cd: /guestlab-no-such-dir: No such file or directory\n']);
  });

  test('a clean environment: the base variables, then the request\'s; nothing of the agent\'s own', async () => {
    const result = await client.exec({ argv: ['env'], env: { GREETING: 'hello world', SHELL: '/bin/override' } });
    const env = Object.fromEntries(text(result.stdout).trim().split('\n').map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
    expect(env).toMatchObject({
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: '/root',
      USER: 'root',
      LOGNAME: 'root',
      SHELL: '/bin/override',
      GREETING: 'hello world',
    });
    expect(env).not.toHaveProperty('GUESTLAB_AGENT_TEST_SECRET');
    expect(Object.keys(env).filter((name) => name === 'SHELL')).toHaveLength(1);
    expect(text((await client.exec({ argv: ['sh', '-c', 'umask'] })).stdout)).toBe('0022\n');
  });

  test('runs as another user: uid, groups, HOME, PATH; an unknown user is refused', async () => {
    const result = await client.exec({ argv: ['sh', '-c', 'id -u; id -G; echo "$HOME:$USER:$LOGNAME:$PATH"; pwd'], user: 'nobody' });
    expect(text(result.stdout)).toBe('65534\n65534\n/nonexistent:nobody:nobody:/usr/local/bin:/usr/bin:/bin:/usr/games\n/\n');
    await expect(client.exec({ argv: ['id'], user: 'guestlab-no-such-user' })).rejects.toThrow('no user "guestlab-no-such-user" in /etc/passwd');
  });

  test('50 MiB of stdout byte for byte, collected and streamed', async () => {
    const collected = await client.exec({ argv: ['cat', bigFile] });
    expect([collected.stdout.length, sha256(collected.stdout)]).toEqual([big.length, sha256(big)]);
    const hash = createHash('sha256');
    let bytes = 0;
    const sink = new PassThrough().on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    const streamed = await client.exec({ argv: ['cat', bigFile], stdout: sink });
    expect([streamed.stdout.length, bytes, hash.digest('hex')]).toEqual([0, big.length, sha256(big)]);
  }, 60_000);

  test('50 MiB of stdin through cat, from a buffer and from a stream', async () => {
    const echoed = await client.exec({ argv: ['cat'], stdin: big });
    expect([echoed.stdout.length, sha256(echoed.stdout)]).toEqual([big.length, sha256(big)]);
    const summed = await client.exec({ argv: ['sha256sum'], stdin: createReadStream(bigFile) });
    expect(text(summed.stdout)).toBe(`${sha256(big)}  -\n`);
    expect(text((await client.exec({ argv: ['cat'], stdin: 'text input\n' })).stdout)).toBe('text input\n');
    expect((await client.exec({ argv: ['cat'], stdin: '' })).stdout.length).toBe(0);
    const drained = Readable.from([Buffer.from('x')]);
    drained.resume();
    await finished(drained);
    expect((await client.exec({ argv: ['cat'], stdin: drained })).stdout.length).toBe(0); // ended before: EOF at once
  }, 60_000);

  test('a command that exits without reading its stdin wedges nothing', async () => {
    const [ignored, other] = await Promise.all([
      client.exec({ argv: ['sh', '-c', 'exit 3'], stdin: big.subarray(0, 20 * 1024 * 1024) }),
      client.exec({ argv: ['echo', 'still here'] }),
    ]);
    expect([ignored.exitCode, text(other.stdout)]).toEqual([3, 'still here\n']);
    expect((await client.exec({ argv: ['head', '-c', '5'], stdin: big })).stdout).toEqual(big.subarray(0, 5));
  }, 30_000);

  test('many commands at once each get their own output', async () => {
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => client.exec({ argv: ['sh', '-c', 'sleep 0.$(($1 % 3)); echo "$1"; echo "e$1" >&2', 'sh', String(i)] })));
    expect(results.map((r) => text(r.stdout))).toEqual(Array.from({ length: 100 }, (_, i) => `${i}\n`));
    expect(results.map((r) => text(r.stderr))).toEqual(Array.from({ length: 100 }, (_, i) => `e${i}\n`));
  }, 30_000);

  test('ping answers; HELLO told the agent\'s pid and the boot id', async () => {
    expect(await client.ping()).toBeGreaterThan(0);
    expect(client.hello).toEqual({ version: PROTOCOL_VERSION, pid: agent.child.pid, bootId: (await fs.readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim() });
  });

  test('logs carry neither argv nor env', () => {
    expect(agent.log()).not.toMatch(/hello world|GREETING|guestlab-no-such-program|not-executable/);
  });
});
