// The template cache: templates (template.ts) saved on disk, shared by every process and run of
// this user. A guest whose spec has a template here is restored from it instead of booting; the
// first start of a spec builds it (a cold boot, then the save), and every later one, in any test
// file, worker or run, is a restore.
//
// An entry is a frozen template's instance directory, renamed to <templatesDir>/<key>:
//   manifest.json   the key's inputs, the files' sizes, what a clone needs (TemplateBase)
//   vmstate, ram    the saved device state and the guest's RAM
//   disk.qcow2      the frozen overlay on the image; cidata.iso or fw_cfg files, serial.log, ...
// The key covers everything that changes what a template holds (templateKeyInputs). One process
// builds a key at a time (the others wait on its lock); an entry is built in .building/ and renamed
// into place whole. An entry that does not check out (another QEMU build, a truncated file) is
// discarded with a log line that says why, and the guest boots cold.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { agentSourceDigest } from '../agent/build.ts';
import { guestlabPaths, packageRoot } from '../config.ts';
import { readEnv } from '../env.ts';
import { GuestlabError } from '../errors.ts';
import { probeQemu, probeQemuBuild, type HostFacts } from '../host/probe.ts';
import type { BuiltImage } from '../images/image-dir.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { TCG_CPU_MODEL, type Accel } from '../qemu/argv.ts';
import { isAlive } from '../host/process-identity.ts';
import { readOwnerRecord } from '../reaper/sweep.ts';
import { makePrivateDir } from '../util/fs.ts';
import { acquireLock } from '../util/lock.ts';
import { run } from '../util/run.ts';
import { INSTANCE_FILES, type InstanceDir } from './instance.ts';
import type { TemplateBase } from './launch/clone.ts';
import type { ResolvedSpec } from './spec.ts';

/** Bumped whenever what a template holds, or how a clone is started from it, changes shape. */
export const TEMPLATE_FORMAT = 2;

const MANIFEST = 'manifest.json';
const BUILDING = '.building';
const DEFAULT_CAP_MIB = 16384;

/** Everything that changes what a template holds; its digest is the template's key. */
export interface TemplateKeyInputs {
  format: number;
  guestlab: string;
  /** The QEMU binary: its version and the digest of the file (a rebuilt QEMU is another build). */
  qemu: { version: string; digest: string };
  /** The versioned machine type (pc-q35-7.2), never the alias. */
  machine: string;
  accel: Accel;
  /** TCG's pinned model, or under KVM (-cpu host) the host CPU's model and flags. */
  cpu: string;
  image: { name: string; hash: string };
  /** The guest agent's source: downloaded images get it through cloud-init. */
  agent: string;
  /** The spec without its name, its boot timeout and its mounts (a cached spec has none). */
  spec: Omit<ResolvedSpec, 'name' | 'bootTimeoutMs' | 'mounts' | 'networks'>;
}

/** What a cache entry records next to its files. */
export interface TemplateManifest {
  format: number;
  key: string;
  inputs: TemplateKeyInputs;
  createdAt: string;
  /** The guest's hostname in the saved state (the spec name it was built with). */
  hostname: string;
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

/** Why a spec is not restored from the cache, or undefined when it can be. */
export function notCacheable(spec: ResolvedSpec, option: boolean | undefined): string | undefined {
  if (option === false) return 'template: false';
  if (readEnv('GUESTLAB_TEMPLATES') === false) return 'GUESTLAB_TEMPLATES=0';
  if (spec.networks.length) return 'it joins private networks';
  if (spec.mounts?.length) return 'it mounts host directories (their contents are read at boot)';
  return undefined;
}

/** JSON with object keys sorted, so that equal values give equal text whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

/** The key: 32 hex digits of sha256 over the canonical inputs. */
export function templateCacheKey(inputs: TemplateKeyInputs): string {
  return createHash('sha256').update(canonicalJson(inputs)).digest('hex').slice(0, 32);
}

let version: Promise<string> | undefined;
function guestlabVersion(): Promise<string> {
  version ??= fs.readFile(path.join(packageRoot, 'package.json'), 'utf8').then((text) => String((JSON.parse(text) as { version?: unknown }).version));
  return version;
}

/** Under KVM (-cpu host) the host CPU is the guest's: its model name and flags, digested. */
async function cpuIdentity(accel: Accel): Promise<string> {
  if (accel === 'tcg') return TCG_CPU_MODEL;
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const first = cpuinfo.split('\n\n')[0] ?? '';
  const pick = (field: string) => new RegExp(`^${field}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1] ?? '';
  return `host:${createHash('sha256').update(`${pick('vendor_id')}\n${pick('model name')}\n${pick('flags')}`).digest('hex').slice(0, 16)}`;
}

export async function templateKeyInputs(spec: ResolvedSpec, accel: Accel, machine: string, image: BuiltImage, host?: Pick<HostFacts, 'qemu'>): Promise<TemplateKeyInputs> {
  const facts = host ?? (await probeQemu());
  const { name: _name, bootTimeoutMs: _timeout, mounts: _mounts, networks: _networks, ...rest } = spec;
  return {
    format: TEMPLATE_FORMAT,
    guestlab: await guestlabVersion(),
    qemu: { version: facts.qemu.version ?? 'unknown', digest: await probeQemuBuild() },
    machine,
    accel,
    cpu: await cpuIdentity(accel),
    image: { name: image.name, hash: image.hash },
    agent: await agentSourceDigest(),
    spec: rest,
  };
}

/** The first input that differs between two key input sets, as "qemu.digest" (or undefined). */
export function differingInput(a: unknown, b: unknown, prefix = ''): string | undefined {
  if (canonicalJson(a) === canonicalJson(b)) return undefined;
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const key of keys) {
      const found = differingInput((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], `${prefix}${key}.`);
      if (found) return found;
    }
  }
  return prefix.slice(0, -1) || '(all)';
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
    return undefined;
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

  /** Removes an entry (renamed aside first, so no reader sees half of it), saying why. */
  async discard(key: string, why: string): Promise<void> {
    this.log.warn(`template ${key} discarded: ${why}; the guest boots cold and a new template is saved`);
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
      await fs.rm(instance.dir, { recursive: true, force: true });
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
      await fs.rm(dir, { recursive: true, force: true });
      this.log.info(`removed a template build that its process left behind: ${dir}`);
    }
  }
}

function pick(value: unknown, dotted: string): unknown {
  return dotted.split('.').reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined), value);
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
