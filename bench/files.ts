// npm run bench:files [-- --mib N --runs N --json]
// Throughput of copying one file into and out of a guest: guestlab's copyTo/copyFrom (the guest
// agent's own WRITE_FILE/READ_FILE on its virtio-serial port, and with via: 'ssh' cat over a
// channel of its SSH connection) next to sftp fastPut/fastGet (ssh2, its own connection) and scp
// (the OpenSSH client, a new process each time), on the same guest in the same invocation.
// Prints MB/s (1 MB = 10^6 bytes); asserts nothing.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Client, type SFTPWrapper } from 'ssh2';
import { probeHost, startGuest, type StartedGuest } from 'guestlab';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '100' },
    runs: { type: 'string', default: '2' },
    image: { type: 'string', default: 'debian-12' },
    json: { type: 'boolean', default: false },
  },
});
const mib = Number(values.mib);
const runs = Number(values.runs);
const bytes = mib * 1024 * 1024;
const run = promisify(execFile);

type Method = { name: string; put(local: string, remote: string): Promise<void>; get(remote: string, local: string): Promise<void> };

function sftpMethod(guest: StartedGuest): Method & { close(): void } {
  const client = new Client();
  const ready = new Promise<SFTPWrapper>((resolve, reject) => {
    client.once('ready', () => client.sftp((error, sftp) => (error ? reject(error) : resolve(sftp))));
    client.once('error', reject);
    client.connect({ host: guest.ssh.host, port: guest.ssh.port, username: guest.ssh.user, privateKey: readFileSync(guest.ssh.privateKeyPath) });
  });
  const call = (fn: (sftp: SFTPWrapper, done: (error?: Error | null) => void) => void) =>
    ready.then((sftp) => new Promise<void>((resolve, reject) => fn(sftp, (error) => (error ? reject(error) : resolve()))));
  return {
    name: 'sftp fastPut/fastGet (ssh2)',
    put: (local, remote) => call((sftp, done) => sftp.fastPut(local, remote, done)),
    get: (remote, local) => call((sftp, done) => sftp.fastGet(remote, local, done)),
    close: () => client.end(),
  };
}

function scpMethod(guest: StartedGuest): Method {
  const options = ['-q', '-i', guest.ssh.privateKeyPath, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${guest.ssh.knownHostsPath}`, '-o', 'StrictHostKeyChecking=yes', '-P', String(guest.ssh.port)];
  const remote = (file: string) => `${guest.ssh.user}@${guest.ssh.host}:${file}`;
  return {
    name: 'scp (OpenSSH client)',
    put: async (local, file) => void (await run('scp', [...options, local, remote(file)])),
    get: async (file, local) => void (await run('scp', [...options, remote(file), local])),
  };
}

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const host = await probeHost();
const work = await fs.mkdtemp(path.join(os.tmpdir(), 'gl-bench-files-'));
const source = path.join(work, 'source.bin');
const handle = await fs.open(source, 'w');
for (let i = 0; i < mib; i++) await handle.write(randomBytes(1024 * 1024));
await handle.close();
const expected = await sha256(source);

const guest = await startGuest({ image: values.image, name: 'bench-files' });
const sftp = sftpMethod(guest);
const methods: Method[] = [
  { name: 'guestlab copyTo/copyFrom', put: (l, r) => guest.copyTo(l, r), get: (r, l) => guest.copyFrom(r, l) },
  { name: 'guestlab, via: ssh', put: (l, r) => guest.copyTo(l, r, { via: 'ssh' }), get: (r, l) => guest.copyFrom(r, l, { via: 'ssh' }) },
  sftp,
  scpMethod(guest),
];
const results: { method: string; putMBps: number[]; getMBps: number[] }[] = methods.map((m) => ({ method: m.name, putMBps: [], getMBps: [] }));
try {
  for (let r = 0; r < runs; r++) {
    for (const [i, method] of methods.entries()) {
      process.stderr.write(`run ${r + 1}/${runs}: ${method.name}...\n`);
      const remote = `/var/tmp/bench-${i}.bin`;
      const back = path.join(work, `back-${i}.bin`);
      let t = performance.now();
      await method.put(source, remote);
      results[i]!.putMBps.push(bytes / 1e6 / ((performance.now() - t) / 1000));
      t = performance.now();
      await method.get(remote, back);
      results[i]!.getMBps.push(bytes / 1e6 / ((performance.now() - t) / 1000));
      if ((await sha256(back)) !== expected) throw new Error(`${method.name}: the copy that came back differs from the original`);
      await guest.succeed(['rm', '-f', remote]);
      await fs.rm(back);
    }
  }
} finally {
  sftp.close();
  await guest.stop();
  await fs.rm(work, { recursive: true, force: true });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const context = { accel: guest.accel, host: `${os.cpus()[0]?.model ?? 'cpu'} x${host.cores}, QEMU ${host.qemu.version}`, image: values.image, mib, runs };
if (values.json) {
  console.log(JSON.stringify({ context, results }, null, 2));
} else {
  console.log(`\nguestlab file bench: ${mib} MiB, ${values.image}, accel ${guest.accel}, ${runs} run(s), sha256 checked after each round trip`);
  console.log(`host: ${context.host}`);
  console.log(`${'method (median MB/s)'.padEnd(32)}${'to guest'.padStart(12)}${'from guest'.padStart(12)}`);
  for (const r of results) console.log(`${r.method.padEnd(32)}${median(r.putMBps).toFixed(1).padStart(12)}${median(r.getMBps).toFixed(1).padStart(12)}`);
}
