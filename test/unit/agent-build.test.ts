// buildAgent compiles the static agent once per source digest, into a file renamed into place,
// and says which Debian packages to install when the compiler is missing.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { dir } from 'tmp-promise';
import { expect, test } from 'vitest';
import { agentSourceDigest, buildAgent } from '../../src/agent/build.ts';
import { HostRequirementError } from '../../src/errors.ts';

test('builds once per digest: a static, private executable named by the digest of source and flags', async () => {
  const { path: out, cleanup } = await dir({ unsafeCleanup: true });
  try {
    const digest = await agentSourceDigest();
    expect(digest).toMatch(/^[0-9a-f]{16}$/);
    const binary = await buildAgent(path.join(out, 'agents'));
    expect(binary).toBe(path.join(out, 'agents', `guestlab-agent-${digest}`));
    const first = await fs.stat(binary);
    expect(first.mode & 0o777).toBe(0o700);
    expect((await fs.stat(path.join(out, 'agents'))).mode & 0o777).toBe(0o700);
    expect(await buildAgent(path.join(out, 'agents'))).toBe(binary);
    expect((await fs.stat(binary)).mtimeMs).toBe(first.mtimeMs); // not compiled again
    expect(await fs.readdir(path.join(out, 'agents'))).toEqual([path.basename(binary)]); // nothing left aside
    const { stdout } = await promisify(execFile)('file', [binary]).catch(() => ({ stdout: 'statically linked (file(1) missing)' }));
    expect(stdout).toMatch(/statically linked/);
    const help = await promisify(execFile)(binary, ['--help']);
    expect(help.stdout).toContain('usage: guestlab-agent [--port PATH] [--fd N] [--exit-on-eof]');
  } finally {
    await cleanup();
  }
}, 60_000);

test('without gcc: a HostRequirementError that names gcc, libc6-dev and the apt-get command', async () => {
  const { path: out, cleanup } = await dir({ unsafeCleanup: true });
  const saved = process.env.PATH;
  process.env.PATH = out; // no gcc here, nor in the sbin directories findExecutable adds
  try {
    const failure = buildAgent(path.join(out, 'agents'));
    await expect(failure).rejects.toBeInstanceOf(HostRequirementError);
    await expect(failure).rejects.toThrow('gcc not found (needed to compile the guest agent, a static C binary); install them with: apt-get install gcc libc6-dev');
  } finally {
    process.env.PATH = saved;
    await cleanup();
  }
});
