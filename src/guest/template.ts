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
import { createOverlay } from '../disk/qemu-img.ts';
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

/**
 * The fast path of the same fix-up. Before the template is saved, a root process waits on a FIFO
 * that only the guest's user may write; every clone is restored with that process still waiting.
 * The clone then writes the time and the seed into the FIFO from its command shell (shell builtins:
 * no sudo, no new SSH session) and reads the waiter's answer from a second FIFO.
 */
const RESUME_DIR = '/run/guestlab';
const RESUME_WAITER = [
  'set -e',
  `install -d -m 0755 ${RESUME_DIR}`,
  `rm -f ${RESUME_DIR}/resume ${RESUME_DIR}/resumed`,
  `mkfifo -m 0620 ${RESUME_DIR}/resume`,
  `mkfifo -m 0640 ${RESUME_DIR}/resumed`,
  `chgrp "$1" ${RESUME_DIR}/resume ${RESUME_DIR}/resumed`,
  `exec systemd-run --quiet --unit=guestlab-resume --service-type=exec --property=CollectMode=inactive-or-failed perl -e "$2"`,
].join('\n');
const RESUME_PERL = [
  `open(my $in, "<", "${RESUME_DIR}/resume") or die "resume: $!\\n";`,
  'my ($now, $seed) = split(" ", scalar(<$in>) // "");',
  'my $error = "";',
  '$error = "bad request" unless defined $seed && $now =~ /^[0-9.]+$/ && $seed =~ /^[0-9a-f]+$/;',
  '$error ||= "date failed" if system("date", "-u", "-s", "\\@$now") != 0;',
  'if (!$error) { if (open(my $r, ">", "/dev/urandom")) { $error = "RNDRESEEDCRNG: $!" unless syswrite($r, pack("H*", $seed)) && ioctl($r, 0x5207, 0); } else { $error = "/dev/urandom: $!"; } }',
  `open(my $out, ">", "${RESUME_DIR}/resumed") or die "resumed: $!\\n";`,
  'print $out ($error ? "error: $error\\n" : "ok\\n");',
].join(' ');

export class GuestTemplate implements AsyncDisposable {
  /** The template's instance id; clones name it in `clonedFrom`. */
  readonly id: string;
  readonly spec: ResolvedSpec;
  readonly timings: TemplateTimings;
  readonly #launched: LaunchedGuest;
  readonly #statePath: string;
  /** A root process waits in the saved state to fix up each clone (the fast path). */
  readonly #resumeWaiter: boolean;
  #released: Promise<void> | undefined;

  private constructor(launched: LaunchedGuest, statePath: string, timings: TemplateTimings, resumeWaiter: boolean) {
    this.#resumeWaiter = resumeWaiter;
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
    // The template's RAM lives in a file of its instance directory, so that the saved state can
    // leave it out (x-ignore-shared) and clones map it copy-on-write instead of loading a copy.
    const fresh = await freshBootPlan(spec, options);
    const launched = await launchGuest({
      ...fresh,
      async prepare(instance, parts) {
        return { ...(await fresh.prepare(instance, parts)), memoryFile: { path: instance.file('memory'), shared: true } };
      },
    });
    const { parts, instance } = launched;
    const statePath = instance.file('state');
    try {
      const started = performance.now();
      // Where it can, a root process waits in the saved state to fix up each clone (see RESUME_WAITER).
      const waiter = await parts.session.exec(`sudo -n sh -c ${quoteArg(RESUME_WAITER)} sh ${quoteArg(spec.user)} ${quoteArg(RESUME_PERL)}`, { timeoutMs: 60_000 });
      const resumeWaiter = waiter.exitCode === 0;
      if (!resumeWaiter) launched.plan.log.debug(`no resume waiter in template ${instance.id} (clones take the sudo path): ${waiter.stderr.toString('utf8').trim()}`);
      // No SSH connection is saved half-open into the state: clones start without one.
      parts.session.close();
      await parts.qmp.execute('stop');
      await parts.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await parts.qmp.execute('migrate', { uri: `exec:cat > ${quoteArg(statePath)}` });
      await waitForMigration(parts.qmp, spec.name);
      const saveMs = Math.round(performance.now() - started);
      const stateBytes = (await fs.stat(statePath)).size;
      await fs.chmod(statePath, 0o400);
      // QEMU goes, its budget lease with it; the directory stays as the clones' base.
      await shutdownParts({ ...parts, instance: undefined });
      await fs.chmod(instance.file('overlay'), 0o400);
      // Not 0400: QEMU opens the file read-write even to map it copy-on-write (share=off).
      await fs.chmod(instance.file('memory'), 0o600);
      registerLive(instance.id, { dir: instance.dir, pid: undefined, leaseId: undefined });
      launched.plan.log.debug(`template ${instance.id} saved in ${saveMs} ms (${(stateBytes / 1048576).toFixed(0)} MiB of state)`);
      return new GuestTemplate(launched, statePath, { boot: launched.timings, saveMs, stateBytes }, resumeWaiter);
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
        // UEFI: the variable store as the template left it (pflash is not in the saved state).
        if (template.uefi) {
          await fs.copyFile(from.file('efiVars'), instance.file('efiVars'));
          await fs.chmod(instance.file('efiVars'), 0o600);
        }
        return {
          disk: instance.file('overlay'),
          seed: from.file('seed'),
          kernel: template.kernel,
          uefi: template.uefi && { code: template.uefi.code, vars: instance.file('efiVars') },
          clientPrivateKey: clientKey,
          hostPublicKey: template.hostKey,
          attachments: [],
          incoming: `exec:cat ${quoteArg(statePath)}`,
          incomingIgnoresShared: true,
          memoryFile: { path: from.file('memory'), shared: false },
          serialAppend: true,
        };
      },
      settle: async (session) => {
        const seed = randomBytes(64).toString('hex');
        if (this.#resumeWaiter) {
          const now = (Date.now() / 1000).toFixed(3);
          const answer = await session.run(`printf '%s %s\\n' ${now} ${seed} > ${RESUME_DIR}/resume && read -r answer < ${RESUME_DIR}/resumed && echo "$answer"`, { timeoutMs: 15_000, signal });
          if (answer.exitCode === 0 && answer.stdout.toString('utf8') === 'ok\n') return;
          template.plan.log.debug(`clone of ${from.id}: the resume waiter did not answer (${answer.timedOut ? 'timed out' : answer.stdout.toString('utf8').trim() || `exit code ${answer.exitCode}`}); using sudo`);
        }
        // The clock and RNG fixup on a channel of its own while the command shell opens beside it:
        // both are the guest's first work after the restore, when TCG has nothing translated yet.
        const now = (Date.now() / 1000).toFixed(3);
        const [result] = await Promise.all([
          session.exec(`sudo -n sh -c ${quoteArg(FIXUP_SCRIPT)} sh ${now} ${seed}`, { timeoutMs: 60_000, signal }),
          session.run('true', { signal, stateless: true }),
        ]);
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

/**
 * Everything about a spec that changes what a template holds. `anyName`: the spec did not ask for
 * a name (it got a random one), so specs that differ only in that name share a key.
 */
export function templateKey(spec: ResolvedSpec, options: { anyName?: boolean } = {}): string {
  const { bootTimeoutMs: _ignored, name, ...rest } = spec;
  return createHash('sha256').update(JSON.stringify({ ...rest, name: options.anyName ? undefined : name })).digest('hex').slice(0, 16);
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
