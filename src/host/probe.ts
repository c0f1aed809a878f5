// Facts about this host that decide how guests run: tools, KVM, cores, memory, disk.
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { guestlabPaths } from '../config.ts';
import { HostRequirementError } from '../errors.ts';
import { assessKvm, parseCpuFlags, parseKvmModules, type DevKvmState, type KvmAssessment } from './kvm.ts';

export interface ToolInfo {
  name: string;
  path: string | undefined;
  version: string | undefined;
}

export interface HostFacts {
  qemu: ToolInfo;
  qemuImg: ToolInfo;
  isoTool: ToolInfo;
  mmdebstrap: ToolInfo;
  mkfsExt4: ToolInfo;
  setpriv: ToolInfo;
  /** Compiles the guest agent into images. */
  gcc: ToolInfo;
  kvm: KvmAssessment;
  /**
   * The versioned machine type QEMU's `q35` alias stands for here (pc-q35-7.2 on QEMU 7.2): guests
   * and their saved states name it, so that a QEMU upgrade cannot change the machine under them.
   * `q35` itself when QEMU does not say.
   */
  q35Machine: string;
  cores: number;
  memAvailableMiB: number;
  isRoot: boolean;
}

const EXTRA_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/** The absolute path of an executable on PATH (plus the sbin directories), or undefined. */
export async function findExecutable(name: string): Promise<string | undefined> {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), ...EXTRA_DIRS];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      await fs.access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

async function tool(name: string, versionArgs: string[] | undefined, pick: (out: string) => string | undefined): Promise<ToolInfo> {
  const found = await findExecutable(name);
  if (!found || !versionArgs) return { name, path: found, version: undefined };
  const result = await execa(found, versionArgs, { reject: false, timeout: 10_000 });
  return { name, path: found, version: pick(`${result.stdout}\n${result.stderr}`) };
}

const versionNumber = (out: string) => /(\d+\.\d+(?:\.\d+)?)/.exec(out)?.[1];

async function firstTool(names: string[], args: string[]): Promise<ToolInfo> {
  for (const name of names) {
    const info = await tool(name, args, versionNumber);
    if (info.path) return info;
  }
  return { name: names.join(' | '), path: undefined, version: undefined };
}

export async function probeKvm(): Promise<KvmAssessment> {
  let devKvm: DevKvmState = 'ok';
  try {
    await fs.access('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK);
  } catch (error) {
    devKvm = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'no-access';
  }
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const modules = await fs.readFile('/proc/modules', 'utf8').catch(() => '');
  return assessKvm({ devKvm, cpuFlags: parseCpuFlags(cpuinfo), kvmModules: parseKvmModules(modules) });
}

export async function memAvailableMiB(): Promise<number> {
  const meminfo = await fs.readFile('/proc/meminfo', 'utf8').catch(() => '');
  const kib = /^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1];
  return kib ? Math.floor(Number(kib) / 1024) : Math.floor(os.freemem() / 1048576);
}

/** Free bytes on the filesystem that holds `dir` (or its nearest existing parent). */
export async function freeDiskBytes(dir: string): Promise<number> {
  let current = path.resolve(dir);
  for (;;) {
    try {
      const stats = await fs.statfs(current);
      return stats.bavail * stats.bsize;
    } catch {
      const parent = path.dirname(current);
      if (parent === current) return 0;
      current = parent;
    }
  }
}

/** The machine type an alias stands for in `qemu-system-x86_64 -machine help` ("q35 ... (alias of pc-q35-7.2)"). */
export function parseMachineAlias(help: string, alias: string): string | undefined {
  const line = help.split('\n').find((l) => l.split(/\s+/)[0] === alias);
  return line && /\(alias of ([\w.-]+)\)/.exec(line)?.[1];
}

const probes = new Map<string, Promise<unknown>>();

/** Each probe runs once per process, on first use: a restore needs QEMU's facts, not mmdebstrap's. */
function once<T>(name: string, probe: () => Promise<T>): Promise<T> {
  let found = probes.get(name) as Promise<T> | undefined;
  if (!found) {
    found = probe();
    probes.set(name, found);
  }
  return found;
}

/**
 * QEMU and the versioned machine type its q35 alias stands for. Running QEMU twice to learn them
 * costs every process ~0.1 s, most of a restore's budget: the answer is kept in the cache, under the
 * binary's identity (path, size, time), and asked again only of another build.
 */
export function probeQemu(): Promise<Pick<HostFacts, 'qemu' | 'q35Machine'>> {
  return once('qemu', async () => {
    const found = await findExecutable('qemu-system-x86_64');
    const identity = found && (await binaryIdentity(found).catch(() => undefined));
    const remembered = identity && path.join(guestlabPaths().cacheDir, 'host', `qemu-${identity}.json`);
    if (remembered) {
      const facts = await fs.readFile(remembered, 'utf8').then((text) => JSON.parse(text) as Pick<HostFacts, 'qemu' | 'q35Machine'>).catch(() => undefined);
      if (facts?.qemu?.path === found && facts.qemu.version && facts.q35Machine) return facts;
    }
    const [qemu, machines] = await Promise.all([
      tool('qemu-system-x86_64', ['--version'], versionNumber),
      found ? execa(found, ['-machine', 'help'], { reject: false, timeout: 10_000 }) : undefined,
    ]);
    const alias = parseMachineAlias(machines?.stdout ?? '', 'q35');
    const facts = { qemu, q35Machine: alias ?? 'q35' };
    // Only complete answers are kept: a QEMU that failed to say is asked again next time.
    if (remembered && qemu.version && alias) {
      await fs.mkdir(path.dirname(remembered), { recursive: true, mode: 0o700 }).catch(() => undefined);
      await fs.writeFile(`${remembered}.${process.pid}`, JSON.stringify(facts), { mode: 0o600 }).then(() => fs.rename(`${remembered}.${process.pid}`, remembered)).catch(() => undefined);
    }
    return facts;
  });
}

/** 32 hex digits naming a binary's build: its resolved path, size and modification time. */
async function binaryIdentity(file: string): Promise<string> {
  const real = await fs.realpath(file);
  const stat = await fs.stat(real);
  return createHash('sha256').update(`${real}\n${stat.size}\n${stat.mtimeMs}`).digest('hex').slice(0, 32);
}

export function probeQemuImg(): Promise<ToolInfo> {
  return once('qemu-img', () => tool('qemu-img', ['--version'], versionNumber));
}

/**
 * The identity of the QEMU binary: its resolved path, size and modification time, digested (reading
 * the whole binary would cost every process ~0.1 s). An upgraded or rebuilt QEMU is another build:
 * templates saved by one are not restored by the other. The same package installed on two CI
 * runners is the same build (dpkg keeps the files' times), so templates can travel between them.
 */
export function probeQemuBuild(): Promise<string> {
  return once('qemu-build', async () => {
    const { qemu } = await probeQemu();
    if (!qemu.path) throw new HostRequirementError(`${qemu.name} not found (needed to run guests); ${APT_HINT} ${DEBIAN_PACKAGES.qemu}`);
    return binaryIdentity(qemu.path);
  });
}

export function probeSetpriv(): Promise<ToolInfo> {
  return once('setpriv', () => tool('setpriv', ['--version'], versionNumber));
}

export function probeKvmOnce(): Promise<KvmAssessment> {
  return once('kvm', probeKvm);
}

/** Probe the host once per process. */
export function probeHost(): Promise<HostFacts> {
  return once('host', async () => {
    const [{ qemu, q35Machine }, qemuImg, isoTool, mmdebstrap, mkfsExt4, setpriv, gcc, kvm, memAvailable] = await Promise.all([
      probeQemu(),
      probeQemuImg(),
      firstTool(['genisoimage', 'xorrisofs', 'mkisofs'], ['--version']),
      tool('mmdebstrap', ['--version'], versionNumber),
      tool('mkfs.ext4', ['-V'], versionNumber),
      probeSetpriv(),
      tool('gcc', ['--version'], versionNumber),
      probeKvmOnce(),
      memAvailableMiB(),
    ]);
    return {
      qemu,
      qemuImg,
      isoTool,
      mmdebstrap,
      mkfsExt4,
      setpriv,
      gcc,
      kvm,
      q35Machine,
      cores: os.availableParallelism(),
      memAvailableMiB: memAvailable,
      isRoot: process.getuid?.() === 0,
    };
  });
}

const APT_HINT = 'install it with: apt-get install';

/** The missing tool's doctor line, thrown where a guest needs it. */
export function requireTool(info: ToolInfo, debianPackage: string, purpose: string): string {
  if (!info.path) {
    throw new HostRequirementError(`${info.name} not found (needed ${purpose}); ${APT_HINT} ${debianPackage}`);
  }
  return info.path;
}

export const DEBIAN_PACKAGES = {
  qemu: 'qemu-system-x86',
  qemuImg: 'qemu-utils',
  isoTool: 'genisoimage',
  mmdebstrap: 'mmdebstrap',
  mkfsExt4: 'e2fsprogs',
  setpriv: 'util-linux',
  gcc: 'gcc libc6-dev',
} as const;
