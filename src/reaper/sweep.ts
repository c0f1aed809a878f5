// The sweep: instance directories, leases and QEMU processes left by dead sessions. A process is
// killed only when its command line carries the guestlab tag of an instance whose owner is dead,
// and its instance directory (named by its QMP socket) is in this sweep's instances directory, with
// an owner record for that same owner, and not kept. So an unrelated process, even one that reused
// a recorded pid, a tagged process without an instance, and guests of another instances directory
// (another GUESTLAB_INSTANCES_DIR, kept or not) are never signalled.
import fs from 'node:fs/promises';
import path from 'node:path';
import { sweepLeases, type LeaseRecord } from '../budget/leases.ts';
import { guestlabPaths } from '../config.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { isAlive, processCmdline, processStartTime, type ProcessIdentity } from '../host/process-identity.ts';

/** Written into every instance directory before anything that could leak. */
export const OWNER_FILE = 'owner.json';

export interface OwnerRecord {
  instanceId: string;
  owner: ProcessIdentity;
  createdAt: string;
  /** Set when the guest was kept for debugging (GUESTLAB_KEEP): the sweep leaves it alone. */
  keptAt?: string;
}

/**
 * Removes a directory that carries an owner record, the record last: a removal cut short (its
 * process killed half-way) leaves either nothing or a directory whose record still names the dead
 * owner, which the next sweep removes. Removed the other way round, what is left has no record and
 * looks like a directory being created.
 */
export async function removeOwnedDir(dir: string): Promise<void> {
  const entries = await fs.readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!entries) return;
  for (const entry of entries) if (entry !== OWNER_FILE) await fs.rm(path.join(dir, entry), { recursive: true, force: true });
  await fs.rm(path.join(dir, OWNER_FILE), { force: true });
  await fs.rm(dir, { recursive: true, force: true });
}

export async function readOwnerRecord(dir: string): Promise<OwnerRecord | undefined> {
  const text = await fs.readFile(path.join(dir, OWNER_FILE), 'utf8').catch(() => undefined);
  try {
    return text ? (JSON.parse(text) as OwnerRecord) : undefined;
  } catch {
    return undefined;
  }
}

/** The tag QEMU carries in its command line (as an SMBIOS OEM string). */
export function qemuTag(instanceId: string, owner: ProcessIdentity): string {
  return `guestlab:instance=${instanceId}:owner=${owner.pid}.${owner.start}`;
}

export function parseQemuTag(cmdline: string[]): { instanceId: string; owner: ProcessIdentity } | undefined {
  for (const arg of cmdline) {
    const m = /guestlab:instance=([A-Za-z0-9._-]+):owner=(\d+)\.(\d+)/.exec(arg);
    if (m) return { instanceId: m[1]!, owner: { pid: Number(m[2]), start: Number(m[3]) } };
  }
  return undefined;
}

export interface SweepReport {
  instanceDirs: string[];
  killedPids: number[];
  leases: LeaseRecord[];
  /** Half-written images, imports and downloads whose writer is gone. */
  tempFiles: string[];
}

/**
 * Temporary names that carry their writer's pid (the first group): an image being built or
 * downloaded (NAME.tmp-PID), an archive being imported (.import-PID-XXXXXX), a download being
 * written (FILE.PID-RANDOM.part).
 */
const TEMP_NAMES = [/\.tmp-(\d+)$/, /^\.import-(\d+)-/, /\.(\d+)-[0-9a-f]{8}\.part$/];

/** Removes the temporary entries in `dirs` whose writer no longer runs (a pid that runs, even a reused one, keeps its entry). */
export async function sweepTempFiles(dirs: readonly string[], log: Logger): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of dirs) {
    for (const entry of await fs.readdir(dir).catch(() => [] as string[])) {
      const pid = TEMP_NAMES.map((pattern) => pattern.exec(entry)?.[1]).find((found) => found !== undefined);
      if (pid === undefined || processStartTime(Number(pid)) !== undefined) continue;
      const target = path.join(dir, entry);
      try {
        await fs.rm(target, { recursive: true, force: true });
        removed.push(target);
        log.info(`removed what a dead process left half-written: ${target}`);
      } catch (error) {
        log.warn(`could not remove ${target}, left half-written by a dead process: ${(error as Error).message}`);
      }
    }
  }
  return removed;
}

/** The instance directory a QEMU command line names: the directory of its QMP socket (see buildQemuArgv). */
export function instanceDirOf(cmdline: string[]): string | undefined {
  for (const arg of cmdline) {
    const m = /^socket,id=qmp0,path=(.*),server=on,wait=off$/.exec(arg);
    if (m) return path.dirname(m[1]!.replaceAll(',,', ','));
  }
  return undefined;
}

export interface TaggedQemu {
  pid: number;
  /** The kernel's start time of that pid when it was listed: a kill checks it is still the same process. */
  start: number | undefined;
  instanceId: string;
  owner: ProcessIdentity;
  instanceDir: string | undefined;
}

/** QEMU processes tagged by guestlab, with their instance, owner and instance directory. */
export async function taggedQemus(): Promise<TaggedQemu[]> {
  const found: TaggedQemu[] = [];
  for (const entry of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const start = processStartTime(pid);
    const cmdline = processCmdline(pid);
    if (!cmdline?.[0]?.includes('qemu-system')) continue;
    const tag = parseQemuTag(cmdline);
    if (tag) found.push({ pid, start, ...tag, instanceDir: instanceDirOf(cmdline) });
  }
  return found;
}

/** SIGKILL to `pid` only while it is still the process that was listed (same start time). */
function killListed(qemu: Pick<TaggedQemu, 'pid' | 'start'>): boolean {
  if (qemu.start === undefined || processStartTime(qemu.pid) !== qemu.start) return false;
  try {
    process.kill(qemu.pid, 'SIGKILL');
    return true;
  } catch {
    return false; // exited meanwhile
  }
}

export interface SweepOptions {
  log?: Logger;
  instancesDir?: string;
  /** Also end guests kept for debugging (GUESTLAB_KEEP). */
  includeKept?: boolean;
  /** Where half-written images, imports and downloads are looked for (default: the cache's images, templates and downloads). */
  tempDirs?: readonly string[];
}

export async function sweep(options: SweepOptions = {}): Promise<SweepReport> {
  const log = options.log ?? rootLog;
  const instancesDir = options.instancesDir ?? guestlabPaths().instancesDir;
  const report: SweepReport = { instanceDirs: [], killedPids: [], leases: [], tempFiles: [] };
  const root = path.resolve(instancesDir);

  for (const qemu of await taggedQemus()) {
    const { pid, instanceId, owner } = qemu;
    if (isAlive(owner)) continue;
    // Its own directory in this instances directory, recorded for the same owner: anything else is
    // not this sweep's to end (another GUESTLAB_INSTANCES_DIR, or a process that merely carries a tag).
    const dir = qemu.instanceDir === undefined ? undefined : path.resolve(qemu.instanceDir);
    if (dir !== path.join(root, instanceId)) continue;
    const record = await readOwnerRecord(dir);
    if (!record || record.instanceId !== instanceId || record.owner.pid !== owner.pid || record.owner.start !== owner.start) {
      log.debug(`left QEMU ${pid} alone: it carries the tag of instance ${instanceId}, but ${dir} has no owner record for it`);
      continue;
    }
    if (record.keptAt !== undefined && !options.includeKept) continue;
    if (!killListed(qemu)) continue;
    report.killedPids.push(pid);
    log.info(`killed orphaned QEMU ${pid} of instance ${instanceId}`);
  }

  for (const entry of await fs.readdir(instancesDir).catch(() => [] as string[])) {
    const dir = path.join(instancesDir, entry);
    const owner = await readOwnerRecord(dir);
    if (owner && (isAlive(owner.owner) || (owner.keptAt !== undefined && !options.includeKept))) continue;
    if (!owner) {
      // No owner record: either being created this instant or torn. Leave young ones alone.
      const stat = await fs.stat(dir).catch(() => undefined);
      if (!stat || Date.now() - stat.mtimeMs < 60_000) continue;
    }
    await removeOwnedDir(dir);
    report.instanceDirs.push(dir);
    log.info(`removed instance directory of a dead session: ${dir}`);
  }

  report.leases = await sweepLeases();
  const paths = guestlabPaths();
  report.tempFiles = await sweepTempFiles(options.tempDirs ?? [paths.imagesDir, paths.templatesDir, path.join(paths.cacheDir, 'downloads')], log);
  return report;
}

let once: Promise<SweepReport> | undefined;

/** The sweep, once per process, before the first guest starts. */
export function sweepOnce(log?: Logger): Promise<SweepReport> {
  once ??= sweep({ log }).catch((error: unknown) => {
    log?.warn(`sweep of stale guests failed: ${(error as Error).message}`);
    return { instanceDirs: [], killedPids: [], leases: [], tempFiles: [] };
  });
  return once;
}
