// Snapshot clones: boot a guest once, save its running state, and start fresh guests from it in a
// second or two instead of a full boot.
//
// A template is a booted guest frozen in its instance directory: its QEMU was paused, its RAM and
// device state migrated into a file, and its overlay kept read-only. Its RAM lives in a file of the
// instance directory, so that the saved state can leave it out (x-ignore-shared) and clones map it
// copy-on-write instead of loading a copy. How a clone comes up: launch/clone.ts.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { GuestlabError } from '../errors.ts';
import { log as rootLog } from '../log.ts';
import { quoteArg } from '../util/shell-quote.ts';
import { FRESH_BOOT, qemuStep } from './launch/boot.ts';
import { cloneSteps, RESUME_PERL, RESUME_WAITER, type TemplateBase } from './launch/clone.ts';
import { launch, timingsOf } from './launch/launch.ts';
import { need, newLaunchState, runBoot, runSteps, type FailedStep, type LaunchState, type LaunchStep } from './launch/steps.ts';
import { registerLive, unregisterLive } from './registry.ts';
import { releaseResources } from './resources.ts';
import type { GuestSpec, ResolvedSpec } from './spec.ts';
import { specFrom, type StartOptions } from './start-options.ts';
import type { StartedGuest } from './started-guest.ts';
import { TemplateCache } from './template-cache.ts';
import { notCacheable, templateCacheKey, templateKeyInputs } from './template-key.ts';
import type { BootTimings } from './types.ts';
import { chooseAccel } from './accel.ts';
import { probeKvmOnce, probeQemu } from '../host/probe.ts';
import { ensureImage, type BuiltImage } from '../images/builder.ts';
import type { Logger } from '../log.ts';
import type { Accel } from '../qemu/argv.ts';
import { removeOwnedDir, sweepOnce } from '../reaper/sweep.ts';

/** How the template was made: its boot, and the save of its state. */
export interface TemplateTimings {
  boot: BootTimings;
  /** Pausing the guest and writing its state to the file. */
  saveMs: number;
  stateBytes: number;
}

/** Before QEMU starts: the template's RAM goes into a shared file of its instance directory. */
const memoryFileStep: LaunchStep = {
  name: 'memory-file',
  description: 'put the template’s RAM in a file of its instance directory, for clones to map',
  hint: 'the instance directory needs room for the guest’s memory size',
  async run(state) {
    state.media = { ...state.media, memoryFile: { path: need(state.instance, 'instance').file('memory'), shared: true } };
  },
};

const TEMPLATE_BOOT = FRESH_BOOT.flatMap((step) => (step === qemuStep ? [memoryFileStep, step] : [step]));

/** The steps that freeze a booted guest into a template; `resumeWaiter` reports whether the fast path is there. */
function saveSteps(statePath: string, result: { resumeWaiter: boolean; saveMs: number }): readonly LaunchStep[] {
  return [
    {
      name: 'resume-waiter',
      description: 'start the root process that waits in the saved state to fix up each clone',
      hint: 'without it clones take the slower sudo path; the guest needs perl and systemd-run',
      async run(state) {
        const { spec, log } = state;
        const session = need(state.resources.session, 'SSH session');
        const waiter = await session.exec(`sudo -n sh -c ${quoteArg(RESUME_WAITER)} sh ${quoteArg(spec.user)} ${quoteArg(RESUME_PERL)}`, { timeoutMs: 60_000 });
        result.resumeWaiter = waiter.exitCode === 0;
        if (!result.resumeWaiter) log.debug(`no resume waiter in template ${state.instance?.id} (clones take the sudo path): ${waiter.stderr.toString('utf8').trim()}`);
      },
    },
    {
      name: 'save-state',
      description: 'pause the guest and write its running state to a file',
      hint: 'the instance directory needs room for the state; qemu.log has QEMU’s words',
      async run(state) {
        const started = performance.now();
        // No SSH connection is saved half-open into the state: clones start without one.
        need(state.resources.session, 'SSH session').close();
        await need(state.resources.monitor, 'monitor').saveStateToFile(statePath, Date.now() + need(state.bootTimeoutMs, 'boot timeout'));
        result.saveMs = Math.round(performance.now() - started);
      },
    },
    {
      name: 'freeze',
      description: 'end the template’s QEMU and make its files read-only',
      hint: 'the instance directory must be writable by this user',
      async run(state) {
        const instance = need(state.instance, 'instance');
        await fs.chmod(statePath, 0o400);
        // QEMU goes, its budget lease with it; the directory stays as the clones' base.
        await releaseResources({ ...state.resources, instance: undefined });
        await fs.chmod(instance.file('overlay'), 0o400);
        // Not 0400: QEMU opens the file read-write even to map it copy-on-write (share=off).
        await fs.chmod(instance.file('memory'), 0o600);
        registerLive(instance.id, { dir: instance.dir, pid: undefined, leaseId: undefined });
      },
    },
  ];
}

/** What a template's clones inherit of its boot. */
interface TemplateOrigin {
  spec: ResolvedSpec;
  log: Logger;
  accel: Accel;
  machine: string;
  bootTimeoutMs: number;
}

/** A booted and frozen template in an instance directory of its own. */
async function bootTemplate(spec: ResolvedSpec, options: StartOptions): Promise<{ origin: TemplateOrigin; base: TemplateBase; timings: TemplateTimings }> {
  // Booted and saved without the spec's private networks: each clone joins them with an address of
  // its own after the restore (launch/join-networks.ts).
  const state = await runBoot(() => newLaunchState({ ...spec, networks: [] }, rootLog.child(spec.name), options.signal), TEMPLATE_BOOT);
  const boot = timingsOf(state);
  const instance = need(state.instance, 'instance');
  const statePath = instance.file('state');
  const saved = { resumeWaiter: false, saveMs: 0 };
  await runSteps(state, saveSteps(statePath, saved));
  const stateBytes = (await fs.stat(statePath)).size;
  state.log.debug(`template ${instance.id} saved in ${saved.saveMs} ms (${(stateBytes / 1048576).toFixed(0)} MiB of state)`);
  const keys = need(state.keys, 'keys');
  const media = need(state.media, 'boot media');
  const base: TemplateBase = {
    id: instance.id,
    instance,
    statePath,
    clientPrivateKey: keys.clientPrivateKey,
    hostPublicKey: keys.hostPublicKey,
    hostname: spec.name,
    kernel: media.kernel,
    seed: media.seed,
    fwCfg: media.fwCfg,
    mounts: [...state.mounts],
    cloudInit: state.cloudInit,
    uefi: media.uefi,
    resumeWaiter: saved.resumeWaiter,
    agentInstalled: state.agentInSeed === true && state.resources.agent !== undefined,
  };
  const origin = { spec, log: state.log, accel: need(state.accel, 'accelerator'), machine: need(state.machine, 'machine'), bootTimeoutMs: need(state.bootTimeoutMs, 'boot timeout') };
  return { origin, base, timings: { boot, saveMs: saved.saveMs, stateBytes } };
}

export class GuestTemplate implements AsyncDisposable {
  /** The template's instance id (or, from the template cache, `template-<key>`); clones name it in `clonedFrom`. */
  readonly id: string;
  readonly spec: ResolvedSpec;
  readonly timings: TemplateTimings;
  /** The template cache's key, for a template that lives there (release() leaves its files). */
  readonly cacheKey: string | undefined;
  readonly #base: TemplateBase;
  readonly #origin: TemplateOrigin;
  #released: Promise<void> | undefined;

  private constructor(origin: TemplateOrigin, base: TemplateBase, timings: TemplateTimings, cacheKey?: string) {
    this.#origin = origin;
    this.#base = base;
    this.id = base.id;
    this.spec = origin.spec;
    this.timings = timings;
    this.cacheKey = cacheKey;
  }

  /**
   * Boots the spec once, then freezes it. The template is saved without the spec's private networks;
   * each clone joins them after its restore, with an address of its own.
   */
  static async create(specOrFixture: GuestSpec | string, options: StartOptions = {}): Promise<GuestTemplate> {
    const spec = await specFrom(specOrFixture);
    const { origin, base, timings } = await bootTemplate(spec, options);
    return new GuestTemplate(origin, base, timings);
  }

  /**
   * The template cache's template for the spec, built (booted and saved there) when it has none.
   * `anyName`: the spec did not ask for a name, so its clones take the template's; otherwise each
   * clone is renamed to the spec's name. Undefined when the spec cannot use the cache (`why`).
   */
  static async fromCache(spec: ResolvedSpec, anyName: boolean, options: StartOptions = {}): Promise<{ template: GuestTemplate; built: boolean; image: BuiltImage } | undefined> {
    const why = notCacheable(spec, options.template);
    if (why) {
      rootLog.child(spec.name).debug(`not using the template cache: ${why}`);
      return undefined;
    }
    const log = rootLog.child(spec.name);
    await sweepOnce(log);
    const [host, kvm] = await Promise.all([probeQemu(), probeKvmOnce()]);
    const accel = chooseAccel(spec.accel, kvm);
    const image = await ensureImage(spec.image, { log, signal: options.signal });
    const inputs = await templateKeyInputs(spec, accel, host.q35Machine, image, host);
    const key = templateCacheKey(inputs);
    const cache = new TemplateCache(log);
    const { entry, built } = await cache.getOrBuild(
      key,
      inputs,
      async () => {
        log.info(`building template ${key} of ${spec.image} (the first start of this spec; later ones restore it)`);
        const made = await bootTemplate(spec, options);
        // From here the cache keeps it, not this process (its directory moves there next; a process
        // that dies before that leaves an instance directory the sweep removes).
        unregisterLive(made.base.id);
        const { id: _id, instance, statePath: _state, clientPrivateKey: _key, mounts: _mounts, ...base } = made.base;
        const boot = made.timings.boot;
        return {
          instance,
          manifest: {
            imageDir: image.dir,
            bootTimeoutMs: made.origin.bootTimeoutMs,
            timings: { bootMs: boot.cloudInitDoneMs, saveMs: made.timings.saveMs, stateBytes: made.timings.stateBytes },
            base,
          },
        };
      },
      options.signal,
    );
    const { manifest } = entry;
    // A guest on a network keeps a name of its own: names resolve to addresses there.
    const cloneSpec = anyName && !spec.networks.length ? { ...spec, name: manifest.base.hostname } : spec;
    const origin: TemplateOrigin = { spec: cloneSpec, log: rootLog.child(cloneSpec.name), accel, machine: host.q35Machine, bootTimeoutMs: spec.bootTimeoutMs ?? manifest.bootTimeoutMs };
    const timings: TemplateTimings = {
      boot: { imageReadyMs: 0, qemuStartedMs: 0, sshBannerMs: 0, sshReadyMs: 0, cloudInitDoneMs: manifest.timings.bootMs },
      saveMs: manifest.timings.saveMs,
      stateBytes: manifest.timings.stateBytes,
    };
    return { template: new GuestTemplate(origin, entry.base, timings, key), built, image };
  }

  get released(): boolean {
    return this.#released !== undefined;
  }

  /**
   * A fresh guest restored from the template: its own overlay (it sees none of its siblings'
   * writes), its own QEMU and SSH port, the host's wall-clock time and a reseeded RNG. The same
   * StartedGuest API as a booted guest; its boot id and machine id are the template's.
   */
  clone(options: StartOptions = {}): Promise<StartedGuest> {
    return this.#clone(options, performance.now(), undefined);
  }

  /** `image`: the template's image as this start just checked it (the clone's image step then has nothing to do). */
  async #clone(options: StartOptions, t0: number, cache: BootTimings['template'], image?: BuiltImage): Promise<StartedGuest> {
    if (this.#released) throw new GuestlabError(`Template ${this.id} was released; create a new one to clone from`);
    const { spec, log, accel, machine, bootTimeoutMs } = this.#origin;
    const state: LaunchState = { ...newLaunchState(spec, log, options.signal), t0 };
    state.accel = accel;
    state.machine = machine;
    state.bootTimeoutMs = bootTimeoutMs;
    state.clonedFrom = this.id;
    if (cache) state.timings.template = cache;
    if (image) state.image = image;
    return launch(state, cloneSteps(this.#base));
  }

  /**
   * startGuest() through the template cache: the guest restored from the spec's template (built
   * first when there is none). Undefined when the spec does not use the cache, or when its template
   * failed to restore: that template is discarded (a warning says why) and the caller boots cold.
   */
  static async startFromCache(spec: ResolvedSpec, anyName: boolean, options: StartOptions = {}): Promise<StartedGuest | undefined> {
    const t0 = performance.now();
    const found = await GuestTemplate.fromCache(spec, anyName, options);
    if (!found) return undefined;
    const { template, built, image } = found;
    const key = need(template.cacheKey, 'cache key');
    try {
      return await template.#clone(options, t0, { key, built }, image);
    } catch (error) {
      const step = (error as { step?: FailedStep }).step?.name;
      if (options.signal?.aborted || !step || !RESTORE_STEPS.has(step)) throw error;
      await new TemplateCache(template.#origin.log).discard(key, `a guest restored from it failed in step ${step}: ${(error as Error).message.split('\n')[0]}`, 'the guest boots cold, and the next start of the spec saves a new template');
      return undefined;
    }
  }

  /** Removes the template's files (a cached template's stay in the cache). Clones already running keep working (their QEMUs hold the files open). */
  release(): Promise<void> {
    this.#released ??= (async () => {
      if (this.cacheKey) return;
      await removeOwnedDir(this.#base.instance.dir);
      unregisterLive(this.id);
    })();
    return this.#released;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/** The clone steps whose failure says the template is bad (rather than the host busy or the run aborted). */
const RESTORE_STEPS = new Set(['disk', 'qemu', 'monitor', 'agent-connect', 'restore', 'ssh-forward', 'agent', 'ssh-banner', 'ssh-auth', 'fixup', 'hostname']);

/** Boots `spec` once and saves it as a template to clone fresh guests from. */
export function createTemplate(spec: GuestSpec | string, options: StartOptions = {}): Promise<GuestTemplate> {
  return GuestTemplate.create(spec, options);
}

/**
 * Everything about a spec that changes what a template holds. `anyName`: the spec did not ask for
 * a name (it got a random one), so specs that differ only in that name share a key.
 */
export function templateKey(spec: ResolvedSpec, options: { anyName?: boolean } = {}): string {
  const { bootTimeoutMs: _ignored, name, ...rest } = spec;
  return createHash('sha256').update(JSON.stringify({ ...rest, name: options.anyName ? undefined : name })).digest('hex').slice(0, 16);
}
