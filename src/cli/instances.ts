// `guestlab ps`, `ssh`, `stop` and `gc`: the guests running on this host, and what dead sessions left.
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { detectLimits } from '../budget/limits.ts';
import { budgetDir, budgetState, sweepLeases } from '../budget/leases.ts';
import { usedOf } from '../budget/policy.ts';
import { guestlabPaths } from '../config.ts';
import { INSTANCE_FILES } from '../guest/instance.ts';
import { sshCommand } from '../guest/keep.ts';
import { closeQemuByPid } from '../qemu/close.ts';
import { readOwnerRecord, removeOwnedDir, sweep, taggedQemus, type TaggedQemu } from '../reaper/sweep.ts';
import { command } from './args.ts';
import { printTable } from './table.ts';

export const GUEST_NOTE = 'GUEST is an instance id (see ps) or a guest name that only one running guest has.';
const GUEST = { min: 1, max: 1, what: 'one GUEST' };

export const ps = command(
  {
    name: 'ps',
    usage: [['ps', 'list the guests running on this host, and the CPU/memory budget']],
    options: {},
    args: { min: 0, max: 0, what: 'no arguments' },
  },
  async () => {
    const { instancesDir } = guestlabPaths();
    const entries = await fs.readdir(instancesDir).catch(() => [] as string[]);
    const rows = [['INSTANCE', 'IMAGE', 'ACCEL', 'CPUS', 'MEMORY', 'SSH', 'QEMU PID', 'OWNER PID', 'AGE', 'STATE']];
    for (const entry of entries.sort()) {
      const info = await readInstanceInfo(path.join(instancesDir, entry));
      if (!info) continue;
      const kept = (await readOwnerRecord(path.join(instancesDir, entry)))?.keptAt !== undefined;
      const age = Math.round((Date.now() - Date.parse(String(info.startedAt))) / 1000);
      rows.push([info.id, info.image, info.accel, info.cpus, `${info.memoryMiB}M`, `127.0.0.1:${info.sshPort}`, info.qemuPid, info.ownerPid, `${age}s`, kept ? 'kept' : 'running'].map(String));
    }
    printTable(rows);
    const [state, limits] = await Promise.all([budgetState(), detectLimits()]);
    const used = usedOf(state.leases);
    console.log(
      `\nbudget (${budgetDir()}): ${state.leases.length} lease(s) hold ${used.cpus} CPU and ${used.memoryMiB} MiB; ` +
        `${state.queue.length} waiting; limits now ${limits.cpus} CPU (${limits.source.cpus}), ${limits.memoryMiB} MiB (${limits.source.memory})`,
    );
    return 0;
  },
);

export const ssh = command(
  {
    name: 'ssh',
    usage: [['ssh GUEST [-- COMMAND...]', 'open a shell (or run COMMAND) in a running guest, e.g. a kept one']],
    notes: `${GUEST_NOTE}\nEverything after -- is the command for the guest, passed on as typed (its options too).`,
    options: {},
    args: { ...GUEST, missing: 'name the guest, e.g. guestlab ssh web-1a2b3c4d (see guestlab ps)' },
    passThrough: true,
  },
  async ({ positionals, passThrough }) => {
    const info = await findInstance(positionals[0]!, 'ssh');
    const argv = sshCommand({
      host: '127.0.0.1',
      port: info.sshPort,
      user: info.user,
      privateKeyPath: path.join(info.dir, INSTANCE_FILES.clientKey),
      knownHostsPath: path.join(info.dir, INSTANCE_FILES.knownHosts),
      hostKey: '',
    });
    // ssh(1) joins the remote command into one string for the guest's shell; pass it as typed.
    const child = spawn(argv[0]!, [...argv.slice(1), ...(passThrough.length ? ['--', ...passThrough] : [])], { stdio: 'inherit' });
    return new Promise((resolve) => {
      child.once('error', (error) => {
        console.error(`guestlab ssh: could not run ssh (install openssh-client): ${error.message}`);
        resolve(1);
      });
      child.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
    });
  },
);

export const stop = command(
  {
    name: 'stop',
    usage: [['stop GUEST', 'stop a running guest (QMP quit, then SIGKILL) and remove its directory']],
    notes: GUEST_NOTE,
    options: {},
    args: { ...GUEST, missing: 'name the guest, e.g. guestlab stop web-1a2b3c4d (see guestlab ps)' },
  },
  async ({ positionals }) => {
    const info = await findInstance(positionals[0]!, 'stop');
    // Its own QEMU: the instance's tag, and its QMP socket in this very directory.
    const qemu = (await taggedQemus()).find((q) => q.instanceId === info.id && q.instanceDir !== undefined && path.resolve(q.instanceDir) === path.resolve(info.dir));
    if (qemu) await quitQemu(info.dir, qemu);
    await removeOwnedDir(info.dir);
    // A kept guest's budget lease is its QEMU's: free now that QEMU is gone.
    const freed = qemu ? (await sweepLeases()).some((lease) => lease.owner.pid === qemu.pid) : false;
    console.log(`stopped guest ${info.name} (instance ${info.id}${qemu ? `, QEMU pid ${qemu.pid}` : ', QEMU was not running'}) and removed ${info.dir}${freed ? '; its budget lease is free' : ''}`);
    return 0;
  },
);

/** Ends the guest's QEMU the way a test run does: QMP quit, a grace period, then SIGKILL. */
async function quitQemu(instanceDir: string, qemu: TaggedQemu): Promise<void> {
  // By its tag and start time, not only its pid: a pid reused by another process is never signalled.
  const stillRunning = async () => (await taggedQemus()).some((q) => q.pid === qemu.pid && q.start === qemu.start && q.instanceId === qemu.instanceId);
  await closeQemuByPid(qemu.pid, path.join(instanceDir, INSTANCE_FILES.qmp), stillRunning);
}

export const gc = command(
  {
    name: 'gc',
    usage: [['gc [--kept]', 'remove what dead sessions left: QEMU processes, instance dirs, leases;\n--kept also stops the guests kept by GUESTLAB_KEEP=on-failure']],
    options: { kept: { type: 'boolean', help: 'also stop the guests kept by GUESTLAB_KEEP=on-failure, and remove their directories' } },
    args: { min: 0, max: 0, what: 'no arguments' },
  },
  async ({ values }) => {
    const report = await sweep({ includeKept: values.kept });
    const removed = report.instanceDirs.length + report.killedPids.length + report.leases.length + report.tempFiles.length;
    console.log(
      removed === 0
        ? 'Nothing to remove: no guest of a dead session is left.'
        : [
            ...report.killedPids.map((pid) => `killed orphaned QEMU process ${pid}`),
            ...report.instanceDirs.map((dir) => `removed instance directory ${dir}`),
            ...report.leases.map((l) => `released lease of ${l.guest} (${l.cpus} CPU, ${l.memoryMiB} MiB) held by dead process ${l.owner.pid}`),
            ...report.tempFiles.map((file) => `removed ${file}, left half-written by a dead process`),
          ].join('\n'),
    );
    return 0;
  },
);

interface InstanceInfo {
  id: string;
  name: string;
  image: string;
  accel: string;
  cpus: number;
  memoryMiB: number;
  sshPort: number;
  user: string;
  qemuPid: number;
  ownerPid: number;
  startedAt: string;
  dir: string;
}

async function readInstanceInfo(dir: string): Promise<InstanceInfo | undefined> {
  const text = await fs.readFile(path.join(dir, INSTANCE_FILES.info), 'utf8').catch(() => undefined);
  if (!text) return undefined;
  return { ...(JSON.parse(text) as Omit<InstanceInfo, 'dir'>), dir };
}

/** The running guest named by an instance id, or by a guest name only one running guest has. */
async function findInstance(nameOrId: string, command: string): Promise<InstanceInfo> {
  const { instancesDir } = guestlabPaths();
  const all: InstanceInfo[] = [];
  for (const entry of await fs.readdir(instancesDir).catch(() => [] as string[])) {
    const info = await readInstanceInfo(path.join(instancesDir, entry));
    if (info) all.push(info);
  }
  const byId = all.find((info) => info.id === nameOrId);
  if (byId) return byId;
  const byName = all.filter((info) => info.name === nameOrId);
  if (byName.length === 1) return byName[0]!;
  const known = all.map((info) => info.id).join(', ') || 'none';
  throw new TypeError(
    byName.length > 1
      ? `${command}: ${byName.length} running guests are named ${nameOrId}; give an instance id: ${byName.map((i) => i.id).join(', ')}`
      : `${command}: no running guest is called ${nameOrId} (running instances: ${known})`,
  );
}
