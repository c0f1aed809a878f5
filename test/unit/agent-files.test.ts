// The agent's own file requests (WRITE_FILE, READ_FILE): bytes land byte for byte through a new file
// renamed over the path, with the mode, owner and parents asked for; a user's file permissions
// hold; a failed or abandoned write leaves nothing behind; errors come back as errno exit codes.
// The real binary on a socketpair, driven by AgentClient.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { AgentClient } from '../../src/agent/client.ts';
import { compileAgent, type SpawnedAgent, startAgent } from './agent-harness.ts';

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const asRoot = process.getuid?.() === 0;

let agent: SpawnedAgent;
let client: AgentClient;
let work: string;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  const built = await compileAgent();
  cleanups.push(built.cleanup);
  ({ agent, client } = await startAgent(built.binary));
  const tmp = await dir({ unsafeCleanup: true });
  cleanups.push(tmp.cleanup);
  work = tmp.path;
  await fs.chmod(work, 0o755);
}, 60_000);

afterAll(async () => {
  client?.close();
  await agent?.exited;
  for (const cleanup of cleanups) await cleanup();
});

/** Everything left in a directory, so a test sees no temporary file stayed. */
const entries = async (where: string) => (await fs.readdir(where)).sort();

describe('WRITE_FILE', () => {
  test('writes a big stream byte for byte through a new file renamed over the path, parents made', async () => {
    const data = randomBytes(24 * 1024 * 1024 + 17);
    const target = path.join(work, 'big', 'deep', 'file.bin');
    const result = await client.writeFile({ path: target, data: Readable.from([data.subarray(0, 5), data.subarray(5)]), mode: 0o640 });
    expect([result.exitCode, result.stderr.toString()]).toEqual([0, '']);
    expect(sha256(await fs.readFile(target))).toBe(sha256(data));
    expect((await fs.stat(target)).mode & 0o7777).toBe(0o640);
    expect((await fs.stat(path.join(work, 'big'))).mode & 0o7777).toBe(0o755);
    expect(await entries(path.dirname(target))).toEqual(['file.bin']);
  });

  test('replaces a file and a symlink themselves, never what the link points at', async () => {
    const outside = path.join(work, 'outside');
    await fs.writeFile(outside, 'untouched');
    const link = path.join(work, 'link');
    await fs.symlink(outside, link);
    expect((await client.writeFile({ path: link, data: 'new' })).exitCode).toBe(0);
    expect(await fs.readFile(outside, 'utf8')).toBe('untouched');
    expect((await fs.lstat(link)).isFile()).toBe(true);
    expect(await fs.readFile(link, 'utf8')).toBe('new');
    expect((await client.writeFile({ path: link, data: '' })).exitCode).toBe(0);
    expect(await fs.readFile(link, 'utf8')).toBe('');
  });

  test('a directory at the path is EISDIR (21), and nothing is left beside it', async () => {
    const target = path.join(work, 'a-dir');
    await fs.mkdir(target);
    const result = await client.writeFile({ path: target, data: 'x' });
    expect(result.exitCode).toBe(21);
    expect(result.stderr.toString()).toMatch(/a-dir: Is a directory/);
    expect((await entries(work)).filter((name) => name.startsWith('a-dir'))).toEqual(['a-dir']);
  });

  test.skipIf(!asRoot)('as a user: its permissions hold (EACCES 13), and its files are its own', async () => {
    const denied = await client.writeFile({ path: path.join(work, 'root-only', 'x'), data: 'x', user: 'nobody' });
    expect(denied.exitCode).toBe(13);
    expect(denied.stderr.toString()).toMatch(/Permission denied/);
    const open = path.join(work, 'open');
    await fs.mkdir(open, { mode: 0o777 });
    await fs.chmod(open, 0o777);
    expect((await client.writeFile({ path: path.join(open, 'mine'), data: 'x', user: 'nobody' })).exitCode).toBe(0);
    expect((await fs.stat(path.join(open, 'mine'))).uid).toBe(65534);
    // After a user's request the agent is root again: the next root write works anywhere.
    await fs.mkdir(path.join(work, 'root-only'), { mode: 0o700 });
    expect((await client.writeFile({ path: path.join(work, 'root-only', 'x'), data: 'x' })).exitCode).toBe(0);
  });

  test.skipIf(!asRoot)('owner by name and number; only root may give one; a bad owner is refused before anything', async () => {
    const target = path.join(work, 'owned');
    expect((await client.writeFile({ path: target, data: 'x', owner: 'nobody:65533', mode: 0o4755 })).exitCode).toBe(0);
    const stat = await fs.stat(target);
    expect([stat.uid, stat.gid, stat.mode & 0o7777]).toEqual([65534, 65533, 0o4755]);
    await expect(client.writeFile({ path: path.join(work, 'other'), data: 'x', owner: 'nobody', user: 'nobody' })).rejects.toThrow(/only root can give a file another owner/);
    await expect(client.writeFile({ path: path.join(work, 'other'), data: 'x', owner: 'no-such-user-here' })).rejects.toThrow(/no such owner "no-such-user-here"/);
    await expect(fs.stat(path.join(work, 'other'))).rejects.toThrow(/ENOENT/);
  });

  test('an abort removes the new file; the old content stays', async () => {
    const target = path.join(work, 'aborted');
    await fs.writeFile(target, 'old');
    const input = new PassThrough();
    const controller = new AbortController();
    const writing = client.writeFile({ path: target, data: input, signal: controller.signal });
    input.write(randomBytes(1024 * 1024));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect((await entries(work)).filter((name) => name.startsWith('aborted.guestlab-'))).toHaveLength(1);
    controller.abort();
    await expect(writing).rejects.toThrow(/file write/);
    for (let i = 0; i < 50 && (await entries(work)).some((name) => name.startsWith('aborted.guestlab-')); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect((await entries(work)).filter((name) => name.startsWith('aborted'))).toEqual(['aborted']);
    expect(await fs.readFile(target, 'utf8')).toBe('old');
  });

  test('bad requests are refused on the host, naming the field', async () => {
    await expect(client.writeFile({ path: 'relative', data: 'x' })).rejects.toThrow(/`path` to be an absolute path/);
    await expect(client.writeFile({ path: '/x', data: 'x', mode: 0o10000 })).rejects.toThrow(/`mode`/);
    await expect(client.writeFile({ path: '/x', data: 42 as unknown as string })).rejects.toThrow(/`data`/);
  });
});

describe('READ_FILE', () => {
  test('reads a file byte for byte, into a stream or the result', async () => {
    const data = randomBytes(12 * 1024 * 1024 + 3);
    const source = path.join(work, 'read-me');
    await fs.writeFile(source, data);
    const direct = await client.readFile({ path: source });
    expect([direct.exitCode, sha256(direct.stdout)]).toEqual([0, sha256(data)]);
    const sink = new PassThrough();
    const chunks: Buffer[] = [];
    sink.on('data', (chunk: Buffer) => chunks.push(chunk));
    const streamed = await client.readFile({ path: source, stdout: sink });
    expect([streamed.exitCode, sha256(Buffer.concat(chunks))]).toEqual([0, sha256(data)]);
  });

  test('reads files of /proc (no size), and a missing file or a directory is an errno exit code', async () => {
    const proc = await client.readFile({ path: '/proc/self/status' });
    expect(proc.stdout.toString()).toMatch(/^Name:\s+guestlab-agent/);
    const missing = await client.readFile({ path: path.join(work, 'missing') });
    expect([missing.exitCode, missing.stderr.toString()]).toEqual([2, `guestlab-agent: reading ${path.join(work, 'missing')}: No such file or directory\n`]);
    expect((await client.readFile({ path: work })).exitCode).toBe(21);
  });

  test.skipIf(!asRoot)('as a user: a file it may not read is EACCES (13)', async () => {
    const secret = path.join(work, 'secret');
    await fs.writeFile(secret, 'root only', { mode: 0o600 });
    expect((await client.readFile({ path: secret, user: 'nobody' })).exitCode).toBe(13);
    expect((await client.readFile({ path: secret })).stdout.toString()).toBe('root only');
  });
});
