// How much of this host guests may use: cores and memory, from the host, its cgroup and the
// environment. Pure parsers are exported for tests.
import fs from 'node:fs/promises';
import os from 'node:os';
import { memAvailableMiB } from '../host/probe.ts';
import { expectPositiveInteger } from '../util/validate.ts';

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

/** cgroup v2 memory.max: "max" or bytes. Returns MiB. */
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

async function readCgroupFile(name: string): Promise<string | undefined> {
  const self = parseCgroupPath(await fs.readFile('/proc/self/cgroup', 'utf8').catch(() => ''));
  if (self === undefined) return undefined;
  // A limit may sit on any ancestor; the tightest one wins.
  let dir = self;
  let tightest: string | undefined;
  for (;;) {
    const text = await fs.readFile(`/sys/fs/cgroup${dir === '/' ? '' : dir}/${name}`, 'utf8').catch(() => undefined);
    if (text !== undefined) {
      const parse = name === 'cpu.max' ? parseCpuMax : parseMemoryMax;
      const value = parse(text);
      const current = tightest === undefined ? undefined : parse(tightest);
      if (value !== undefined && (current === undefined || value < current)) tightest = text;
    }
    if (dir === '/' || dir === '') break;
    dir = dir.slice(0, dir.lastIndexOf('/')) || '/';
  }
  return tightest;
}

function envNumber(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  return expectPositiveInteger(name, Number(raw));
}

export async function detectLimits(env: NodeJS.ProcessEnv = process.env): Promise<BudgetLimits> {
  const cpusOverride = envNumber(env, 'GUESTLAB_BUDGET_CPUS');
  const memoryOverride = envNumber(env, 'GUESTLAB_BUDGET_MEMORY_MIB');
  let cpus = cpusOverride;
  let cpuSource = 'GUESTLAB_BUDGET_CPUS';
  if (cpus === undefined) {
    const quota = parseCpuMax((await readCgroupFile('cpu.max')) ?? '');
    cpus = Math.min(os.availableParallelism(), quota ?? Infinity);
    cpuSource = quota !== undefined && quota < os.availableParallelism() ? 'cgroup cpu.max' : 'os.availableParallelism()';
  }
  let memoryMiB = memoryOverride;
  let memorySource = 'GUESTLAB_BUDGET_MEMORY_MIB';
  if (memoryMiB === undefined) {
    const reserve = envNumber(env, 'GUESTLAB_HOST_RESERVE_MIB') ?? DEFAULT_HOST_RESERVE_MIB;
    const available = await memAvailableMiB();
    const cgroupMax = parseMemoryMax((await readCgroupFile('memory.max')) ?? '');
    memoryMiB = Math.max(0, Math.min(available, cgroupMax ?? Infinity) - reserve);
    memorySource = `${cgroupMax !== undefined && cgroupMax < available ? 'cgroup memory.max' : 'MemAvailable'} minus ${reserve} MiB reserve`;
  }
  return { cpus, memoryMiB, source: { cpus: cpuSource, memory: memorySource } };
}
