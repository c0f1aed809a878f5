// node bench/agent-local.ts [-- --runs N --mib N --json]
// Host-side figures of the guest agent with no guest: the agent binary on a socketpair (its fd 3),
// driven by AgentClient. Ping, the builtin `true`, /bin/true (fork + exec) and 100 MiB each way
// (`head -c N /dev/zero` out, `cat >/dev/null` in). They bound what the channel adds; in a TCG guest every figure is larger.
// Prints p50/p90 and MB/s (1 MB = 10^6 bytes); asserts nothing.
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { type Duplex, Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { AgentClient, buildAgent } from '../src/agent/index.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '1000' },
    mib: { type: 'string', default: '100' },
    json: { type: 'boolean', default: false },
  },
});
const runs = Number(values.runs);
const bytes = Number(values.mib) * 1024 * 1024;

const outDir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-agent-bench-'));
const binary = await buildAgent(outDir);
const child = spawn(binary, ['--fd', '3', '--exit-on-eof'], { stdio: ['ignore', 'inherit', 'inherit', 'pipe'] });
const client = await AgentClient.over(child.stdio[3] as Duplex);

async function timed(count: number, once: () => Promise<unknown>): Promise<{ p50: number; p90: number }> {
  for (let i = 0; i < Math.min(20, count); i++) await once(); // warm up
  const samples: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    await once();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number) => Number(samples[Math.floor(q * (samples.length - 1))]!.toFixed(3));
  return { p50: at(0.5), p90: at(0.9) };
}

/** Allocated before any clock runs: first-touching 100 MiB costs more than sending it on some hosts. */
const input = Buffer.alloc(bytes, 0x5a);

async function rate(once: () => Promise<void>): Promise<number> {
  const start = performance.now();
  await once();
  return Number((bytes / 1e6 / ((performance.now() - start) / 1000)).toFixed(1));
}

const figures = {
  pingMs: await timed(runs, () => client.ping()),
  builtinTrueMs: await timed(runs, () => client.exec({ argv: ['true'] })),
  binTrueMs: await timed(Math.max(1, Math.floor(runs / 5)), () => client.exec({ argv: ['/bin/true'] })),
  /** Into the result's Buffer: includes allocating (first-touching) 100 MiB on the host. */
  guestToHostCollectedMBps: await rate(async () => {
    const result = await client.exec({ argv: ['head', '-c', String(bytes), '/dev/zero'] });
    if (result.stdout.length !== bytes) throw new Error(`got ${result.stdout.length} bytes`);
  }),
  /** Into a stdout stream that drops it: what the channel itself moves. */
  guestToHostStreamedMBps: await rate(async () => {
    let got = 0;
    const sink = new Writable({ write: (chunk: Buffer, _encoding, done) => ((got += chunk.length), done()) });
    await client.exec({ argv: ['head', '-c', String(bytes), '/dev/zero'], stdout: sink });
    if (got !== bytes) throw new Error(`got ${got} bytes`);
  }),
  hostToGuestMBps: await rate(async () => {
    const result = await client.exec({ argv: ['sh', '-c', 'cat >/dev/null'], stdin: input });
    if (result.exitCode !== 0) throw new Error(`cat exited ${result.exitCode}`);
  }),
};

client.close();
await new Promise((resolve) => child.once('exit', resolve));
await fs.rm(outDir, { recursive: true, force: true });

if (values.json) {
  console.log(JSON.stringify(figures));
} else {
  console.log(`agent on a socketpair (${os.cpus().length} cores, ${runs} runs)`);
  console.log(`  ping            p50 ${figures.pingMs.p50} ms   p90 ${figures.pingMs.p90} ms`);
  console.log(`  true (builtin)  p50 ${figures.builtinTrueMs.p50} ms   p90 ${figures.builtinTrueMs.p90} ms`);
  console.log(`  /bin/true       p50 ${figures.binTrueMs.p50} ms   p90 ${figures.binTrueMs.p90} ms`);
  console.log(`  ${values.mib} MiB guest -> host  ${figures.guestToHostStreamedMBps} MB/s streamed, ${figures.guestToHostCollectedMBps} MB/s collected into a Buffer`);
  console.log(`  ${values.mib} MiB host -> guest  ${figures.hostToGuestMBps} MB/s`);
}
