// The `guestlab` command: doctor, image build/ls, ps, ssh, stop, gc.
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { GuestlabError } from '../errors.ts';
import { assessCi, formatDoctor, runDoctor, type CiFacts, type CiImageState } from '../host/doctor.ts';
import { ensureDownloadedImage, ensureImageFromRecipe, entryHash, imageDirName, IMAGE_FILES, readManifest } from '../images/builder.ts';
import { listImageFiles, loadEntry, resolveImage, type CatalogEntry } from '../images/catalog.ts';
import { exportImages, imageCacheKey, importImages, removeImages, verifyCachedImages } from '../images/archive.ts';
import { describeRelease } from '../images/traits.ts';
import { budgetDir, budgetState } from '../budget/leases.ts';
import { usedOf } from '../budget/policy.ts';
import { budget } from './budget.ts';
import { detectLimits } from '../budget/limits.ts';
import { INSTANCE_FILES } from '../guest/instance.ts';
import { sshCommand } from '../guest/keep.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { readOwnerRecord, sweep, taggedQemus } from '../reaper/sweep.ts';
import { exists } from '../util/fs.ts';

const USAGE = `Usage: guestlab <command>

Commands:
  doctor [--json]             check this host: QEMU, KVM or TCG, tools, cores, memory, disk
  doctor --ci [--require-kvm] [--require-images A,B]
                              a summary for CI logs (accelerator, budget, image cache); exits 1
                              when a requirement is missing; --require-kvm makes TCG one
  image ls                    list the images guestlab knows (recipes and downloads): release,
                              source, boot, whether cached, size, digest, recipe file or URL
  image build NAME... [--force]
                              build images from their recipes (images/NAME.yaml) into the cache
  image pull NAME... [--force]
                              download images of download entries, verify their digests, cache them
  image key NAME... [--json]  print a cache key for CI that changes exactly when one of the
                              images would be built differently
  image export NAME... --output FILE
                              write built images (with their digests) into one tar file
  image import FILE           unpack an exported file into the cache, verifying every digest
  image verify [NAME...]      check cached images against the digests recorded at build/import
  image rm NAME...            remove every cached build of the named images
  ps                          list the guests running on this host, and the CPU/memory budget
  budget [--cpus N] [--memory MIB] [--json]
                              the budget now (leases with their measured memory, waiting requests)
                              and how many guests of that size this host carries, with the arithmetic
  ssh GUEST [-- COMMAND...]   open a shell (or run COMMAND) in a running guest, e.g. a kept one
  stop GUEST                  stop a running guest (QMP quit, then SIGKILL) and remove its directory
  gc [--kept]                 remove what dead sessions left: QEMU processes, instance dirs, leases;
                              --kept also stops the guests kept by GUESTLAB_KEEP=on-failure
GUEST is an instance id (see ps) or a guest name that only one running guest has.
  help                        this text

Environment: GUESTLAB_CACHE_DIR (image cache), GUESTLAB_INSTANCES_DIR, GUESTLAB_IMAGES_PATH,
GUESTLAB_FIXTURES_PATH, GUESTLAB_BUDGET_CPUS, GUESTLAB_BUDGET_MEMORY_MIB, GUESTLAB_BUDGET_CPU_OVERCOMMIT,
GUESTLAB_HOST_RESERVE_MIB, GUESTLAB_BUDGET_DIR, GUESTLAB_KEEP=on-failure,
GUESTLAB_TIMEOUT_SCALE, GUESTLAB_REQUIRE_KVM=1, GUESTLAB_EVIDENCE_DIR, GUESTLAB_DEBUG=1 (verbose log),
GUESTLAB_OFFLINE=1 (never download), GUESTLAB_OVMF_CODE and GUESTLAB_OVMF_VARS (UEFI firmware files).`;

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
      case 'budget':
        return await budget(rest);
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
  const { flags } = splitArgs(args, ['--require-images']);
  const report = await runDoctor();
  if (flags.has('--ci')) {
    const { text, problems } = assessCi(report, await ciFacts(), {
      requireKvm: flags.has('--require-kvm') || process.env.GUESTLAB_REQUIRE_KVM === '1',
      requireImages: (flags.get('--require-images') ?? '').split(',').filter(Boolean),
      github: process.env.GITHUB_ACTIONS === 'true',
    });
    console.log(text);
    return problems.length ? 1 : 0;
  }
  if (flags.has('--json')) console.log(JSON.stringify({ accel: report.accel, problems: report.problems, lines: report.lines, facts: report.facts }, null, 2));
  else console.log(formatDoctor(report));
  return report.problems.length ? 1 : 0;
}

/** What the CI summary shows beside the host: the budget in effect and every known image's cache state. */
async function ciFacts(): Promise<CiFacts> {
  const { imagesDir } = guestlabPaths();
  const images: CiImageState[] = [];
  for (const file of (await listImageFiles()).values()) {
    const entry = await loadEntry(file);
    const manifest = await readManifest(path.join(imagesDir, imageDirName(entry)));
    images.push({ name: entry.name, hash: entryHash(entry).slice(0, 16), built: !!manifest, diskBytes: manifest?.diskBytes, digests: !!manifest?.files });
  }
  return { limits: await detectLimits(), imagesDir, images };
}

async function image(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { names, flags } = splitArgs(rest, ['--output']);
  switch (sub) {
    case 'ls': {
      const { imagesDir } = guestlabPaths();
      const rows = [['NAME', 'RELEASE', 'SOURCE', 'BOOT', 'CACHED', 'SIZE', 'DIGEST', 'FROM']];
      for (const [name, file] of await listImageFiles()) {
        const entry = await loadEntry(file);
        const dir = path.join(imagesDir, imageDirName(entry));
        const manifest = await readManifest(dir);
        const disk = path.join(dir, IMAGE_FILES.disk);
        const size = manifest && (await exists(disk)) ? `${((await fs.stat(disk)).size / 1024 ** 2).toFixed(0)} MiB` : '-';
        rows.push([name, ...describeEntry(entry), manifest ? 'yes' : 'no', size, ...digestColumns(entry, manifest?.download?.digest)]);
      }
      printTable(rows);
      return 0;
    }
    case 'build':
    case 'pull': {
      const verb = sub === 'build' ? 'build' : 'pull';
      if (names.length === 0) return usageError(`image ${verb}: name the image, e.g. guestlab image ${verb} ${verb === 'build' ? 'debian-12' : 'ubuntu-24.04'} (see guestlab image ls)`);
      const entries = await Promise.all(names.map((name) => resolveImage(name)));
      const wrong = entries.find((entry) => (entry.kind === 'recipe') !== (verb === 'build'));
      if (wrong) {
        return usageError(wrong.kind === 'recipe'
          ? `image pull: ${wrong.name} is built from a recipe (${wrong.recipe.source}), not downloaded: use guestlab image build ${wrong.name}`
          : `image build: ${wrong.name} is downloaded (${wrong.download.url}), not built: use guestlab image pull ${wrong.name}`);
      }
      for (const entry of entries) {
        const options = { force: flags.has('--force') };
        const got = entry.kind === 'recipe' ? await ensureImageFromRecipe(entry.recipe, options) : await ensureDownloadedImage(entry.download, options);
        const done = verb === 'build' ? `built in ${(got.buildMs / 1000).toFixed(1)}s` : `pulled and checked in ${(got.buildMs / 1000).toFixed(1)}s`;
        console.log(`${entry.name}: ${got.built ? done : 'already in the cache'} at ${got.dir}`);
      }
      return 0;
    }
    case 'key': {
      const { key, images } = await imageCacheKey(names);
      if (flags.has('--json')) console.log(JSON.stringify({ key, arch: process.arch, images }, null, 2));
      else console.log(key);
      return 0;
    }
    case 'export': {
      const output = flags.get('--output');
      if (!output) return usageError('image export: say where to write the archive, e.g. guestlab image export debian-12 --output images.tar');
      await exportImages(names, output);
      return 0;
    }
    case 'import': {
      if (names.length !== 1) return usageError('image import: name one archive written by guestlab image export, e.g. guestlab image import images.tar');
      const { images } = await importImages(names[0]!);
      for (const i of images) console.log(`${i.name}: ${i.outcome}${i.current ? '' : ' (its recipe has changed since; this build will not be used)'} at ${i.dir}`);
      return 0;
    }
    case 'verify': {
      const results = await verifyCachedImages(names);
      if (results.length === 0) console.log('no images in the cache');
      for (const r of results) console.log(`${r.problems.length ? 'FAIL' : ' ok '} ${path.basename(r.dir)} (${(r.ms / 1000).toFixed(1)}s)${r.problems.map((p) => `\n       ${p}`).join('')}`);
      return results.some((r) => r.problems.length) ? 1 : 0;
    }
    case 'rm': {
      const removed = await removeImages(names);
      console.log(removed.length ? removed.map((dir) => `removed ${dir}`).join('\n') : `nothing cached for ${names.join(', ')}`);
      return 0;
    }
    default:
      return usageError(`image: unknown subcommand "${sub ?? ''}"; use one of: ls, build, pull, key, export, import, verify, rm`);
  }
}

/** RELEASE, SOURCE and BOOT of `image ls`. */
function describeEntry(entry: CatalogEntry): [string, string, string] {
  if (entry.kind === 'download') return [entry.download.release, 'download', entry.download.firmware];
  return [describeRelease(entry.recipe.suite), 'recipe', entry.recipe.boot === 'firmware' ? 'bios|uefi' : 'kernel'];
}

/** DIGEST and FROM of `image ls`: the recipe hash and file, or the verified (or pinned) digest and the URL. */
function digestColumns(entry: CatalogEntry, verified: string | undefined): [string, string] {
  if (entry.kind === 'recipe') return [`recipe:${entryHash(entry).slice(0, 16)}`, entry.recipe.source];
  const digest = verified ?? entry.download.digest;
  const shown = digest ? digest.slice(0, digest.indexOf(':') + 17) : 'checksums';
  return [shown, entry.download.url];
}

/** Splits arguments into names and flags; flags in `valued` take the next argument as their value. */
function splitArgs(args: string[], valued: string[] = []): { names: string[]; flags: Map<string, string | undefined> } {
  const names: string[] = [];
  const flags = new Map<string, string | undefined>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('--')) names.push(arg);
    else if (arg.includes('=')) flags.set(arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1));
    else if (valued.includes(arg)) flags.set(arg, args[++i]);
    else flags.set(arg, undefined);
  }
  return { names, flags };
}

function usageError(message: string): number {
  console.error(`guestlab ${message}`);
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
  const used = usedOf(state.leases);
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
