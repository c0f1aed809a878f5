// The `guestlab` command: doctor, image build/ls, ps, ssh, stop, gc.
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { GuestlabError } from '../errors.ts';
import { formatDoctor, runDoctor } from '../host/doctor.ts';
import { ensureImage, imageDirName, IMAGE_FILES } from '../images/builder.ts';
import { listRecipes } from '../images/catalog.ts';
import { loadRecipe } from '../images/recipe.ts';
import { budgetDir, budgetState, usageOf } from '../budget/leases.ts';
import { detectLimits } from '../budget/limits.ts';
import { INSTANCE_FILES } from '../guest/instance.ts';
import { sshCommand } from '../guest/keep.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { readOwnerRecord, sweep, taggedQemus } from '../reaper/sweep.ts';
import { exists } from '../util/fs.ts';

const USAGE = `Usage: guestlab <command>

Commands:
  doctor [--json]             check this host: QEMU, KVM or TCG, tools, cores, memory, disk
  image ls                    list the images guestlab knows and whether they are built
  image build NAME [--force]  build an image from its recipe (images/NAME.yaml) into the cache
  ps                          list the guests running on this host, and the CPU/memory budget
  ssh GUEST [-- COMMAND...]   open a shell (or run COMMAND) in a running guest, e.g. a kept one
  stop GUEST                  stop a running guest (QMP quit, then SIGKILL) and remove its directory
  gc [--kept]                 remove what dead sessions left: QEMU processes, instance dirs, leases;
                              --kept also stops the guests kept by GUESTLAB_KEEP=on-failure
GUEST is an instance id (see ps) or a guest name that only one running guest has.
  help                        this text

Environment: GUESTLAB_CACHE_DIR (image cache), GUESTLAB_INSTANCES_DIR, GUESTLAB_IMAGES_PATH,
GUESTLAB_FIXTURES_PATH, GUESTLAB_BUDGET_CPUS, GUESTLAB_BUDGET_MEMORY_MIB, GUESTLAB_KEEP=on-failure,
GUESTLAB_TIMEOUT_SCALE, GUESTLAB_DEBUG=1 (verbose log).`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'doctor':
        return await doctor(rest);
      case 'image':
        return await image(rest);
      case 'ps':
        return await ps();
      case 'gc':
        return await gc(rest);
      case 'ssh':
        return await ssh(rest);
      case 'stop':
        return await stop(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(USAGE);
        return command === undefined ? 2 : 0;
      default:
        console.error(`guestlab: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (error) {
    if (error instanceof GuestlabError || error instanceof TypeError) {
      console.error(`guestlab: ${error.message}`);
      return 1;
    }
    throw error;
  }
}

async function doctor(args: string[]): Promise<number> {
  const report = await runDoctor();
  if (args.includes('--json')) console.log(JSON.stringify({ accel: report.accel, problems: report.problems, lines: report.lines, facts: report.facts }, null, 2));
  else console.log(formatDoctor(report));
  return report.problems.length ? 1 : 0;
}

async function image(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === 'ls') {
    const recipes = await listRecipes();
    const { imagesDir } = guestlabPaths();
    console.log(['NAME', 'CACHED', 'SIZE', 'RECIPE'].join('\t'));
    for (const [name, file] of recipes) {
      const recipe = await loadRecipe(file);
      const disk = path.join(imagesDir, imageDirName(recipe), IMAGE_FILES.disk);
      const cached = await exists(disk);
      const size = cached ? `${((await fs.stat(disk)).size / 1024 ** 2).toFixed(0)} MiB` : '-';
      console.log([name, cached ? 'yes' : 'no', size, file].join('\t'));
    }
    return 0;
  }
  if (sub === 'build') {
    const names = rest.filter((a) => !a.startsWith('--'));
    if (names.length === 0) {
      console.error('guestlab image build: name the image to build, e.g. guestlab image build debian-12 (see guestlab image ls)');
      return 2;
    }
    for (const name of names) {
      const built = await ensureImage(name, { force: rest.includes('--force') });
      console.log(`${name}: ${built.built ? `built in ${(built.buildMs / 1000).toFixed(1)}s` : 'already built (cached)'} at ${built.dir}`);
    }
    return 0;
  }
  console.error(`guestlab image: unknown subcommand "${sub ?? ''}"; use "image ls" or "image build NAME"`);
  return 2;
}

async function ps(): Promise<number> {
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
  const used = usageOf(state.leases);
  console.log(
    `\nbudget (${budgetDir()}): ${state.leases.length} lease(s) hold ${used.cpus} CPU and ${used.memoryMiB} MiB; ` +
      `${state.queue.length} waiting; limits now ${limits.cpus} CPU (${limits.source.cpus}), ${limits.memoryMiB} MiB (${limits.source.memory})`,
  );
  return 0;
}

async function gc(args: string[]): Promise<number> {
  const report = await sweep({ includeKept: args.includes('--kept') });
  const removed = report.instanceDirs.length + report.killedPids.length + report.leases.length;
  console.log(
    removed === 0
      ? 'Nothing to remove: no guest of a dead session is left.'
      : [
          ...report.killedPids.map((pid) => `killed orphaned QEMU process ${pid}`),
          ...report.instanceDirs.map((dir) => `removed instance directory ${dir}`),
          ...report.leases.map((l) => `released lease of ${l.guest} (${l.cpus} CPU, ${l.memoryMiB} MiB) held by dead process ${l.owner.pid}`),
        ].join('\n'),
  );
  return 0;
}

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
async function findInstance(nameOrId: string | undefined, command: string): Promise<InstanceInfo> {
  if (!nameOrId) throw new TypeError(`guestlab ${command}: name the guest, e.g. guestlab ${command} web-1a2b3c4d (see guestlab ps)`);
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
      ? `guestlab ${command}: ${byName.length} running guests are named ${nameOrId}; give an instance id: ${byName.map((i) => i.id).join(', ')}`
      : `guestlab ${command}: no running guest is called ${nameOrId} (running instances: ${known})`,
  );
}

async function ssh(args: string[]): Promise<number> {
  const separator = args.indexOf('--');
  const [nameOrId] = separator === -1 ? args : args.slice(0, separator);
  const command = separator === -1 ? [] : args.slice(separator + 1);
  const info = await findInstance(nameOrId, 'ssh');
  const argv = sshCommand({
    host: '127.0.0.1',
    port: info.sshPort,
    user: info.user,
    privateKeyPath: path.join(info.dir, INSTANCE_FILES.clientKey),
    knownHostsPath: path.join(info.dir, INSTANCE_FILES.knownHosts),
    hostKey: '',
  });
  // ssh(1) joins the remote command into one string for the guest's shell; pass it as typed.
  const child = spawn(argv[0]!, [...argv.slice(1), ...(command.length ? ['--', ...command] : [])], { stdio: 'inherit' });
  return new Promise((resolve) => {
    child.once('error', (error) => {
      console.error(`guestlab ssh: could not run ssh (install openssh-client): ${error.message}`);
      resolve(1);
    });
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

async function stop(args: string[]): Promise<number> {
  const info = await findInstance(args[0], 'stop');
  const qemu = (await taggedQemus()).find((q) => q.instanceId === info.id);
  if (qemu) {
    // Ask QEMU to quit; kill it if it does not within 5 s.
    const qmp = await QmpClient.connect(path.join(info.dir, INSTANCE_FILES.qmp), 2000).catch(() => undefined);
    await qmp?.execute('quit').catch(() => undefined);
    qmp?.close();
    for (let waited = 0; waited < 5000 && (await taggedQemus()).some((q) => q.pid === qemu.pid); waited += 100) await sleep(100);
    try {
      process.kill(qemu.pid, 'SIGKILL');
    } catch {
      // it quit
    }
  }
  await fs.rm(info.dir, { recursive: true, force: true });
  console.log(`stopped guest ${info.name} (instance ${info.id}${qemu ? `, QEMU pid ${qemu.pid}` : ', QEMU was not running'}) and removed ${info.dir}`);
  return 0;
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}
