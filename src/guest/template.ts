// Snapshot clones: boot a guest once, save its running state, and start fresh guests from it in a
// second or two instead of a full boot.
//
// A template is a booted guest frozen in its instance directory: its QEMU was paused, its RAM and
// device state migrated into a file (QMP migrate to `exec:cat`), and its overlay kept read-only.
// A clone gets an overlay of its own on that frozen overlay, a QEMU with the same devices started
// with `-incoming`, its own forwarded SSH port, and then, once it runs, the host's wall-clock time
// and fresh randomness (a clone must not repeat its siblings' random numbers).
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { AbortedError, GuestlabError, QemuError } from '../errors.ts';
import { createOverlay } from '../disk/overlay.ts';
import { ensureImage } from '../images/builder.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { quoteArg } from '../util/shell-quote.ts';
import { writePrivateFile } from '../util/fs.ts';
import type { InstanceDir } from './instance.ts';
import { registerLive, unregisterLive } from './registry.ts';
import type { GuestSpec, ResolvedSpec } from './spec.ts';
import { freshBootPlan, guestFromLaunch, launchGuest, specFrom, type LaunchedGuest, type LaunchPlan, type StartOptions } from './start.ts';
import { shutdownParts, type BootTimings, type StartedGuest } from './started-guest.ts';

/** How the template was made: its boot, and the save of its state. */
export interface TemplateTimings {
  boot: BootTimings;
  /** Pausing the guest and writing its state to the file. */
  saveMs: number;
  stateBytes: number;
}

/**
 * The in-guest half of a clone's fix-up, as root: the host's time, then fresh randomness mixed into
 * the kernel's pool and a forced reseed of its generator (RNDRESEEDCRNG), so that clones restored
 * from one state do not hand out the same random numbers. perl is in every Debian (perl-base);
 * python3 where there is no perl.
 */
const FIXUP_SCRIPT = [
  'date -u -s "@$1" >/dev/null || exit',
  'if command -v perl >/dev/null; then',
  `  exec perl -e 'open(my $f, ">", "/dev/urandom") or die "/dev/urandom: $!\\n"; syswrite($f, pack("H*", $ARGV[0])) or die "write: $!\\n"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!\\n"' "$2"`,
  'elif command -v python3 >/dev/null; then',
  `  exec python3 -c 'import fcntl, sys; f = open("/dev/urandom", "wb", buffering=0); f.write(bytes.fromhex(sys.argv[1])); fcntl.ioctl(f, 0x5207)' "$2"`,
  'else echo "neither perl nor python3 to reseed the RNG" >&2; exit 3; fi',
].join('\n');

export class GuestTemplate implements AsyncDisposable {
  /** The template's instance id; clones name it in `clonedFrom`. */
  readonly id: string;
  readonly spec: ResolvedSpec;
  readonly timings: TemplateTimings;
  readonly #launched: LaunchedGuest;
  readonly #statePath: string;
  #released: Promise<void> | undefined;

  private constructor(launched: LaunchedGuest, statePath: string, timings: TemplateTimings) {
    this.#launched = launched;
    this.#statePath = statePath;
    this.id = launched.instance.id;
    this.spec = launched.plan.spec;
    this.timings = timings;
  }

  /**
   * Boots the spec once, then freezes it. Specs with private networks cannot be templates: every
   * clone would come up with the template's addresses.
   */
  static async create(specOrFixture: GuestSpec | string, options: StartOptions = {}): Promise<GuestTemplate> {
    const spec = await specFrom(specOrFixture);
    if (spec.networks.length) {
      throw new GuestlabError(
        `Guest ${spec.name} joins private networks (${spec.networks.map((n) => n.name).join(', ')}), so it cannot be a template: every clone would ` +
          'come up with the same addresses. Boot such guests fresh (guestFixture option clone: false, or startGuest()).',
      );
    }
    const launched = await launchGuest(await freshBootPlan(spec, options));
    const { parts, instance } = launched;
    const statePath = instance.file('state');
    try {
      const started = performance.now();
      // No SSH connection is saved half-open into the state: clones start without one.
      parts.session.close();
      await parts.qmp.execute('stop');
      await parts.qmp.execute('migrate', { uri: `exec:cat > ${quoteArg(statePath)}` });
      await waitForMigration(parts.qmp, spec.name);
      const saveMs = Math.round(performance.now() - started);
      const stateBytes = (await fs.stat(statePath)).size;
      await fs.chmod(statePath, 0o400);
      // QEMU goes, its budget lease with it; the directory stays as the clones' base.
      await shutdownParts({ ...parts, instance: undefined });
      await fs.chmod(instance.file('overlay'), 0o400);
      registerLive(instance.id, { dir: instance.dir, pid: undefined, leaseId: undefined });
      launched.plan.log.debug(`template ${instance.id} saved in ${saveMs} ms (${(stateBytes / 1048576).toFixed(0)} MiB of state)`);
      return new GuestTemplate(launched, statePath, { boot: launched.timings, saveMs, stateBytes });
    } catch (error) {
      await shutdownParts(parts).catch(() => undefined);
      throw error instanceof GuestlabError ? error : new GuestlabError(`Saving template of guest ${spec.name} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  get released(): boolean {
    return this.#released !== undefined;
  }

  /**
   * A fresh guest restored from the template: its own overlay (it sees none of its siblings'
   * writes), its own QEMU and SSH port, the host's wall-clock time and a reseeded RNG. The same
   * StartedGuest API as a booted guest; its boot id and machine id are the template's.
   */
  async clone(options: StartOptions = {}): Promise<StartedGuest> {
    if (this.#released) throw new GuestlabError(`Template ${this.id} was released; create a new one to clone from`);
    const { signal } = options;
    const template = this.#launched;
    const { spec, accel, bootTimeoutMs } = template.plan;
    const t0 = performance.now();
    // The image the template's overlay stands on must still be there and intact.
    await ensureImage(spec.image, { log: template.plan.log, signal });
    const from = template.instance;
    const statePath = this.#statePath;
    const plan: LaunchPlan = {
      spec,
      accel,
      bootTimeoutMs,
      log: template.plan.log,
      signal,
      t0,
      imageReadyMs: Math.round(performance.now() - t0),
      clonedFrom: this.id,
      async prepare(instance: InstanceDir) {
        const clientKey = await fs.readFile(from.file('clientKey'), 'utf8');
        await writePrivateFile(instance.file('clientKey'), clientKey);
        await createOverlay(from.file('overlay'), instance.file('overlay'), signal);
        // The clone's console continues the template's, so that its evidence shows the boot.
        await fs.copyFile(from.file('serial'), instance.file('serial'));
        await fs.chmod(instance.file('serial'), 0o600);
        return {
          disk: instance.file('overlay'),
          seed: from.file('seed'),
          kernel: template.kernel,
          clientPrivateKey: clientKey,
          hostPublicKey: template.hostKey,
          attachments: [],
          incoming: `exec:cat ${quoteArg(statePath)}`,
          serialAppend: true,
        };
      },
      async settle(session) {
        const seed = randomBytes(64).toString('hex');
        const now = (Date.now() / 1000).toFixed(3);
        const result = await session.run(`sudo -n sh -c ${quoteArg(FIXUP_SCRIPT)} sh ${now} ${seed}`, { timeoutMs: 60_000, signal });
        if (signal?.aborted) throw new AbortedError(`Cloning guest ${spec.name}`, { cause: signal.reason });
        if (result.exitCode !== 0) {
          throw new GuestlabError(`Guest ${spec.name} (clone of ${from.id}) could not set its clock or reseed its RNG (exit code ${result.exitCode}): ${result.stderr.toString('utf8').trim()}`);
        }
      },
    };
    const launched = await launchGuest(plan);
    return guestFromLaunch(launched);
  }

  /** Removes the template's files. Clones already running keep working (their QEMUs hold the files open). */
  release(): Promise<void> {
    this.#released ??= (async () => {
      await fs.rm(this.#launched.instance.dir, { recursive: true, force: true });
      unregisterLive(this.id);
    })();
    return this.#released;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/** Boots `spec` once and saves it as a template to clone fresh guests from. */
export function createTemplate(spec: GuestSpec | string, options: StartOptions = {}): Promise<GuestTemplate> {
  return GuestTemplate.create(spec, options);
}

/** Everything about a spec that changes what a template holds. */
export function templateKey(spec: ResolvedSpec): string {
  const { bootTimeoutMs: _ignored, ...rest } = spec;
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex').slice(0, 16);
}

async function waitForMigration(qmp: QmpClient, name: string): Promise<void> {
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new QemuError(`Saving the state of guest ${name} failed: ${info['error-desc'] ?? info.status}`);
    }
    await sleep(20);
  }
}
