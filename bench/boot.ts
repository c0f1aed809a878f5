// npm run bench [-- --runs N --cpus N --exec N --json]
// Boot-to-first-command (with phases), exec round trip and teardown of guestlab, next to the plain
// shell baseline (bench/baseline.sh: qemu + genisoimage seed + ssh polling loop) on the same image,
// in the same invocation. Prints a table (or JSON); asserts nothing.
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { ensureImage, probeHost, startGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    cpus: { type: 'string', default: '2' },
    memory: { type: 'string', default: '1024' },
    exec: { type: 'string', default: '200' },
    // A fresh ssh process per command costs about a second under TCG: fewer samples on that side.
    'baseline-exec': { type: 'string', default: '20' },
    json: { type: 'boolean', default: false },
    image: { type: 'string', default: 'debian-12' },
  },
});
const runs = Number(values.runs);
const cpus = Number(values.cpus);
const memoryMiB = Number(values.memory);
const execCount = Number(values.exec);
const baselineExecCount = Number(values['baseline-exec']);

interface Sample {
  imageReadyMs: number;
  qemuStartedMs: number;
  sshBannerMs?: number;
  sshReadyMs: number;
  cloudInitDoneMs: number;
  firstCommandMs: number;
  teardownMs: number;
  execMs: number[];
}

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
};
const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length / 2;
  return sorted.length % 2 ? sorted[Math.floor(mid)]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

async function runBaseline(imageDir: string, accel: string): Promise<Sample> {
  const script = path.join(import.meta.dirname, 'baseline.sh');
  const { stdout } = await promisify(execFile)('bash', [script, imageDir, String(cpus), String(memoryMiB), accel, String(baselineExecCount)], { maxBuffer: 1 << 24 });
  const raw = JSON.parse(stdout.trim().split('\n').at(-1)!) as Omit<Sample, 'execMs' | 'firstCommandMs'> & { execUs: number[] };
  // A shell script's first command is its first successful ssh: the readiness probe itself.
  return { ...raw, firstCommandMs: raw.cloudInitDoneMs, execMs: raw.execUs.map((us) => us / 1000) };
}

async function runGuestlab(image: string): Promise<Sample> {
  const t0 = performance.now();
  const guest = await startGuest({ image, cpus, memoryMiB });
  await guest.succeed(['true']);
  const firstCommandMs = performance.now() - t0;
  const execMs: number[] = [];
  for (let i = 0; i < execCount; i++) {
    const start = performance.now();
    await guest.exec(['true']);
    execMs.push(performance.now() - start);
  }
  const stopStart = performance.now();
  await guest.stop();
  const teardownMs = performance.now() - stopStart;
  return { ...guest.timings, firstCommandMs, teardownMs, execMs };
}

const host = await probeHost();
const built = await ensureImage(values.image);
const accel = host.kvm.usable ? 'kvm' : 'tcg';
const results: { guestlab: Sample[]; baseline: Sample[] } = { guestlab: [], baseline: [] };
for (let run = 0; run < runs; run++) {
  // Alternate the order so neither side always boots on a warmer page cache.
  const order = run % 2 === 0 ? (['baseline', 'guestlab'] as const) : (['guestlab', 'baseline'] as const);
  for (const side of order) {
    process.stderr.write(`run ${run + 1}/${runs}: ${side}...\n`);
    results[side].push(side === 'baseline' ? await runBaseline(built.dir, accel) : await runGuestlab(values.image));
  }
}

const rows: [string, (s: Sample[]) => number][] = [
  ['image ready', (s) => median(s.map((x) => x.imageReadyMs))],
  ['qemu started', (s) => median(s.map((x) => x.qemuStartedMs))],
  ['ssh ready (banner+auth)', (s) => median(s.map((x) => x.sshReadyMs))],
  ['cloud-init done', (s) => median(s.map((x) => x.cloudInitDoneMs))],
  ['boot to first command', (s) => median(s.map((x) => x.firstCommandMs))],
  ['exec round trip p50', (s) => percentile(s.flatMap((x) => x.execMs), 50)],
  ['exec round trip p95', (s) => percentile(s.flatMap((x) => x.execMs), 95)],
  ['teardown', (s) => median(s.map((x) => x.teardownMs))],
];
const summary = rows.map(([label, pick]) => {
  const ours = pick(results.guestlab);
  const theirs = pick(results.baseline);
  return { label, guestlabMs: ours, baselineMs: theirs, ratio: theirs / ours };
});
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
  console.log(JSON.stringify({ context, summary, results }, null, 2));
} else {
  console.log(`\nguestlab bench: ${context.image}, ${cpus} vCPU, ${memoryMiB} MiB, accel ${accel}, ${runs} run(s), ${execCount} execs (baseline ${baselineExecCount})`);
  console.log(`host: ${context.host}`);
  console.log(`${'phase (ms from start, median)'.padEnd(32)}${'guestlab'.padStart(12)}${'baseline'.padStart(12)}${'baseline/guestlab'.padStart(20)}`);
  for (const row of summary) {
    console.log(`${row.label.padEnd(32)}${row.guestlabMs.toFixed(1).padStart(12)}${row.baselineMs.toFixed(1).padStart(12)}${row.ratio.toFixed(2).padStart(20)}`);
  }
  console.log('\nbaseline exec = a new ssh process per command (what a script does); guestlab exec = a channel on one pinned connection.');
}
