// npm run bench:templates [-- --project examples --baseline --json]
// The template cache as a user meets it: the example suite (vitest, its default pool, a process per
// file) run in one invocation, each run in the same conditions but its template cache:
//   0. with --baseline, no cache (GUESTLAB_TEMPLATES=0): every guest boots cold;
//   1. an empty cache: the first start of each spec boots and saves it, the others restore;
//   2. the cache the first run left: every guest is a restore.
// Prints each run's wall time and its guests' ready times (from the JSON report's guest records),
// and how many guests booted cold, built a template or were restored. Asserts nothing.
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { probeHost } from 'guestlab';

const { values } = parseArgs({
  options: {
    project: { type: 'string', default: 'examples' },
    baseline: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
const log = (line: string) => process.stderr.write(`${line}\n`);

interface GuestRecord {
  name: string;
  bootMs: number;
  clonedFrom?: string;
  template?: { key: string; built: boolean };
}
interface Report {
  success: boolean;
  numPassedTests: number;
  numFailedTests: number;
  testResults: { name: string; assertionResults: { meta?: { guestlab?: { guests: GuestRecord[] } } }[] }[];
}

const percentile = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
};

const work = await fs.mkdtemp(path.join(os.tmpdir(), 'gl-bench-templates-'));
const templatesDir = path.join(work, 'templates');

async function runSuite(label: string, env: Record<string, string>) {
  const report = path.join(work, `${label}.json`);
  log(`${label}: vitest run --project ${values.project} ...`);
  const started = performance.now();
  const result = await promisify(execFile)(
    'node_modules/.bin/vitest',
    ['run', '--project', values.project, '--reporter=dot', '--reporter=json', `--outputFile.json=${report}`],
    { env: { ...process.env, GUESTLAB_QUIET: '1', GUESTLAB_TEMPLATES_DIR: templatesDir, NO_COLOR: '1', ...env }, maxBuffer: 1 << 26 },
  ).catch((error: { stdout?: string; stderr?: string }) => error);
  const wallMs = performance.now() - started;
  const parsed = JSON.parse(await fs.readFile(report, 'utf8')) as Report;
  if (!parsed.success) log(`${label}: the suite failed (${parsed.numFailedTests} failed)\n${(result as { stdout?: string }).stdout ?? ''}`);
  // A guest shared by a file's tests is recorded once per test: count it once.
  const byInstance = new Map<string, GuestRecord>();
  for (const file of parsed.testResults) {
    for (const test of file.assertionResults) {
      for (const guest of test.meta?.guestlab?.guests ?? []) byInstance.set(`${guest.name}:${(guest as { instanceId?: string }).instanceId}`, guest);
    }
  }
  const guests = [...byInstance.values()];
  const ready = guests.map((g) => g.bootMs);
  return {
    label,
    wallMs,
    passed: parsed.numPassedTests,
    failed: parsed.numFailedTests,
    guests: guests.length,
    coldBoots: guests.filter((g) => !g.template && !g.clonedFrom).length,
    templatesBuilt: guests.filter((g) => g.template?.built).length,
    restored: guests.filter((g) => g.template && !g.template.built).length,
    clonedInProcess: guests.filter((g) => !g.template && g.clonedFrom).length,
    readyMsP50: percentile(ready, 50),
    readyMsP90: percentile(ready, 90),
    readyMs: ready.sort((a, b) => a - b),
  };
}

const host = await probeHost();
const runs = [
  ...(values.baseline ? [await runSuite('no template cache (GUESTLAB_TEMPLATES=0)', { GUESTLAB_TEMPLATES: '0' })] : []),
  await runSuite('cold template cache', {}),
  await runSuite('warm template cache', {}),
];
await fs.rm(work, { recursive: true, force: true });

const context = { accel: host.kvm.usable ? 'kvm' : 'tcg', host: `${os.cpus()[0]?.model ?? 'cpu'} x${host.cores}, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, QEMU ${host.qemu.version}`, project: values.project };
if (values.json) {
  console.log(JSON.stringify({ context, runs }, null, 2));
} else {
  const s = (ms: number) => (ms / 1000).toFixed(1);
  console.log(`\nguestlab bench:templates: vitest --project ${values.project}, accel ${context.accel}\nhost: ${context.host}\n`);
  const row = (...cells: string[]) => console.log(cells[0]!.padEnd(44) + cells.slice(1).map((c) => c.padStart(10)).join(''));
  row('run', 'wall s', 'tests', 'guests', 'cold', 'built', 'restored', 'ready p50', 'ready p90');
  for (const r of runs) row(r.label, s(r.wallMs), `${r.passed}/${r.passed + r.failed}`, String(r.guests), String(r.coldBoots), String(r.templatesBuilt), String(r.restored), s(r.readyMsP50), s(r.readyMsP90));
  console.log('\nready = from the start of startGuest (or the fixture) to the guest ready for its first command, as recorded in the JSON report (task.meta.guestlab).');
  for (const r of runs) console.log(`${r.label}: ready (s) ${r.readyMs.map(s).join(' ')}`);
}
