// A running, reachable guest: the facade users hold. Its parts do the work: commands.ts (exec over
// SSH), conditions.ts (waits), files.ts, forwards.ts, checkpoints.ts and rehearsal.ts, and
// resources.ts (teardown).
import { setTimeout as sleep } from 'node:timers/promises';
import type { ExecResult } from '../exec-result.ts';
import { GuestlabError, GuestStoppedError, SshError } from '../errors.ts';
import { fileInfo, type FileInfo } from '../inspect/files.ts';
import { packageInfo, type PackageInfo } from '../inspect/packages.ts';
import type { ListeningSocket } from '../inspect/sockets.ts';
import { unitState, type UnitState } from '../inspect/units.ts';
import { userInfo, type UserInfo } from '../inspect/users.ts';
import { listeningSockets } from '../inspect/sockets.ts';
import type { Accel } from '../qemu/argv.ts';
import type { ForwardProtocol } from '../qemu/monitor.ts';
import { exitedError } from '../qemu/process.ts';
import { describeValue } from '../util/validate.ts';
import { Checkpoints, type CheckpointInfo, type RestoreTimings } from './checkpoints.ts';
import type { MountSpec } from '../mounts/mount-spec.ts';
import { GuestMounts, type GuestMount } from './mounts.ts';
import { GuestChannels } from './channels.ts';
import { describeCommand, toArgv, unexpectedOutcome, type ArgvOrScript } from './commands.ts';
import { readConsole, waitForConsole, waitForFile, waitForPort, waitForUnit, waitUntil } from './conditions.ts';
import { collectEvidence, type GuestEvidence } from './evidence.ts';
import { copyFromGuest, copyToGuest, type FileGuest, readGuestFile, writeGuestFile, type ReadFileOptions, type WriteFileOptions } from './files.ts';
import { Forwards } from './forwards.ts';
import { markInstanceKept, type InstanceDir } from './instance.ts';
import type { InventoryDiff, InventoryOptions } from './inventory.ts';
import { keepInstructions } from './keep.ts';
import { unregisterLive } from './registry.ts';
import { applyChange, Rehearsal, type AppliedChange, type GuestChange } from './rehearsal.ts';
import { releaseResources, type RunningResources } from './resources.ts';
import type { BootTimings, ExecOptions, GuestNetworkInfo, SshInfo } from './types.ts';
import { timeoutScale, type WaitOptions } from './waits.ts';
import { processStartTime } from '../host/process-identity.ts';

export type { ExecResult };
export type { BootTimings, ExecOptions, GuestNetworkInfo, SshInfo } from './types.ts';
export { DiskFullError, UnitFailedError } from '../errors.ts';

/** What a launch hands to the StartedGuest it makes. */
export interface StartedGuestInit {
  resources: RunningResources;
  name: string;
  image: string;
  accel: Accel;
  cpus: number;
  memoryMiB: number;
  instance: InstanceDir;
  ssh: SshInfo;
  timings: BootTimings;
  /** How long the guest waited for room in the host-wide CPU/memory budget. */
  leaseWaitMs: number;
  networks: GuestNetworkInfo[];
  /** Set for a guest cloned from a template: the template's id. */
  clonedFrom?: string | undefined;
  /** The host directories mounted at boot. */
  mounts?: readonly GuestMount[] | undefined;
}

export class StartedGuest implements AsyncDisposable {
  readonly name: string;
  readonly image: string;
  readonly accel: Accel;
  readonly cpus: number;
  readonly memoryMiB: number;
  readonly ssh: SshInfo;
  readonly timings: BootTimings;
  readonly instanceId: string;
  readonly instanceDir: string;
  readonly leaseWaitMs: number;
  /** Its NICs on private networks (spec `networks`). */
  readonly networks: readonly GuestNetworkInfo[];
  /** The template this guest was cloned from (see GuestTemplate), or undefined for a fresh boot. */
  readonly clonedFrom: string | undefined;
  readonly #resources: RunningResources;
  readonly #forwards: Forwards;
  readonly #checkpoints: Checkpoints;
  readonly #mounts: GuestMounts;
  readonly #channels: GuestChannels;
  /** What files.ts uses: exec, and the agent's file requests (failing on a full host disk as exec does). */
  readonly #files: FileGuest;
  #stopping: Promise<void> | undefined;
  #kept = false;

  constructor(init: StartedGuestInit) {
    this.#resources = init.resources;
    this.leaseWaitMs = init.leaseWaitMs;
    this.networks = init.networks;
    this.clonedFrom = init.clonedFrom;
    this.name = init.name;
    this.image = init.image;
    this.accel = init.accel;
    this.cpus = init.cpus;
    this.memoryMiB = init.memoryMiB;
    this.ssh = init.ssh;
    this.timings = init.timings;
    this.instanceId = init.instance.id;
    this.instanceDir = init.instance.dir;
    const monitor = () => this.#resources.monitor;
    const checkUsable = () => this.#checkUsable();
    this.#forwards = new Forwards(monitor, checkUsable);
    this.#channels = new GuestChannels({
      guest: init.name,
      resources: init.resources,
      ssh: init.ssh,
      agentSocket: init.instance.file('agent'),
      withinMs: 60_000 * timeoutScale(init.accel),
      qemuGone: () => exitedError(this.#resources.qemu, `while guestlab was connecting to guest ${this.name}`),
    });
    this.#files = {
      name: init.name,
      exec: (argv, options) => this.exec(argv, options),
      agentFiles: (via) => {
        this.#checkUsable();
        const files = this.#channels.files(via);
        const orDiskFull = <T>(request: Promise<T>) =>
          request.catch((error: unknown) => {
            throw this.#resources.diskFull ?? error;
          });
        return files && { write: (request) => orDiskFull(files.write(request)), read: (request) => orDiskFull(files.read(request)) };
      },
    };
    this.#mounts = new GuestMounts({ guest: init.name, dir: init.instance.dir, exec: (argv, options) => this.exec(argv, options), monitor, booted: init.mounts ?? [] });
    this.#checkpoints = new Checkpoints(this, {
      monitor,
      checkUsable,
      forwards: this.#forwards,
      log: init.resources.log,
      qemuGone: () => exitedError(this.#resources.qemu, `while guest ${this.name} was being restored`),
      closeChannels: (why) => this.#channels.close(why),
      reconnect: () => this.#channels.reconnect(),
    });
  }

  /** QEMU's process id. */
  get pid(): number {
    return this.#resources.qemu.pid;
  }

  get stopped(): boolean {
    return this.#stopping !== undefined;
  }

  /** True once keep() handed the guest over to the user. */
  get kept(): boolean {
    return this.#kept;
  }

  /** How much longer than under KVM things take here: 1 under KVM, 5 under TCG (GUESTLAB_TIMEOUT_SCALE overrides). */
  get timeoutScale(): number {
    return timeoutScale(this.accel);
  }

  /** Runs argv in the guest. Every argument is quoted, so the guest's shell never re-parses it. */
  async exec(argv: string[], options: ExecOptions = {}): Promise<ExecResult> {
    this.#checkUsable();
    return this.#channels.exec(argv, options).catch(async (error: unknown) => {
      throw this.#resources.diskFull ?? (await this.#qemuGoneInstead(error, `while guest ${this.name} ran ${describeCommand(argv)}`));
    });
  }

  /**
   * The error to report for a channel that was lost: QEMU's exit when QEMU has exited (its channels
   * close a moment before the exit is seen, so it is given a second), `error` otherwise. Any other
   * error (bad input, an abort) is reported as it is, at once.
   */
  async #qemuGoneInstead(error: unknown, during: string): Promise<unknown> {
    const { qemu, agent } = this.#resources;
    const channelLost = agent?.lost !== undefined || error instanceof SshError;
    if (this.#stopping || !channelLost) return error;
    if (!qemu.exit) await Promise.race([qemu.exited, sleep(1000)]);
    const gone = exitedError(qemu, during);
    if (!gone) return error;
    gone.cause = error;
    return gone;
  }

  /**
   * Shows a host directory read-only at `guest` in the guest: a snapshot of the directory as it is
   * now (an ext4 image on a hot-plugged disk). Mount it again after unmount() to see later changes.
   */
  async mount(spec: MountSpec, options: { signal?: AbortSignal } = {}): Promise<GuestMount> {
    this.#checkUsable();
    return this.#mounts.mount(spec, options.signal);
  }

  /** Unmounts a directory that mount() or the spec's `mounts` put at `guestPath`, and unplugs its disk. */
  async unmount(guestPath: string): Promise<void> {
    this.#checkUsable();
    return this.#mounts.unmount(guestPath);
  }

  /** The host directories mounted in the guest now. */
  get mounts(): GuestMount[] {
    return this.#mounts.list();
  }

  /** Runs a script through `sh -c`. */
  async shell(script: string, options: ExecOptions = {}): Promise<ExecResult> {
    if (typeof script !== 'string') throw new TypeError(`Expected \`script\` to be a string, got ${describeValue(script)}`);
    return this.exec(['sh', '-c', script], options);
  }

  /** Runs argv (or a script through sh -c) and returns its stdout; throws GuestCommandError unless it exits 0. */
  async succeed(argvOrScript: ArgvOrScript, options: ExecOptions = {}): Promise<string> {
    const result = await this.exec(toArgv(argvOrScript), options);
    if (result.exitCode !== 0 || result.timedOut) throw unexpectedOutcome(this.name, argvOrScript, result);
    return result.stdout;
  }

  /**
   * Runs argv (or a script through sh -c) that must fail: returns its result (stdout, stderr and
   * the non-zero exit code); throws GuestCommandError if it exits 0 or times out.
   */
  async fail(argvOrScript: ArgvOrScript, options: ExecOptions = {}): Promise<ExecResult> {
    const result = await this.exec(toArgv(argvOrScript), options);
    if (result.exitCode === 0 || result.timedOut) throw unexpectedOutcome(this.name, argvOrScript, result, result.timedOut ? 'to fail, not to run out of time' : 'to fail');
    return result;
  }

  /**
   * Waits until a systemd unit (or OpenRC service) is active. A unit that fails meanwhile ends the
   * wait at once with UnitFailedError, carrying its status and journal tail.
   */
  async waitForUnit(name: string, options: WaitOptions = {}): Promise<UnitState> {
    return waitForUnit(this, name, options);
  }

  /** Waits until something in the guest listens on `port` (TCP by default), on any address. */
  async waitForPort(port: number, options: WaitOptions & { protocol?: 'tcp' | 'udp' } = {}): Promise<ListeningSocket> {
    return waitForPort(this, port, options);
  }

  /** Waits until `path` exists in the guest (as root, so any path can be checked). */
  async waitForFile(guestPath: string, options: WaitOptions = {}): Promise<void> {
    return waitForFile(this, guestPath, options);
  }

  /**
   * Waits until the serial console shows a line matching `pattern`; returns the match. Matches the
   * whole console since boot, or only what comes after the call with `{ fromNow: true }`.
   */
  async waitForConsole(pattern: RegExp | string, options: WaitOptions & { fromNow?: boolean } = {}): Promise<RegExpMatchArray> {
    return waitForConsole(this, this.#resources.instance.file('serial'), pattern, options);
  }

  /** Runs argv (or a script through sh -c) until it exits 0; returns that run's result. */
  async waitUntil(argvOrScript: ArgvOrScript, options: WaitOptions & Pick<ExecOptions, 'sudo' | 'env' | 'cwd'> = {}): Promise<ExecResult> {
    return waitUntil(this, argvOrScript, options);
  }

  /** A systemd unit's (or OpenRC service's) state. */
  async unitState(name: string): Promise<UnitState> {
    return unitState(this, name);
  }

  /** Sockets listening in the guest (ss, or netstat where there is no ss). */
  async listeningSockets(): Promise<ListeningSocket[]> {
    return listeningSockets(this);
  }

  /** Type, mode, owner, group and size of a guest path (looked at as root; a symlink itself, not its target). */
  async fileInfo(guestPath: string): Promise<FileInfo> {
    return fileInfo(this, guestPath);
  }

  /** Whether a package is installed and its version, from dpkg, rpm or apk, whichever the guest has. */
  async packageInfo(name: string): Promise<PackageInfo> {
    return packageInfo(this, name);
  }

  /** A user's passwd entry and groups. */
  async userInfo(name: string): Promise<UserInfo> {
    return userInfo(this, name);
  }

  /** Copies a host file or directory (recursively) to an absolute guest path. */
  async copyTo(localPath: string, guestPath: string, options: WriteFileOptions = {}): Promise<void> {
    return copyToGuest(this.#files, localPath, guestPath, options);
  }

  /** Copies a guest file or directory (recursively) to a host path. */
  async copyFrom(guestPath: string, localPath: string, options: ReadFileOptions = {}): Promise<void> {
    return copyFromGuest(this.#files, guestPath, localPath, options);
  }

  /** A guest file's bytes, or its text when an encoding is given. */
  readFile(guestPath: string, options?: ReadFileOptions): Promise<Buffer>;
  readFile(guestPath: string, options: ReadFileOptions & { encoding: BufferEncoding }): Promise<string>;
  async readFile(guestPath: string, options: ReadFileOptions & { encoding?: BufferEncoding } = {}): Promise<Buffer | string> {
    const data = await readGuestFile(this.#files, guestPath, options);
    return options.encoding ? data.toString(options.encoding) : data;
  }

  /** Writes a guest file atomically (temporary file, chmod/chown, rename); parents are created. */
  async writeFile(guestPath: string, data: string | Uint8Array, options: WriteFileOptions = {}): Promise<void> {
    return writeGuestFile(this.#files, guestPath, data, options);
  }

  /**
   * Forwards a port on 127.0.0.1 of the host to `guestPort` of the guest (added at run time through
   * QEMU's user network) and returns the host port. Forwarding the same port again returns the same
   * host port. The guest's service must listen on its network address (or 0.0.0.0), not only on
   * its own loopback.
   */
  async forward(guestPort: number, options: { protocol?: ForwardProtocol } = {}): Promise<number> {
    return this.#forwards.add(guestPort, options);
  }

  /** Removes a forward made by forward(); the host port is closed. */
  async unforward(guestPort: number, options: { protocol?: ForwardProtocol } = {}): Promise<void> {
    return this.#forwards.remove(guestPort, options);
  }

  /**
   * Saves the guest's disk and running state under `label` (QEMU savevm into the guest's overlay;
   * the guest pauses meanwhile), with an inventory of its configuration for diffSince() unless
   * `inventory: false`. Saving a label again replaces it.
   */
  async checkpoint(label: string, options: { inventory?: InventoryOptions | false } = {}): Promise<CheckpointInfo> {
    return this.#checkpoints.save(label, options);
  }

  /**
   * Returns the guest to a checkpoint: disk, memory and services as they were. The SSH connection
   * is made anew (commands still running are cut off), the guest's clock is set to now, and
   * forwards added after the checkpoint are gone with the network state they lived in.
   */
  async restore(label: string): Promise<RestoreTimings> {
    return this.#checkpoints.restore(label);
  }

  /** The checkpoints taken, oldest first. */
  checkpoints(): CheckpointInfo[] {
    return this.#checkpoints.list();
  }

  /** What changed in files, packages and enabled units since the checkpoint (taken with its inventory). */
  async diffSince(label: string): Promise<InventoryDiff> {
    return this.#checkpoints.diffSince(label);
  }

  /** Applies files, commands, a script or a playbook as root (see GuestChange); stops at the first failure. */
  async apply(change: GuestChange): Promise<AppliedChange> {
    return applyChange(this, change);
  }

  /** Starts a rehearsal: a checkpoint (with inventory) to try changes against and return to. */
  async rehearse(label = 'rehearsal', inventory: InventoryOptions = {}): Promise<Rehearsal> {
    return Rehearsal.begin(this, label, inventory);
  }

  /** The serial console tail, cloud-init's output and the journal's warnings: what a failed test attaches. */
  async evidence(): Promise<GuestEvidence> {
    return collectEvidence(this);
  }

  /** Everything the guest wrote to its serial console so far. */
  async consoleLog(): Promise<string> {
    return readConsole(this.#resources.instance.file('serial'));
  }

  /**
   * Hands the running guest over to the user instead of stopping it: it outlives this process, no
   * sweep removes it, and the returned text says how to get in and how to stop it. Only for guests
   * started with GUESTLAB_KEEP=on-failure set (otherwise QEMU dies with this process).
   */
  async keep(why = 'keep() was called'): Promise<string> {
    this.#checkUsable();
    const { qemu, monitor, instance, lease } = this.#resources;
    if (!qemu.keepable) {
      throw new GuestlabError(`Guest ${this.name} cannot be kept: it was started without GUESTLAB_KEEP=on-failure, so its QEMU dies with this process. Set GUESTLAB_KEEP=on-failure before the guest starts.`);
    }
    await markInstanceKept(instance);
    this.#kept = true;
    this.#stopping = Promise.resolve();
    unregisterLive(instance.id);
    this.#channels.close(new GuestStoppedError(this.name));
    monitor.close();
    qemu.detach();
    // A kept guest is the user's now, and its QEMU holds its budget lease: the budget counts its
    // memory until the user stops it (the next look after QEMU exits reclaims the lease).
    const start = processStartTime(qemu.pid);
    if (start === undefined) await lease?.release();
    else await lease?.handOver({ pid: qemu.pid, start });
    return keepInstructions(this, why);
  }

  /** Ends the guest: SSH, then QMP quit, then SIGKILL after a grace period; removes its directory. */
  async stop(): Promise<void> {
    this.#stopping ??= releaseResources(this.#resources);
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  #checkUsable(): void {
    if (this.#stopping) throw new GuestStoppedError(this.name);
    if (this.#resources.diskFull) throw this.#resources.diskFull;
    const gone = exitedError(this.#resources.qemu, `earlier: guest ${this.name} is gone (stop() it to clean up)`);
    if (gone) throw gone;
  }
}
