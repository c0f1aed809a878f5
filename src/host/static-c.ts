// Compiles one C file of guestlab's (the guest agent, the initramfs's init) into a static binary
// named by the digest of its source and flags, so an image build or a test reuses the binary of
// the same source and never mixes two versions. Static: one binary runs on every Debian release.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HostRequirementError } from '../errors.ts';
import { findExecutable } from './probe.ts';
import { run } from '../util/run.ts';

export interface StaticProgram {
  /** The binary's name (the file is `<name>-<digest>`), and how errors name it. */
  name: string;
  what: string;
  source: string;
  cflags: readonly string[];
}

const INSTALL_HINT = 'install them with: apt-get install gcc libc6-dev';

/** 16 hex digits of sha256(source + flags): the name of the binary that source builds. */
export function sourceDigestSync(program: StaticProgram): string {
  return digestOf(program, readFileSync(program.source));
}

export async function sourceDigest(program: StaticProgram): Promise<string> {
  return digestOf(program, await fs.readFile(program.source));
}

function digestOf(program: StaticProgram, source: Buffer): string {
  return createHash('sha256').update(source).update('\0').update(program.cflags.join(' ')).digest('hex').slice(0, 16);
}

/** Compiles the program into `outDir/<name>-<digest>` unless it is there already; returns its path. */
export async function buildStatic(program: StaticProgram, outDir: string): Promise<string> {
  if (typeof outDir !== 'string' || !outDir) throw new TypeError('Expected `outDir` to be a non-empty directory path');
  const target = path.join(path.resolve(outDir), `${program.name}-${await sourceDigest(program)}`);
  if (await isExecutableFile(target)) return target;
  const gcc = await findExecutable('gcc');
  if (!gcc) throw new HostRequirementError(`gcc not found (needed to compile ${program.what}, a static C binary); ${INSTALL_HINT}`);
  await fs.mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  // Written aside and renamed into place: a concurrent build or a reader never sees half a binary.
  const aside = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await run(gcc, [...program.cflags, '-o', aside, program.source], { timeoutMs: 120_000 });
    await fs.chmod(aside, 0o700);
    await fs.rename(aside, target);
  } catch (error) {
    await fs.rm(aside, { force: true });
    const output = (error as Error).message;
    if (/cannot find -lc\b|stdio\.h: No such file|cannot find crt1\.o/.test(output)) {
      throw new HostRequirementError(`gcc cannot link a static binary: the C library for static linking (libc6-dev) is missing; ${INSTALL_HINT}\n${output}`, { cause: error });
    }
    throw new Error(`Compiling ${program.what} failed:\n${output}`, { cause: error });
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
