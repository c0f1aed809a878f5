// Compiles the guest agent (images/agent/guestlab-agent.c) into a static binary named by the
// digest of its source and flags, so an image build or a test reuses the binary of the same
// source and never mixes two versions. Static: one binary runs on Debian 11, 12 and 13 guests.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostRequirementError } from '../errors.ts';
import { findExecutable } from '../host/probe.ts';
import { run } from '../util/run.ts';

/** The agent's C source: images/ sits next to src/ and dist/ in the package. */
export const AGENT_SOURCE = path.resolve(import.meta.dirname, '../../images/agent/guestlab-agent.c');
export const AGENT_CFLAGS: readonly string[] = ['-static', '-O2', '-Wall', '-Wextra', '-Werror'];

const INSTALL_HINT = 'install them with: apt-get install gcc libc6-dev';

/** 16 hex digits of sha256(source + flags): the name of the binary that source builds. */
export async function agentSourceDigest(): Promise<string> {
  return digestOf(await fs.readFile(AGENT_SOURCE));
}

/** agentSourceDigest() for code that must stay synchronous (an image recipe's hash). */
export function agentSourceDigestSync(): string {
  return digestOf(readFileSync(AGENT_SOURCE));
}

function digestOf(source: Buffer): string {
  return createHash('sha256').update(source).update('\0').update(AGENT_CFLAGS.join(' ')).digest('hex').slice(0, 16);
}

/** Compiles the agent into `outDir/guestlab-agent-<digest>` unless it is there already; returns its path. */
export async function buildAgent(outDir: string): Promise<string> {
  if (typeof outDir !== 'string' || !outDir) throw new TypeError('Expected `outDir` to be a non-empty directory path');
  const target = path.join(path.resolve(outDir), `guestlab-agent-${await agentSourceDigest()}`);
  if (await isExecutableFile(target)) return target;
  const gcc = await findExecutable('gcc');
  if (!gcc) throw new HostRequirementError(`gcc not found (needed to compile the guest agent, a static C binary); ${INSTALL_HINT}`);
  await fs.mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  // Written aside and renamed into place: a concurrent build or a reader never sees half a binary.
  const aside = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await run(gcc, [...AGENT_CFLAGS, '-o', aside, AGENT_SOURCE], { timeoutMs: 120_000 });
    await fs.chmod(aside, 0o700);
    await fs.rename(aside, target);
  } catch (error) {
    await fs.rm(aside, { force: true });
    const output = (error as Error).message;
    if (/cannot find -lc\b|stdio\.h: No such file|cannot find crt1\.o/.test(output)) {
      throw new HostRequirementError(`gcc cannot link a static binary: the C library for static linking (libc6-dev) is missing; ${INSTALL_HINT}\n${output}`, { cause: error });
    }
    throw new Error(`Compiling the guest agent failed:\n${output}`, { cause: error });
  }
  return target;
}

async function isExecutableFile(file: string): Promise<boolean> {
  try {
    const stat = await fs.stat(file);
    return stat.isFile() && (stat.mode & 0o100) !== 0;
  } catch {
    return false;
  }
}
