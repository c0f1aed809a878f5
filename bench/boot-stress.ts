// npm run bench:stress [-- --boots 20 --parallel 2 --hogs 2 --image debian-12 --cpus 1 --timeout 300 --out DIR --json]
// Fresh boots under load, counted: N boots, P at a time, with H busy loops on the host beside them
// (the conditions in which a boot race shows). Each boot goes through the public API: startGuest,
// one command, stop. A failed boot is counted by its error code and phase, and its error message
// (serial console tail and any dead-end report included) is written to the output directory.
// Not part of CI: it takes about (boots / parallel) x 1.5 min under TCG. Asserts nothing.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureImage, GuestlabError, probeHost, startGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    boots: { type: 'string', default: '20' },
    parallel: { type: 'string', default: '2' },
    hogs: { type: 'string', default: '2' },
    image: { type: 'string', default: 'debian-12' },
    cpus: { type: 'string', default: '1' },
    memory: { type: 'string', default: '1024' },
    timeout: { type: 'string', default: '300' },
    out: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
  strict: true,
});
process.env.GUESTLAB_QUIET ??= '1';

function positive(name: string, raw: string, min = 1): number {
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min) throw new TypeError(`--${name} takes a whole number >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}
const boots = positive('boots', values.boots);
const parallel = positive('parallel', values.parallel);
const hogCount = positive('hogs', values.hogs, 0);
const cpus = positive('cpus', values.cpus);
const memoryMiB = positive('memory', values.memory, 256);
const bootTimeoutMs = positive('timeout', values.timeout) * 1000;
const outDir = values.out ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-stress-')));
await fs.mkdir(outDir, { recursive: true, mode: 0o700 });
const log = (line: string) => process.stderr.write(`${line}\n`);

interface BootRecord {
  index: number;
  ok: boolean;
  ms: number;
  sshReadyMs?: number;
  code?: string;
  phase?: string;
  errorFile?: string;
}

const host = await probeHost();
await ensureImage(values.image);

// Busy loops, one process each, ended by pid when the run ends (also on Ctrl-C).
const hogs: ChildProcess[] = Array.from({ length: hogCount }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
const endHogs = () => {
  for (const hog of hogs) if (hog.exitCode === null && hog.signalCode === null) hog.kill('SIGKILL');
};
process.once('exit', endHogs);
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => { endHogs(); process.exit(130); });

async function oneBoot(index: number): Promise<BootRecord> {
  const t0 = performance.now();
  try {
    const guest = await startGuest({ image: values.image, cpus, memoryMiB, bootTimeoutMs, name: `stress-${index}` });
    try {
      await guest.succeed(['systemctl', 'is-active', 'ssh.service']);
      return { index, ok: true, ms: Math.round(performance.now() - t0), sshReadyMs: guest.timings.sshReadyMs };
    } finally {
      await guest.stop();
    }
  } catch (error) {
    const ms = Math.round(performance.now() - t0);
    const errorFile = path.join(outDir, `boot-${index}.txt`);
    await fs.writeFile(errorFile, `${(error as Error).stack ?? error}\n`, { mode: 0o600 });
    const e = error as GuestlabError & { phase?: string };
    return { index, ok: false, ms, code: e.code ?? 'unknown', phase: e.phase, errorFile };
  }
}

const records: BootRecord[] = [];
const t0 = performance.now();
let next = 0;
await Promise.all(Array.from({ length: Math.min(parallel, boots) }, async () => {
  while (next < boots) {
    const index = next++;
    const record = await oneBoot(index);
    records.push(record);
    log(`boot ${index + 1}/${boots}: ${record.ok ? 'ok' : `FAILED (${record.code}${record.phase ? `, ${record.phase}` : ''}) -> ${record.errorFile}`} in ${(record.ms / 1000).toFixed(1)} s`);
  }
}));
const wallMs = Math.round(performance.now() - t0);
endHogs();

const failed = records.filter((r) => !r.ok);
const okMs = records.filter((r) => r.ok).map((r) => r.ms).sort((a, b) => a - b);
const pick = (p: number) => okMs[Math.min(okMs.length - 1, Math.floor(p * okMs.length))] ?? NaN;
const byKind: Record<string, number> = {};
for (const r of failed) byKind[`${r.code}${r.phase ? `/${r.phase}` : ''}`] = (byKind[`${r.code}${r.phase ? `/${r.phase}` : ''}`] ?? 0) + 1;
const summary = {
  image: values.image,
  accel: host.kvm.usable ? 'kvm' : 'tcg',
  host: `${os.cpus()[0]?.model ?? 'cpu'} x${host.cores}, QEMU ${host.qemu.version}`,
  boots,
  parallel,
  hogs: hogCount,
  cpus,
  memoryMiB,
  bootTimeoutMs,
  failed: failed.length,
  failures: byKind,
  bootToCommandMs: { min: okMs[0] ?? NaN, median: pick(0.5), p95: pick(0.95), max: okMs.at(-1) ?? NaN },
  wallMs,
  outDir,
};
if (values.json) {
  console.log(JSON.stringify({ summary, records }, null, 2));
} else {
  console.log(`\nguestlab boot stress: ${boots} boots of ${values.image}, ${parallel} at a time, ${hogCount} host busy loop(s), ${cpus} vCPU, ${memoryMiB} MiB, accel ${summary.accel}`);
  console.log(`host: ${summary.host}`);
  console.log(`failed boots: ${failed.length} of ${boots}${failed.length ? ` (${Object.entries(byKind).map(([k, n]) => `${n}x ${k}`).join(', ')})` : ''}`);
  const s = (ms: number) => (ms / 1000).toFixed(1);
  console.log(`boot to first command (ok boots), s: min ${s(summary.bootToCommandMs.min)}, median ${s(summary.bootToCommandMs.median)}, p95 ${s(summary.bootToCommandMs.p95)}, max ${s(summary.bootToCommandMs.max)}`);
  console.log(`wall: ${s(wallMs)} s; error reports in ${outDir}`);
}
