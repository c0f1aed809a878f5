// `guestlab budget`: the host-wide budget now, and how many guests of a size fit.
import { parseArgs } from 'node:util';
import { budgetDir, budgetSnapshot, withBudgetLock } from '../budget/leases.ts';
import { capacity } from '../budget/capacity.ts';
import { usedOf } from '../budget/policy.ts';

function positiveInteger(flag: string, raw: string): number {
  if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new TypeError(`--${flag} takes a positive whole number, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

export async function budget(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { cpus: { type: 'string', default: '1' }, memory: { type: 'string', default: '1024' }, json: { type: 'boolean', default: false } },
    strict: true,
    allowPositionals: false,
  });
  const guest = { cpus: positiveInteger('cpus', values.cpus), memoryMiB: positiveInteger('memory', values.memory) };
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
}
