// "How many guests of this size can this host carry?", answered with the arithmetic shown.
import { QEMU_OVERHEAD_MIB } from './limits.ts';

export interface CapacityInput {
  cpus: number;
  usedCpus: number;
  /** Memory free for a new guest now (leases counted). */
  memoryFreeMiB: number;
  /** Memory guests could have if none ran. */
  wholeMemoryMiB: number;
  cpuSource: string;
  memorySource: string;
}

export interface Capacity {
  perGuest: { cpus: number; memoryMiB: number };
  now: number;
  total: number;
  /** One line per figure, each with its arithmetic. */
  lines: string[];
}

export function capacity(input: CapacityInput, guest: { cpus: number; memoryMiB: number }): Capacity {
  const memoryMiB = guest.memoryMiB + QEMU_OVERHEAD_MIB;
  const byCpus = (cpus: number) => Math.max(0, Math.floor(cpus / guest.cpus));
  const byMemory = (mib: number) => Math.max(0, Math.floor(mib / memoryMiB));
  const total = Math.min(byCpus(input.cpus), byMemory(input.wholeMemoryMiB));
  const now = Math.min(byCpus(input.cpus - input.usedCpus), byMemory(input.memoryFreeMiB));
  return {
    perGuest: { cpus: guest.cpus, memoryMiB },
    now,
    total,
    lines: [
      `a guest of ${guest.cpus} CPU and ${guest.memoryMiB} MiB takes ${guest.cpus} CPU and ${memoryMiB} MiB (+${QEMU_OVERHEAD_MIB} MiB for QEMU)`,
      `CPUs: ${input.cpus} (${input.cpuSource}), ${input.usedCpus} leased: ${input.cpus} / ${guest.cpus} = ${byCpus(input.cpus)} in total, (${input.cpus} - ${input.usedCpus}) / ${guest.cpus} = ${byCpus(input.cpus - input.usedCpus)} now`,
      `memory: ${input.wholeMemoryMiB} MiB with no guest running (${input.memorySource}), ${input.memoryFreeMiB} MiB free now: ` +
        `${input.wholeMemoryMiB} / ${memoryMiB} = ${byMemory(input.wholeMemoryMiB)} in total, ${input.memoryFreeMiB} / ${memoryMiB} = ${byMemory(input.memoryFreeMiB)} now`,
      `this host carries ${total} such guest(s) at once (the smaller of the two); ${now} more fit now`,
    ],
  };
}
