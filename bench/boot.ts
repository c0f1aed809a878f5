// npm run bench [-- --runs N --cpus N --exec N --clones N --suite N --json]
// Everything a guest test pays for, each figure beside the plain shell baseline (bench/baseline.sh:
// qemu + genisoimage seed + ssh polling loop) on the same image in the same invocation:
//   1. boot to first command, with its phases, without cloudConfig (cloud-init left off) and with
//      `cloudConfig: {}` (cloud-init runs); clone to first command (snapshot clones);
//   2. per-command cost: a builtin and /bin/true through the guest agent and on guestlab's SSH
//      command shell, a fresh SSH session per command, the guest's own fork+exec of /bin/true, and
//      the baseline's ssh process per command;
//   3. teardown; 4. the wall time of an N-guest suite (one command per guest), fresh and cloned.
// Prints a table (or JSON) with the accelerator and the host; asserts nothing.
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { createTemplate, ensureImage, probeHost, startGuest, type StartedGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    cpus: { type: 'string', default: '2' },
    memory: { type: 'string', default: '1024' },
    exec: { type: 'string', default: '200' },
    // A fresh ssh process per command costs about a second under TCG: fewer samples on that side.
    'baseline-exec': { type: 'string', default: '20' },
    clones: { type: 'string', default: '5' },
    suite: { type: 'string', default: '4' },
    json: { type: 'boolean', default: false },
    image: { type: 'string', default: 'debian-12' },
  },
});
process.env.GUESTLAB_QUIET ??= '1';
const runs = Number(values.runs);
const cpus = Number(values.cpus);
const memoryMiB = Number(values.memory);
const execCount = Number(values.exec);
const baselineExecCount = Number(values['baseline-exec']);
const cloneCount = Number(values.clones);
const suiteSize = Number(values.suite);
const log = (line: string) => process.stderr.write(`${line}\n`);

interface BootSample {
  imageReadyMs: number;
  qemuStartedMs: number;
  sshReadyMs: number;
  cloudInitDoneMs: number;
  firstCommandMs: number;
  teardownMs: number;
}

const percentile = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
};
const median = (xs: number[]) => percentile(xs, 50);
const timed = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
  const start = performance.now();
  const value = await fn();
  return [value, performance.now() - start];
};
async function samples(count: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) out.push((await timed(fn))[1]);
  return out;
}

const host = await probeHost();
const built = await ensureImage(values.image);
const accel = host.kvm.usable ? 'kvm' : 'tcg';

async function runBaseline(count = baselineExecCount, guestCpus = cpus): Promise<BootSample & { execMs: number[] }> {
  const script = path.join(import.meta.dirname, 'baseline.sh');
  const { stdout } = await promisify(execFile)('bash', [script, built.dir, String(guestCpus), String(memoryMiB), accel, String(count)], { maxBuffer: 1 << 24 });
  const raw = JSON.parse(stdout.trim().split('\n').at(-1)!) as Omit<BootSample, 'firstCommandMs'> & { execUs: number[] };
  // A shell script's first command is its first successful ssh: the readiness probe itself.
  return { ...raw, firstCommandMs: raw.cloudInitDoneMs, execMs: raw.execUs.map((us) => us / 1000) };
}

/** What one command costs on a running guest, several ways. */
async function commandCosts(guest: StartedGuest) {
  await guest.exec(['true']);
  await guest.exec(['true'], { via: 'ssh' }); // the command shell is open from here on
  const builtin = await samples(execCount, () => guest.exec(['true']));
  const binTrue = await samples(execCount, () => guest.exec(['/bin/true']));
  const sshBuiltin = await samples(execCount, () => guest.exec(['true'], { via: 'ssh' }));
  const sshBinTrue = await samples(execCount, () => guest.exec(['/bin/true'], { via: 'ssh' }));
  const ownSession = await samples(Math.min(execCount, 50), () => guest.exec(['true'], { ownChannel: true, via: 'ssh' }));
  // The guest's own cost of starting a program, timed inside the guest.
  const inGuest = await guest.succeed(['sh', '-c', 'n=200; s=$(date +%s%N); i=0; while [ $i -lt $n ]; do /bin/true; i=$((i+1)); done; e=$(date +%s%N); echo $(( (e - s) / n ))']);
  return { builtin, binTrue, sshBuiltin, sshBinTrue, ownSession, inGuestBinTrueMs: Number(inGuest) / 1e6 };
}

async function runGuestlab() {
  const t0 = performance.now();
  // Cold boots: the template cache would make these restores (bench/templates.ts times those).
  const guest = await startGuest({ image: values.image, cpus, memoryMiB }, { template: false });
  await guest.succeed(['true']);
  const firstCommandMs = performance.now() - t0;
  const costs = await commandCosts(guest);
  const [, teardownMs] = await timed(() => guest.stop());
  // The same boot with cloud-init running (an empty cloudConfig still hands it the seed).
  const t1 = performance.now();
  const withCloudInit = await startGuest({ image: values.image, cpus, memoryMiB, cloudConfig: {} }, { template: false });
  await withCloudInit.succeed(['true']);
  const cloudInitFirstCommandMs = performance.now() - t1;
  await withCloudInit.stop();
  return { boot: { ...guest.timings, firstCommandMs, teardownMs } satisfies BootSample, cloudInitFirstCommandMs, cloudInitTimings: withCloudInit.timings, costs };
}

async function runClones() {
  const [template, templateMs] = await timed(() => createTemplate({ image: values.image, cpus, memoryMiB, name: 'bench-template' }));
  try {
    const clones: { firstCommandMs: number; restoreMs: number; sshReadyMs: number; teardownMs: number }[] = [];
    for (let i = 0; i < cloneCount; i++) {
      const t0 = performance.now();
      const clone = await template.clone();
      await clone.succeed(['true']);
      const firstCommandMs = performance.now() - t0;
      const [, teardownMs] = await timed(() => clone.stop());
      clones.push({ firstCommandMs, restoreMs: clone.timings.restoreMs ?? NaN, sshReadyMs: clone.timings.sshReadyMs, teardownMs });
    }
    return { templateMs, saveMs: template.timings.saveMs, stateMiB: template.timings.stateBytes / 1048576, clones };
  } finally {
    await template.release();
  }
}

/** N guests of 1 vCPU, one command each, as many at a time as the host budget allows. */
async function runSuites() {
  const one = async (guest: StartedGuest) => {
    await guest.succeed(['true']);
    await guest.stop();
  };
  const [, freshMs] = await timed(() => Promise.all(Array.from({ length: suiteSize }, async () => one(await startGuest({ image: values.image, cpus: 1, memoryMiB }, { template: false })))));
  const [, clonedMs] = await timed(async () => {
    const template = await createTemplate({ image: values.image, cpus: 1, memoryMiB, name: 'bench-suite' });
    try {
      await Promise.all(Array.from({ length: suiteSize }, async () => one(await template.clone())));
    } finally {
      await template.release();
    }
  });
  // The baseline has no budget: run as many at once as there are cores.
  const [, baselineMs] = await timed(async () => {
    const queue = Array.from({ length: suiteSize }, (_, i) => i);
    await Promise.all(Array.from({ length: Math.min(suiteSize, host.cores) }, async () => {
      while (queue.shift() !== undefined) await runBaseline(0, 1);
    }));
  });
  return { freshMs, clonedMs, baselineMs };
}

const guestlabRuns: Awaited<ReturnType<typeof runGuestlab>>[] = [];
const baselineRuns: Awaited<ReturnType<typeof runBaseline>>[] = [];
for (let run = 0; run < runs; run++) {
  // Alternate the order so neither side always boots on a warmer page cache.
  for (const side of run % 2 === 0 ? ['baseline', 'guestlab'] : ['guestlab', 'baseline']) {
    log(`run ${run + 1}/${runs}: ${side} boot...`);
    if (side === 'baseline') baselineRuns.push(await runBaseline());
    else guestlabRuns.push(await runGuestlab());
  }
}
log(`clones: a template, then ${cloneCount} clones one after another...`);
const cloned = await runClones();
log(`suite of ${suiteSize} guests: fresh, cloned, baseline...`);
const suite = suiteSize > 0 ? await runSuites() : undefined;

const ours = guestlabRuns.map((r) => r.boot);
const bootRows: [string, number, number][] = (
  [
    ['image ready', (s) => s.imageReadyMs],
    ['qemu started', (s) => s.qemuStartedMs],
    ['ssh ready (banner+auth)', (s) => s.sshReadyMs],
    ['cloud-init done', (s) => s.cloudInitDoneMs],
    ['boot to first command (no cloudConfig)', (s) => s.firstCommandMs],
    ['teardown', (s) => s.teardownMs],
  ] as [string, (s: BootSample) => number][]
).map(([label, pick]) => [label, median(ours.map(pick)), median(baselineRuns.map(pick))]);
const costs = guestlabRuns.map((r) => r.costs);
const cloudInitFirst = median(guestlabRuns.map((r) => r.cloudInitFirstCommandMs));
const baselineExec = baselineRuns.flatMap((r) => r.execMs);
const cloneFirst = cloned.clones.map((c) => c.firstCommandMs);
const summary = {
  boot: bootRows.map(([label, guestlab, baseline]) => ({ label, guestlabMs: guestlab, baselineMs: baseline, ratio: baseline / guestlab })),
  bootWithCloudInit: { firstCommandMs: cloudInitFirst, baselineMs: median(baselineRuns.map((s) => s.firstCommandMs)) },
  clone: {
    templateMs: cloned.templateMs,
    saveMs: cloned.saveMs,
    stateMiB: cloned.stateMiB,
    cloneToFirstCommandMsMedian: median(cloneFirst),
    cloneToFirstCommandMs: cloneFirst,
    restoreMsMedian: median(cloned.clones.map((c) => c.restoreMs)),
    teardownMsMedian: median(cloned.clones.map((c) => c.teardownMs)),
    fullBootMs: median(ours.map((s) => s.firstCommandMs)),
    baselineBootMs: median(baselineRuns.map((s) => s.firstCommandMs)),
  },
  perCommand: {
    builtinP50: percentile(costs.flatMap((c) => c.builtin), 50),
    builtinP95: percentile(costs.flatMap((c) => c.builtin), 95),
    binTrueP50: percentile(costs.flatMap((c) => c.binTrue), 50),
    binTrueP95: percentile(costs.flatMap((c) => c.binTrue), 95),
    sshBuiltinP50: percentile(costs.flatMap((c) => c.sshBuiltin), 50),
    sshBuiltinP95: percentile(costs.flatMap((c) => c.sshBuiltin), 95),
    sshBinTrueP50: percentile(costs.flatMap((c) => c.sshBinTrue), 50),
    sshBinTrueP95: percentile(costs.flatMap((c) => c.sshBinTrue), 95),
    ownSessionP50: percentile(costs.flatMap((c) => c.ownSession), 50),
    ownSessionP95: percentile(costs.flatMap((c) => c.ownSession), 95),
    inGuestBinTrue: median(costs.map((c) => c.inGuestBinTrueMs)),
    baselineSshP50: percentile(baselineExec, 50),
    baselineSshP95: percentile(baselineExec, 95),
  },
  suite: suite && { guests: suiteSize, ...suite },
};
const context = {
  accel,
  host: `${os.cpus()[0]?.model ?? 'cpu'} x${host.cores}, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, QEMU ${host.qemu.version}`,
  image: values.image,
  cpus,
  memoryMiB,
  runs,
  execCount,
  baselineExecCount,
};
if (values.json) {
  console.log(JSON.stringify({ context, summary, guestlabRuns, baselineRuns, cloned }, null, 2));
} else {
  const row = (label: string, a: string, b: string, c: string) => console.log(`${label.padEnd(40)}${a.padStart(12)}${b.padStart(12)}${c.padStart(20)}`);
  const ms = (x: number) => x.toFixed(1);
  console.log(`\nguestlab bench: ${context.image}, ${cpus} vCPU, ${memoryMiB} MiB, accel ${accel}, ${runs} run(s), ${execCount} execs (baseline ${baselineExecCount})`);
  console.log(`host: ${context.host}\n`);
  row('boot (ms from start, median)', 'guestlab', 'baseline', 'baseline/guestlab');
  for (const r of summary.boot) row(r.label, ms(r.guestlabMs), ms(r.baselineMs), r.ratio.toFixed(2));
  const ci = summary.bootWithCloudInit;
  row('boot to first command (cloudConfig: {})', ms(ci.firstCommandMs), ms(ci.baselineMs), (ci.baselineMs / ci.firstCommandMs).toFixed(2));
  const c = summary.clone;
  row('clone to first command', ms(c.cloneToFirstCommandMsMedian), ms(c.baselineBootMs), (c.baselineBootMs / c.cloneToFirstCommandMsMedian).toFixed(2));
  console.log(`  (template: booted and saved in ${ms(c.templateMs)} ms, save ${ms(c.saveMs)} ms, ${c.stateMiB.toFixed(0)} MiB of state; ` +
    `clone restore ${ms(c.restoreMsMedian)} ms, first command ${cloneFirst.map(ms).join(' / ')} ms; full boot ${ms(c.fullBootMs)} ms)\n`);
  const p = summary.perCommand;
  row('per command (ms)', 'p50', 'p95', '');
  row('builtin `true`, guestlab agent', ms(p.builtinP50), ms(p.builtinP95), '');
  row('/bin/true, guestlab agent', ms(p.binTrueP50), ms(p.binTrueP95), '');
  row('builtin `true`, SSH command shell', ms(p.sshBuiltinP50), ms(p.sshBuiltinP95), '');
  row('/bin/true, SSH command shell', ms(p.sshBinTrueP50), ms(p.sshBinTrueP95), '');
  row('`true` on a new SSH session each', ms(p.ownSessionP50), ms(p.ownSessionP95), '');
  row('baseline: a new ssh process each', ms(p.baselineSshP50), ms(p.baselineSshP95), '');
  row('in-guest fork+exec of /bin/true', ms(p.inGuestBinTrue), '', '');
  if (summary.suite) {
    const s = summary.suite;
    console.log('');
    row(`suite of ${s.guests} guests, 1 vCPU, wall (ms)`, 'guestlab', 'baseline', 'baseline/guestlab');
    row('fresh boots', ms(s.freshMs), ms(s.baselineMs), (s.baselineMs / s.freshMs).toFixed(2));
    row('clones of a template (incl. its boot)', ms(s.clonedMs), ms(s.baselineMs), (s.baselineMs / s.clonedMs).toFixed(2));
  }
  console.log('\nbaseline exec = a new ssh process per command (what a script does); guestlab exec = the guest agent on its virtio-serial port, or with via: \'ssh\' the guest\'s command shell on one pinned connection.');
}
