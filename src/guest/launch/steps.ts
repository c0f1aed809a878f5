// A guest comes up as a list of named steps. Each step has a description and a debug hint that a
// failure message shows, records what it creates in the launch's resources before it can leak, and
// is timed. A failed launch gives back whatever the steps made (resources.ts).
import { AbortedError, GuestDeadEndError, GuestlabError, SshError } from '../../errors.ts';
import type { AgentClient } from '../../agent/client.ts';
import type { OvmfFiles } from '../../host/firmware.ts';
import type { BuiltImage } from '../../images/builder.ts';
import type { Logger } from '../../log.ts';
import type { Accel } from '../../qemu/argv.ts';
import type { NetworkAttachment } from '../../network/network.ts';
import type { BannerResult } from '../../ssh/banner.ts';
import type { ConsoleWatch } from '../dead-end.ts';
import type { InstanceDir } from '../instance.ts';
import type { GuestMount } from '../mounts.ts';
import { releaseResources, type GuestResources } from '../resources.ts';
import type { ResolvedSpec } from '../spec.ts';
import type { BootTimings } from '../types.ts';

/** What QEMU boots: filled in by the disk and seed steps (or a clone's disk step). */
export interface BootMedia {
  disk: string;
  /** The cloud-init seed; absent on a boot that leaves cloud-init off. */
  seed?: string | undefined;
  /** guestlab's setup as fw_cfg entries, on a boot that leaves cloud-init off; the guest agent. */
  fwCfg?: { name: string; file: string }[] | undefined;
  /** Read-only disks: the images of the spec's host directory mounts. */
  scsiDisks?: { id: string; file: string; serial: string }[] | undefined;
  /** Direct kernel boot; undefined for images that carry their own bootloader. */
  kernel?: { kernel: string; initrd: string; cmdline: string } | undefined;
  /** UEFI firmware (OVMF) with the guest's own variable store; undefined: SeaBIOS. */
  uefi?: { code: string; vars: string } | undefined;
  /** A saved state to resume from instead of booting (QEMU -incoming). */
  incoming?: { uri: string; ignoreShared: boolean } | undefined;
  /** Guest RAM in a file: shared (a template writes it) or mapped copy-on-write (a clone). */
  memoryFile?: { path: string; shared: boolean } | undefined;
  /** The serial log already holds the console of the boot this guest was cloned from. */
  serialAppend?: boolean | undefined;
}

/** Everything a launch knows so far; each step reads what earlier steps set and adds its own. */
export interface LaunchState {
  readonly spec: ResolvedSpec;
  readonly log: Logger;
  readonly signal: AbortSignal | undefined;
  /** performance.now() when the start began; timings count from here. */
  readonly t0: number;
  /** The guest's resources, released if the launch fails. */
  readonly resources: GuestResources;
  accel?: Accel;
  /** The versioned machine type (pc-q35-7.2); a clone: its template's. */
  machine?: string;
  bootTimeoutMs?: number;
  /** Epoch ms by which the guest must be ready; set when QEMU starts. */
  deadline?: number;
  /** performance.now() when QEMU started. */
  bootStarted?: number;
  /** The base image (a clone: its template's). */
  image?: BuiltImage;
  /** UEFI firmware files, when the guest boots with UEFI. */
  ovmf?: OvmfFiles | undefined;
  instance?: InstanceDir;
  /** The guest's SSH keys; the public client key and private host key only where a seed is written. */
  keys?: { clientPrivateKey: string; clientPublicKey?: string; hostPrivateKey?: string; hostPublicKey: string };
  media?: Partial<BootMedia>;
  attachments: NetworkAttachment[];
  /** The spec's host directory mounts, once their images are built (a clone: its template's). */
  mounts: GuestMount[];
  watch?: ConsoleWatch;
  sshPort?: number;
  /** The socket that saw sshd's banner, positioned before it: the first authentication attempt uses it. */
  bannerSocket?: BannerResult['socket'] | undefined;
  /** A clone's agent connection, made before its saved state runs (agentConnectStep); the agent step finishes it. */
  agentConnecting?: Promise<AgentClient> | undefined;
  timings: Partial<BootTimings>;
  /** Whether cloud-init runs on this boot (decided by the seed step; a clone: as its template). */
  cloudInit?: 'ran' | 'skipped';
  /** The cloud-init seed carries the guest agent for an image without one (the seed step; a clone: its template installed it). */
  agentInSeed?: boolean;
  /** The template's id, for a clone. */
  clonedFrom?: string | undefined;
  /** How long each step took, by name. */
  stepMs: Record<string, number>;
}

export interface LaunchStep {
  /** Short and stable: it appears in logs, errors and timings ("image", "budget", "ssh-auth"). */
  readonly name: string;
  /** What the step does. */
  readonly description: string;
  /** Where to look when it fails. */
  readonly hint: string;
  run(state: LaunchState): Promise<void>;
}

/** A value an earlier step must have set; a missing one is a bug in the step list. */
export function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`launch step order: ${what} is not set yet`);
  return value;
}

export function newLaunchState(spec: ResolvedSpec, log: Logger, signal: AbortSignal | undefined): LaunchState {
  return { spec, log, signal, t0: performance.now(), resources: { log }, attachments: [], mounts: [], timings: {}, stepMs: {} };
}

export function sinceStart(state: LaunchState): number {
  return Math.round(performance.now() - state.t0);
}

/** The step a launch failed in, on the error it failed with. */
export interface FailedStep {
  name: string;
  description: string;
  hint: string;
}

/** Adds the failed step (with its hint) to the error's message and as `error.step`. */
function annotate(error: unknown, step: LaunchStep, spec: ResolvedSpec): Error {
  const wrapped = error instanceof GuestlabError || error instanceof SshError
    ? error
    : new GuestlabError(`Starting guest ${spec.name} failed: ${(error as Error).message}`, { cause: error });
  if (!(wrapped as { step?: FailedStep }).step) {
    Object.defineProperty(wrapped, 'step', { value: { name: step.name, description: step.description, hint: step.hint }, enumerable: false });
    wrapped.message += `\n--- failed step: ${step.name} (${step.description}) ---\nhint: ${step.hint}`;
  }
  return wrapped;
}

/** Runs the steps in order; on failure, releases everything they made and throws the annotated error. */
/**
 * Runs a boot's steps on a new state from `makeState`. Under TCG, a boot whose guest reached the
 * dead end 'cpu-stuck' (an emulator hang that a new boot does not repeat; everything the first boot
 * made is released by then) runs once more from the start. Returns the state that booted.
 */
export async function runBoot(makeState: () => LaunchState, steps: readonly LaunchStep[]): Promise<LaunchState> {
  const first = makeState();
  try {
    await runSteps(first, steps);
    return first;
  } catch (error) {
    if (!(error instanceof GuestDeadEndError && error.kind === 'cpu-stuck' && first.accel === 'tcg') || first.signal?.aborted) throw error;
    first.log.warn(`guest ${first.spec.name}: a CPU hung in its kernel (phase ${error.phase}, ${(error.elapsedMs / 1000).toFixed(0)} s after QEMU started), a TCG hang; booting it once more`);
    const second = makeState();
    await runSteps(second, steps);
    return second;
  }
}

export async function runSteps(state: LaunchState, steps: readonly LaunchStep[]): Promise<void> {
  for (const step of steps) {
    const started = performance.now();
    try {
      if (state.signal?.aborted) throw new AbortedError(`Starting guest ${state.spec.name} (before step ${step.name})`, { cause: state.signal.reason });
      state.log.debug(`step ${step.name}: ${step.description}`);
      await step.run(state);
    } catch (error) {
      state.watch?.stop();
      await releaseResources(state.resources).catch((stopError) => state.log.warn(`cleanup after a failed start also failed: ${(stopError as Error).message}`));
      throw annotate(error, step, state.spec);
    }
    state.stepMs[step.name] = Math.round(performance.now() - started);
  }
}
