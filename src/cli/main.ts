// The `guestlab` command: doctor, image build/ls, ps.
import fs from 'node:fs/promises';
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
import { sweep } from '../reaper/sweep.ts';
import { exists } from '../util/fs.ts';

const USAGE = `Usage: guestlab <command>

Commands:
  doctor [--json]             check this host: QEMU, KVM or TCG, tools, cores, memory, disk
  image ls                    list the images guestlab knows and whether they are built
  image build NAME [--force]  build an image from its recipe (images/NAME.yaml) into the cache
  ps                          list the guests running on this host, and the CPU/memory budget
  gc                          remove what dead sessions left: QEMU processes, instance dirs, leases
  help                        this text

Environment: GUESTLAB_CACHE_DIR (image cache), GUESTLAB_INSTANCES_DIR, GUESTLAB_IMAGES_PATH,
GUESTLAB_FIXTURES_PATH, GUESTLAB_BUDGET_CPUS, GUESTLAB_BUDGET_MEMORY_MIB, GUESTLAB_DEBUG=1 (verbose log).`;

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
        return await gc();
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
  const rows = [['NAME', 'IMAGE', 'ACCEL', 'CPUS', 'MEMORY', 'SSH', 'QEMU PID', 'OWNER PID', 'AGE']];
  for (const entry of entries.sort()) {
    const info = await fs.readFile(path.join(instancesDir, entry, INSTANCE_FILES.info), 'utf8').then((t) => JSON.parse(t) as Record<string, string | number>).catch(() => undefined);
    if (!info) continue;
    const age = Math.round((Date.now() - Date.parse(String(info.startedAt))) / 1000);
    rows.push([info.name, info.image, info.accel, info.cpus, `${info.memoryMiB}M`, `127.0.0.1:${info.sshPort}`, info.qemuPid, info.ownerPid, `${age}s`].map(String));
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

async function gc(): Promise<number> {
  const report = await sweep();
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

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
}
