// `guestlab budget`: the host-wide budget now, and how many guests of a size fit.
import { budgetDir, budgetSnapshot, withBudgetLock } from '../budget/leases.ts';
import { capacity } from '../budget/capacity.ts';
import { usedOf } from '../budget/policy.ts';
import { command } from './args.ts';

export const budget = command(
  {
    name: 'budget',
    usage: [
      [
        'budget [--cpus N] [--memory MIB] [--json]',
        'the budget now (leases with their measured memory, waiting requests)\nand how many guests of that size this host carries, with the arithmetic',
      ],
    ],
    options: {
      cpus: { type: 'string', value: 'N', integer: true, default: '1', example: '2', help: 'CPUs of the guest size to count (default 1)' },
      memory: { type: 'string', value: 'MIB', integer: true, default: '1024', example: '2048', help: 'memory in MiB of the guest size to count (default 1024)' },
      json: { type: 'boolean', help: 'the same as JSON' },
    },
    args: { min: 0, max: 0, what: 'no arguments' },
  },
  async ({ values }) => {
    const guest = { cpus: values.cpus, memoryMiB: values.memory };
    const snapshot = await withBudgetLock((dir) => budgetSnapshot(dir));
    const used = usedOf(snapshot.leases);
    const fit = capacity(
      { cpus: snapshot.cpus.cpus, usedCpus: used.cpus, memoryFreeMiB: snapshot.memoryFreeMiB, wholeMemoryMiB: snapshot.wholeMemoryMiB, cpuSource: snapshot.cpus.source, memorySource: snapshot.memory.source },
      guest,
    );
    if (values.json) {
      console.log(JSON.stringify({ dir: budgetDir(), guest, ...fit, leases: snapshot.leases, queue: snapshot.queue.map((q) => ({ guest: q.guest, cpus: q.cpus, memoryMiB: q.memoryMiB, pid: q.owner.pid })) }, null, 2));
      return 0;
    }
    console.log(`budget (${budgetDir()}):`);
    for (const lease of snapshot.leases) {
      console.log(`  lease ${lease.guest}: ${lease.cpus} CPU, ${lease.memoryMiB} MiB asked, ${lease.measuredMiB === undefined ? 'not running yet' : `${lease.measuredMiB} MiB resident`}`);
    }
    if (snapshot.queue.length) console.log(`  ${snapshot.queue.length} request(s) waiting: ${snapshot.queue.map((q) => `${q.guest} (${q.cpus} CPU)`).join(', ')}`);
    for (const line of fit.lines) console.log(line);
    return 0;
  },
);
