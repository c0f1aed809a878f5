// files.ts against a "guest" that is this host: the real tar on both ends, with the same stdout
// contract as SshSession.exec (a command is done once its stdout stream has taken everything; a
// failed write fails it). Catches races between the streams and the host tar process, which an
// SSH round trip through a TCG guest hides behind its latency.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { finished } from 'node:stream/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { copyFromGuest, copyToGuest, type FileGuest } from '../../src/guest/files.ts';
import type { ExecOptions, ExecResult } from '../../src/guest/started-guest.ts';

const localGuest: FileGuest = {
  name: 'local',
  exec(argv: string[], options: ExecOptions = {}): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      const stdoutDone = options.stdout
        ? finished(child.stdout.pipe(options.stdout), { readable: false })
        : (child.stdout.on('data', (c: Buffer) => (stdout += c.toString())), Promise.resolve());
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const { stdin } = options;
      if (stdin === undefined) child.stdin.end();
      else if (typeof stdin === 'string' || stdin instanceof Uint8Array) child.stdin.end(stdin);
      else stdin.pipe(child.stdin);
      child.once('error', reject);
      child.once('close', (code) => {
        stdoutDone.then(() => resolve({ stdout, stderr, exitCode: code ?? 255 }), reject);
      });
    });
  },
};

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-host-files-'));
  await fs.mkdir(path.join(root, 'src/sub'), { recursive: true });
  await fs.writeFile(path.join(root, 'src/a.txt'), 'alpha\n');
  await fs.writeFile(path.join(root, 'src/sub/b.bin'), Buffer.alloc(300_000, 7));
  await fs.chmod(path.join(root, 'src/a.txt'), 0o640);
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function digest(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for (const name of (await fs.readdir(dir, { recursive: true })).sort()) {
    const full = path.join(dir, name);
    const stat = await fs.stat(full);
    hash.update(`${name} ${(stat.mode & 0o7777).toString(8)}\n`);
    if (stat.isFile()) hash.update(await fs.readFile(full));
  }
  return hash.digest('hex');
}

describe('directory copies through host tar', () => {
  test('copyFrom of a directory succeeds every time (host tar may exit before its stdin reports finish)', async () => {
    const want = await digest(path.join(root, 'src'));
    for (let i = 0; i < 40; i++) {
      const out = path.join(root, `out-${i}`);
      await copyFromGuest(localGuest, path.join(root, 'src'), out);
      expect(await digest(out)).toBe(want);
    }
  }, 120_000);

  test('copyTo of a directory keeps contents and modes', async () => {
    const out = path.join(root, 'to');
    await copyToGuest(localGuest, path.join(root, 'src'), out);
    expect(await digest(out)).toBe(await digest(path.join(root, 'src')));
  });

  test('a missing source is reported with its path and nothing is created', async () => {
    await expect(copyFromGuest(localGuest, path.join(root, 'missing'), path.join(root, 'out-missing'))).rejects.toThrow(/missing does not exist/);
    await expect(fs.stat(path.join(root, 'out-missing'))).rejects.toThrow(/ENOENT/);
  });
});
