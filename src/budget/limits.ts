// How much of this host guests may use: cores and memory, from the host, its cgroup and the
// environment. Pure parsers are exported for tests.
import fs from 'node:fs/promises';
import os from 'node:os';
import { readEnv } from '../env.ts';
import { memAvailableMiB } from '../host/probe.ts';

export interface BudgetLimits {
  cpus: number;
  /** Memory the host can give guests right now, before leases are counted back in. */
  memoryMiB: number;
  /** Where each number came from, for logs and `guestlab doctor`. */
  source: { cpus: string; memory: string };
}

/** QEMU's own memory beside the guest's RAM (device model, TCG translation cache, slirp). */
export const QEMU_OVERHEAD_MIB = 320;
/** Memory left to the host and the test runner. */
export const DEFAULT_HOST_RESERVE_MIB = 1024;

/** cgroup v2 cpu.max: "max 100000" (no limit) or "QUOTA PERIOD". */
export function parseCpuMax(text: string): number | undefined {
  const [quota, period] = text.trim().split(/\s+/);
  if (!quota || quota === 'max' || !period) return undefined;
  const cpus = Number(quota) / Number(period);
  return Number.isFinite(cpus) && cpus > 0 ? Math.max(1, Math.floor(cpus)) : undefined;
}

/** cgroup v2 memory.max or memory.current: "max" or bytes. Returns MiB. */
export function parseMemoryMax(text: string): number | undefined {
  const value = text.trim();
  if (!value || value === 'max') return undefined;
  const bytes = Number(value);
  return Number.isFinite(bytes) && bytes > 0 ? Math.floor(bytes / 1048576) : undefined;
}

/** The cgroup v2 directory of this process, from /proc/self/cgroup ("0::/path"). */
export function parseCgroupPath(text: string): string | undefined {
  const line = text.split('\n').find((l) => l.startsWith('0::'));
  return line ? line.slice(3).trim() : undefined;
}

/** This process's cgroup directory and its ancestors up to the root: a limit may sit on any of them. */
async function cgroupDirs(): Promise<string[]> {
  let dir = parseCgroupPath(await fs.readFile('/proc/self/cgroup', 'utf8').catch(() => ''));
  const dirs: string[] = [];
  while (dir !== undefined) {
    dirs.push(`/sys/fs/cgroup${dir === '/' ? '' : dir}`);
    dir = dir === '/' || dir === '' ? undefined : dir.slice(0, dir.lastIndexOf('/')) || '/';
  }
  return dirs;
}

/** The tightest cpu.max of the cgroup and its ancestors, in whole CPUs. */
async function cgroupCpuQuota(): Promise<number | undefined> {
  let tightest: number | undefined;
  for (const dir of await cgroupDirs()) {
    const cpus = parseCpuMax(await fs.readFile(`${dir}/cpu.max`, 'utf8').catch(() => ''));
    if (cpus !== undefined && (tightest === undefined || cpus < tightest)) tightest = cpus;
  }
  return tightest;
}

/** The least room (memory.max - memory.current) of this process's cgroup and its ancestors. */
async function cgroupMemoryRoomMiB(): Promise<number> {
  let room = Infinity;
  for (const dir of await cgroupDirs()) {
    const max = parseMemoryMax(await fs.readFile(`${dir}/memory.max`, 'utf8').catch(() => ''));
    if (max === undefined) continue;
    const current = parseMemoryMax(await fs.readFile(`${dir}/memory.current`, 'utf8').catch(() => '')) ?? 0;
    room = Math.min(room, Math.max(0, max - current));
  }
  return room;
}

export interface MemoryNow {
  /** Memory the host could give a new program now: MemAvailable, or the cgroup's room if tighter. */
  availableMiB: number;
  reserveMiB: number;
  /** A fixed memory budget for guests (GUESTLAB_BUDGET_MEMORY_MIB) instead of the measured one. */
  fixedMiB?: number | undefined;
  source: string;
}

/**
 * The budget's figures as this process sees them. Overrides (GUESTLAB_BUDGET_*) are this
 * process's own: they are read from its environment at every admission and never shared.
 */
export async function detectLimits(env: NodeJS.ProcessEnv = process.env): Promise<BudgetLimits> {
  const cpus = await detectCpus(env);
  const memory = await memoryNow(env);
  const memoryMiB = memory.fixedMiB ?? Math.max(0, memory.availableMiB - memory.reserveMiB);
  return { cpus: cpus.cpus, memoryMiB, source: { cpus: cpus.source, memory: memory.source } };
}

export async function detectCpus(env: NodeJS.ProcessEnv = process.env): Promise<{ cpus: number; source: string }> {
  const override = readEnv('GUESTLAB_BUDGET_CPUS', env);
  if (override !== undefined) return { cpus: override, source: 'GUESTLAB_BUDGET_CPUS' };
  const quota = await cgroupCpuQuota();
  const cores = os.availableParallelism();
  return { cpus: Math.min(cores, quota ?? Infinity), source: quota !== undefined && quota < cores ? 'cgroup cpu.max' : 'os.availableParallelism()' };
}

/** Read afresh at every admission: memory that other programs take is seen at once. */
export async function memoryNow(env: NodeJS.ProcessEnv = process.env): Promise<MemoryNow> {
  const fixedMiB = readEnv('GUESTLAB_BUDGET_MEMORY_MIB', env);
  const reserveMiB = fixedMiB === undefined ? (readEnv('GUESTLAB_HOST_RESERVE_MIB', env) ?? DEFAULT_HOST_RESERVE_MIB) : 0;
  const available = await memAvailableMiB();
  const cgroupRoom = await cgroupMemoryRoomMiB();
  const availableMiB = Math.min(available, cgroupRoom);
  const source = fixedMiB !== undefined ? 'GUESTLAB_BUDGET_MEMORY_MIB' : `${cgroupRoom < available ? 'cgroup memory.max' : 'MemAvailable'} now, minus ${reserveMiB} MiB reserve`;
  return { availableMiB, reserveMiB, fixedMiB, source };
}

/** Resident memory of a process (VmRSS), in MiB; undefined when it is gone. */
export async function residentMiB(pid: number): Promise<number | undefined> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  const kib = status && /^VmRSS:\s+(\d+)/m.exec(status)?.[1];
  return kib ? Math.ceil(Number(kib) / 1024) : undefined;
}
