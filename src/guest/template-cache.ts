// The template cache: templates (template.ts) saved on disk, shared by every process and run of
// this user. A guest whose spec has a template here is restored from it instead of booting; the
// first start of a spec builds it (a cold boot, then the save), and every later one, in any test
// file, worker or run, is a restore.
//
// An entry is a frozen template's instance directory, renamed to <templatesDir>/<key>:
//   manifest.json   the key's inputs, the files' sizes, what a clone needs (TemplateBase)
//   vmstate, ram    the saved device state and the guest's RAM
//   disk.qcow2      the frozen overlay on the image; cidata.iso or fw_cfg files, serial.log, ...
// The key covers everything that changes what a template holds (template-key.ts). One process
// builds a key at a time (the others wait on its lock); a template is booted as an ordinary
// instance and its directory moves into place whole once saved. An entry that does not check out (another QEMU build, a truncated file) is
// discarded with a log line that says why, and the guest boots cold.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { readEnv } from '../env.ts';
import { GuestlabError } from '../errors.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { isAlive } from '../host/process-identity.ts';
import { readOwnerRecord, removeOwnedDir } from '../reaper/sweep.ts';
import { makePrivateDir } from '../util/fs.ts';
import { acquireLock } from '../util/lock.ts';
import { run } from '../util/run.ts';
import { INSTANCE_FILES, type InstanceDir } from './instance.ts';
import type { TemplateBase } from './launch/clone.ts';
import { canonicalJson, differingInput, TEMPLATE_FORMAT, type TemplateKeyInputs } from './template-key.ts';
import { untrustedFile } from './template-trust.ts';

const MANIFEST = 'manifest.json';
const BUILDING = '.building';
const DEFAULT_CAP_MIB = 16384;

/** What a cache entry records next to its files. */
export interface TemplateManifest {
  format: number;
  key: string;
  inputs: TemplateKeyInputs;
  createdAt: string;
  /** The image directory the frozen overlay (and a direct kernel boot) stands on; an import moves it. */
  imageDir: string;
  bootTimeoutMs: number;
  /** How the template was made (template.ts TemplateTimings). */
  timings: { bootMs: number; saveMs: number; stateBytes: number };
  /** Sizes of the files a restore reads: a truncated one fails the check, not QEMU. */
  files: Record<string, number>;
  /** A clone's needs, with paths inside the entry relative to it. */
  base: Omit<TemplateBase, 'id' | 'instance' | 'statePath' | 'clientPrivateKey' | 'mounts'>;
}
/** An entry that checked out: its manifest and what a clone needs. */
export interface CachedTemplate {
  key: string;
  dir: string;
  manifest: TemplateManifest;
  base: TemplateBase;
}

/** The files whose sizes a manifest records. */
const CHECKED_FILES = ['state', 'memory', 'overlay'] as const satisfies readonly (keyof typeof INSTANCE_FILES)[];

function entryInstance(dir: string, id: string): InstanceDir {
  return { id, dir, file: (name) => path.join(dir, INSTANCE_FILES[name]) };
}

/** A path inside `dir` as a path relative to it; others unchanged. */
function inside(dir: string, file: string): string {
  const relative = path.relative(dir, file);
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

/** The manifest's base with paths inside the entry made relative (`toRelative`) or absolute again. */
function mapBasePaths(base: TemplateManifest['base'], map: (file: string) => string): TemplateManifest['base'] {
  return {
    ...base,
    seed: base.seed === undefined ? undefined : map(base.seed),
    fwCfg: base.fwCfg?.map((entry) => ({ ...entry, file: map(entry.file) })),
    uefi: base.uefi && { ...base.uefi, vars: map(base.uefi.vars) },
  };
}

export class TemplateCache {
  readonly dir: string;
  readonly log: Logger;

  constructor(log: Logger = rootLog, dir = guestlabPaths().templatesDir) {
    this.dir = dir;
    this.log = log;
  }

  entryDir(key: string): string {
    return path.join(this.dir, key);
  }

  /** Where a template is copied before it is renamed into place, when instances live on another filesystem. */
  get buildingDir(): string {
    return path.join(this.dir, BUILDING);
  }

  /**
   * The entry for `inputs`' key if it checks out against them, else undefined. An entry that is
   * there but does not check out is discarded, with a warning that says why.
   */
  async lookup(key: string, inputs: TemplateKeyInputs): Promise<CachedTemplate | undefined> {
    const dir = this.entryDir(key);
    let manifest: TemplateManifest;
    try {
      manifest = JSON.parse(await fs.readFile(path.join(dir, MANIFEST), 'utf8')) as TemplateManifest;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      await this.discard(key, `its manifest cannot be read (${(error as Error).message})`);
      return undefined;
    }
    const problem = await this.#check(dir, key, manifest, inputs);
    if (problem) {
      await this.discard(key, problem);
      return undefined;
    }
    const now = new Date();
    await fs.utimes(dir, now, now).catch(() => undefined); // last use, for pruning
    return { key, dir, manifest, base: await this.#base(dir, key, manifest) };
  }

  async #check(dir: string, key: string, manifest: TemplateManifest, inputs: TemplateKeyInputs): Promise<string | undefined> {
    if (manifest.format !== TEMPLATE_FORMAT) return `it has template format ${manifest.format}, this guestlab writes ${TEMPLATE_FORMAT}`;
    if (manifest.key !== key) return `its manifest names key ${manifest.key}`;
    const differs = differingInput(manifest.inputs, inputs);
    if (differs) return `it was made with another ${differs} (${canonicalJson(pick(manifest.inputs, differs))} there, ${canonicalJson(pick(inputs, differs))} here)`;
    for (const name of CHECKED_FILES) {
      const file = path.join(dir, INSTANCE_FILES[name]);
      const size = await fs.stat(file).then((s) => s.size, () => undefined);
      if (size === undefined) return `its file ${INSTANCE_FILES[name]} is missing`;
      if (size !== manifest.files[name]) return `its file ${INSTANCE_FILES[name]} has ${size} bytes, ${manifest.files[name]} when it was saved (truncated or replaced)`;
    }
    return untrustedFile(dir, manifest);
  }

  async #base(dir: string, key: string, manifest: TemplateManifest): Promise<TemplateBase> {
    const instance = entryInstance(dir, `template-${key.slice(0, 12)}`);
    return {
      ...mapBasePaths(manifest.base, (file) => path.resolve(dir, file)),
      id: instance.id,
      instance,
      statePath: instance.file('state'),
      clientPrivateKey: await fs.readFile(instance.file('clientKey'), 'utf8'),
      mounts: [],
    };
  }

  /**
   * The entry for `key`, built by `build` when there is none (or none that checks out). One process
   * builds a key at a time; the others wait for it and then use what it built. `build` boots and
   * freezes the template as an instance like any other (in the instances directory, where `guestlab
   * ps`, `gc` and the sweep see it); its directory then moves into the cache whole.
   */
  async getOrBuild(
    key: string,
    inputs: TemplateKeyInputs,
    build: () => Promise<{ instance: InstanceDir; manifest: Omit<TemplateManifest, 'format' | 'key' | 'inputs' | 'createdAt' | 'files'> }>,
    signal: AbortSignal | undefined,
  ): Promise<{ entry: CachedTemplate; built: boolean }> {
    const found = await this.lookup(key, inputs);
    if (found) return { entry: found, built: false };
    await makePrivateDir(this.dir);
    const lock = await acquireLock(`template:${this.entryDir(key)}`, { signal, onWait: () => this.log.info(`waiting for another process that is building template ${key}`) });
    try {
      const meanwhile = await this.lookup(key, inputs);
      if (meanwhile) return { entry: meanwhile, built: false };
      await this.#sweepBuilding();
      const made = await build();
      const files: Record<string, number> = {};
      for (const name of CHECKED_FILES) files[name] = (await fs.stat(made.instance.file(name))).size;
      const manifest: TemplateManifest = {
        format: TEMPLATE_FORMAT,
        key,
        inputs,
        createdAt: new Date().toISOString(),
        files,
        ...made.manifest,
        base: mapBasePaths(made.manifest.base, (file) => inside(made.instance.dir, file)),
      };
      await fs.writeFile(path.join(made.instance.dir, MANIFEST), JSON.stringify(manifest, null, 2) + '\n', { mode: 0o600 });
      await this.#moveIn(made.instance, key);
      const entry = await this.lookup(key, inputs);
      if (!entry) throw new GuestlabError(`Template ${key} was saved but does not check out (see the warning above)`);
      await this.prune({ keep: key }).catch((error: Error) => this.log.warn(`pruning the template cache failed: ${error.message}`));
      return { entry, built: true };
    } finally {
      await lock.release();
    }
  }

  /**
   * Removes an entry (renamed aside first, so no reader sees half of it), saying why and what
   * happens instead (by default: the start goes on to build a new one).
   */
  async discard(key: string, why: string, instead = 'the guest boots cold and a new template is saved'): Promise<void> {
    this.log.warn(`template ${key} discarded: ${why}; ${instead}`);
    await this.remove(key);
  }

  async remove(key: string): Promise<boolean> {
    const aside = path.join(this.dir, `.removing-${key}-${randomBytes(4).toString('hex')}`);
    try {
      await fs.rename(this.entryDir(key), aside);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw error;
    }
    await fs.rm(aside, { recursive: true, force: true });
    return true;
  }

  /** Every entry with its manifest (undefined when unreadable), disk use and last use. */
  async list(): Promise<{ key: string; manifest: TemplateManifest | undefined; bytes: number; lastUsed: Date }[]> {
    const entries = [];
    for (const name of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (name.startsWith('.')) continue;
      const dir = this.entryDir(name);
      const stat = await fs.stat(dir).catch(() => undefined);
      if (!stat?.isDirectory()) continue;
      const manifest = await fs.readFile(path.join(dir, MANIFEST), 'utf8').then((text) => JSON.parse(text) as TemplateManifest).catch(() => undefined);
      entries.push({ key: name, manifest, bytes: await diskUse(dir), lastUsed: stat.mtime });
    }
    return entries.sort((a, b) => b.lastUsed.getTime() - a.lastUsed.getTime());
  }

  /**
   * Removes least recently used entries until the cache fits `maxBytes` (GUESTLAB_TEMPLATE_CACHE_MIB,
   * 16 GiB by default); `keep` is never removed. Returns the keys removed.
   */
  async prune(options: { maxBytes?: number; keep?: string } = {}): Promise<string[]> {
    const maxBytes = options.maxBytes ?? (readEnv('GUESTLAB_TEMPLATE_CACHE_MIB') ?? DEFAULT_CAP_MIB) * 1048576;
    const entries = await this.list();
    let total = entries.reduce((sum, e) => sum + e.bytes, 0);
    const removed: string[] = [];
    for (const entry of [...entries].reverse()) {
      if (total <= maxBytes) break;
      if (entry.key === options.keep) continue;
      // An entry being rebuilt right now is left to its builder.
      const lock = await acquireLock(`template:${this.entryDir(entry.key)}`, { timeoutMs: 0 }).catch(() => undefined);
      if (!lock) continue;
      try {
        if (await this.remove(entry.key)) {
          this.log.info(`template ${entry.key} pruned (least recently used; the cache holds ${(total / 1048576).toFixed(0)} MiB, its cap is ${(maxBytes / 1048576).toFixed(0)} MiB)`);
          removed.push(entry.key);
          total -= entry.bytes;
        }
      } finally {
        await lock.release();
      }
    }
    return removed;
  }

  /**
   * Moves a frozen template's instance directory to the entry of `key`: a rename, or where the
   * instances directory is on another filesystem, a sparse copy into .building/ first (it keeps the
   * owner record, so that a copy whose process died is swept) and a rename from there. The owner
   * record goes last: the entry belongs to the cache, not to a process.
   */
  async #moveIn(instance: InstanceDir, key: string): Promise<void> {
    const target = this.entryDir(key);
    let moved = instance.dir;
    try {
      await fs.rename(instance.dir, target);
      moved = target;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EXDEV') throw error;
      await makePrivateDir(this.buildingDir);
      const copy = path.join(this.buildingDir, instance.id);
      await run('cp', ['-a', '--sparse=always', '--', instance.dir, copy]);
      await fs.rename(copy, target);
      await removeOwnedDir(instance.dir);
      moved = target;
    } finally {
      await fs.rm(path.join(moved, INSTANCE_FILES.owner), { force: true });
    }
  }

  /** Copies into the cache whose process died half-way (their owner record names a process that is gone). */
  async #sweepBuilding(): Promise<void> {
    for (const name of await fs.readdir(this.buildingDir).catch(() => [] as string[])) {
      const dir = path.join(this.buildingDir, name);
      const owner = await readOwnerRecord(dir);
      if (owner && isAlive(owner.owner)) continue;
      await removeOwnedDir(dir);
      this.log.info(`removed a template build that its process left behind: ${dir}`);
    }
  }
}
/** Bytes a directory's files take on disk (sparse RAM files count what they hold). */
async function diskUse(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const stat = await fs.stat(path.join(dir, entry.name)).catch(() => undefined);
    if (stat?.isFile()) total += stat.blocks * 512;
  }
  return total;
}
function pick(value: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), value);
}
