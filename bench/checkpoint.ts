// npm run bench:checkpoint [-- --runs N --image NAME --json]
// What a rehearsal loop costs: a guest's fresh boot to a usable shell (the baseline: what trying
// again would cost without checkpoints), next to saving a checkpoint and restoring it N times
// (QEMU loadvm, then SSH reconnected and the clock set), in the same run on the same guest.
// Prints milliseconds; asserts nothing.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { startGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    image: { type: 'string', default: 'debian-12' },
    json: { type: 'boolean', default: false },
  },
});
process.env.GUESTLAB_QUIET = '1';
const runs = Number(values.runs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const guest = await startGuest({ image: values.image, name: 'bench-checkpoint' });
const result: Record<string, unknown> = { host: `${os.cpus()[0]?.model ?? 'cpu'} x${os.availableParallelism()}`, accel: guest.accel, image: values.image };
try {
  const bootMs = guest.timings.cloudInitDoneMs;
  const saved = await guest.checkpoint('bench', { inventory: false });
  const restores = [];
  for (let i = 0; i < runs; i++) {
    await guest.writeFile('/opt/bench-marker', String(i), { sudo: true });
    restores.push(await guest.restore('bench'));
  }
  const execAfter = performance.now();
  await guest.succeed(['true']);
  Object.assign(result, {
    bootMs,
    saveMs: saved.saveMs,
    vmStateMiB: Math.round((saved.vmStateBytes ?? 0) / 1024 ** 2),
    restoreMs: restores.map((r) => r.totalMs),
    loadvmMs: restores.map((r) => r.loadMs),
    reconnectMs: restores.map((r) => r.reconnectMs),
    firstExecAfterRestoreMs: Math.round(performance.now() - execAfter),
  });
  if (values.json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    const total = median(restores.map((r) => r.totalMs));
    console.log(`guestlab checkpoint bench: ${values.image}, accel ${guest.accel}, ${result.host}, ${runs} restore(s)`);
    console.log(`  fresh boot to a usable guest     ${(bootMs / 1000).toFixed(1)} s   (baseline)`);
    console.log(`  checkpoint (savevm)              ${(saved.saveMs / 1000).toFixed(1)} s   (${result.vmStateMiB} MiB of memory state)`);
    console.log(`  restore, median                  ${(total / 1000).toFixed(1)} s   (loadvm ${(median(restores.map((r) => r.loadMs)) / 1000).toFixed(1)} s + SSH and clock ${(median(restores.map((r) => r.reconnectMs)) / 1000).toFixed(1)} s), ${(bootMs / total).toFixed(0)}x faster than booting`);
    console.log(`  each restore                     ${restores.map((r) => `${(r.totalMs / 1000).toFixed(1)} s`).join(', ')}`);
  }
} finally {
  await guest.stop();
}
