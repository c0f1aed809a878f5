// A running, reachable guest: commands over SSH, the console log, and an idempotent stop().
import fs from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ExecResult } from '../exec-result.ts';
import type { Lease } from '../budget/leases.ts';
import { GuestCommandError, GuestlabError, GuestStoppedError, QemuError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { GuestNetwork } from '../network/network.ts';
import { parseSnapshots, parseUsernetForwards, type Accel } from '../qemu/argv.ts';
import type { QemuProcess } from '../qemu/process.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import { SshSession } from '../ssh/session.ts';
import { quoteArg, quoteArgv } from '../util/shell-quote.ts';
import { describeValue, expectOneOf, expectPositiveInteger } from '../util/validate.ts';
import { collectEvidence, type GuestEvidence } from './evidence.ts';
import { copyFromGuest, copyToGuest, readGuestFile, writeGuestFile, type ReadFileOptions, type WriteFileOptions } from './files.ts';
import { markInstanceKept, type InstanceDir } from './instance.ts';
import { keepInstructions } from './keep.ts';
import { unregisterLive } from './registry.ts';
import { applyChange, checkpointLabel, diffInventories, Rehearsal, takeInventory, type AppliedChange, type CheckpointInfo, type GuestChange, type GuestInventory, type InventoryDiff, type InventoryOptions, type RestoreTimings } from './rehearsal.ts';
import { pollUntil, timeoutScale, WaitTimeoutError, type WaitOptions } from './waits.ts';
import { describeUnitState, unitDiagnostics, unitState, type UnitState } from '../inspect/units.ts';
import { formatSocket, listeningSockets, type ListeningSocket } from '../inspect/sockets.ts';
import { fileInfo, type FileInfo } from '../inspect/files.ts';
import { packageInfo, type PackageInfo } from '../inspect/packages.ts';
import { userInfo, type UserInfo } from '../inspect/users.ts';

export interface ExecOptions {
  /** Bytes, text or a stream fed to the command's standard input (closed afterwards). */
  stdin?: string | Uint8Array | Readable;
  /** Stream the command's stdout here (with backpressure) instead of collecting it; `stdout` is then ''. */
  stdout?: Writable;
  /** Kill the command after this long; the result then has `timedOut: true`. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Run as root through passwordless sudo. */
  sudo?: boolean;
  /** Working directory inside the guest. */
  cwd?: string;
  /** Extra environment variables for the command. */
  env?: Record<string, string>;
  /**
   * Run on an SSH channel of its own instead of the guest's shared command shell. Commands with
   * `stdin` or a `stdout` stream always do. Use it for a command that leaves a background process
   * writing to its stdout or stderr: on the shared shell that output would go to later commands.
   */
  ownChannel?: boolean;
}


export interface SshInfo {
  host: string;
  port: number;
  user: string;
  privateKeyPath: string;
  /** The pinned host key, an OpenSSH public key line ("ssh-ed25519 AAAA..."). */
  hostKey: string;
  /** A known_hosts file that pins the host key, for the ssh command line tool. */
  knownHostsPath: string;
}

/** How long each boot phase took, in ms from the start of startGuest(). */
export interface BootTimings {
  imageReadyMs: number;
  qemuStartedMs: number;
  sshBannerMs: number;
  sshReadyMs: number;
  /** Ready: cloud-init done, or for a clone its state restored and its clock and RNG renewed. */
  cloudInitDoneMs: number;
  /** A clone only: when the saved state had been loaded into its QEMU. */
  restoreMs?: number;
}

/** What a guest holds; filled in as startGuest() goes, torn down by shutdownParts(). */
export interface TeardownParts {
  log: Logger;
  lease?: Lease | undefined;
  instance?: InstanceDir | undefined;
  qemu?: QemuProcess | undefined;
  qmp?: QmpClient | undefined;
  session?: SshSession | undefined;
  /** Set when the host disk filled up under the guest (QMP BLOCK_IO_ERROR, nospace). */
  diskFull?: DiskFullError | undefined;
  /** Private networks the guest has a port on; left once QEMU is gone. */
  networks?: GuestNetwork[] | undefined;
}

/** The guest's NIC on one private network. */
export interface GuestNetworkInfo {
  network: string;
  address: string;
  /** eth1, eth2, ... inside the guest. */
  interfaceName: string;
  mac: string;
}

export interface GuestParts {
  parts: Required<Pick<TeardownParts, 'instance' | 'qemu' | 'qmp' | 'session'>> & TeardownParts;
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
}

/** A unit waited for entered the failed state (systemd) or crashed (OpenRC). */
export class UnitFailedError extends GuestlabError {
  override name = 'UnitFailedError';
  readonly unit: string;
  readonly state: UnitState;
  readonly diagnostics: string;
  constructor(guest: string, unit: string, state: UnitState, diagnostics: string) {
    super(`Guest ${guest}: unit ${unit} failed (${describeUnitState(state)}).\n${diagnostics}`, { code: 'ERR_UNIT_FAILED' });
    this.unit = unit;
    this.state = state;
    this.diagnostics = diagnostics;
  }
}

export class DiskFullError extends GuestlabError {
  override name = 'DiskFullError';
  constructor(guest: string, dir: string) {
    super(
      `The host disk holding guest ${guest}'s overlay (${dir}) is full; QEMU paused the guest. ` +
        'Free space there or point GUESTLAB_INSTANCES_DIR at a larger disk; the guest cannot continue.',
      { code: 'ERR_DISK_FULL' },
    );
  }
}

const QUIT_GRACE_MS = 5_000;
/** timeout(1) in the guest sends KILL this long after TERM. */
const GUEST_KILL_AFTER_S = 2;
/** The host gives up on a timed-out command this long after the guest should have killed it. */
const HOST_BACKSTOP_MS = GUEST_KILL_AFTER_S * 1000 + 5_000;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Builtins of every POSIX shell that change nothing in the shell running them. */
const STATELESS_BUILTINS = new Set(['true', 'false', ':', 'test', '[', 'echo', 'printf', 'pwd']);

/**
 * A command the command shell may run without a subshell: a stateless builtin with nothing around
 * it (no sudo, timeout, env or cwd), and not `printf -v`, which assigns a variable in bash.
 */
export function isStatelessBuiltin(argv: readonly string[], options: Pick<ExecOptions, 'sudo' | 'timeoutMs' | 'env' | 'cwd'>): boolean {
  const [name, first] = argv;
  if (name === undefined || !STATELESS_BUILTINS.has(name)) return false;
  if (options.sudo || options.timeoutMs !== undefined || options.env || options.cwd !== undefined) return false;
  return !(name === 'printf' && first?.startsWith('-'));
}

export type { ExecResult };

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
  #parts: GuestParts['parts'];
  #stopping: Promise<void> | undefined;
  #kept = false;
  /** Forwards by "protocol:guestPort"; added one at a time. */
  #forwards = new Map<string, number>();
  #forwarding: Promise<unknown> = Promise.resolve();
  #checkpoints = new Map<string, { info: CheckpointInfo; inventory: GuestInventory | undefined; inventoryOptions?: InventoryOptions }>();

  constructor(parts: GuestParts) {
    this.#parts = parts.parts;
    this.leaseWaitMs = parts.leaseWaitMs;
    this.networks = parts.networks;
    this.clonedFrom = parts.clonedFrom;
    this.name = parts.name;
    this.image = parts.image;
    this.accel = parts.accel;
    this.cpus = parts.cpus;
    this.memoryMiB = parts.memoryMiB;
    this.ssh = parts.ssh;
    this.timings = parts.timings;
    this.instanceId = parts.instance.id;
    this.instanceDir = parts.instance.dir;
  }

  /** QEMU's process id. */
  get pid(): number {
    return this.#parts.qemu.pid;
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
    if (!Array.isArray(argv)) throw new TypeError(`Expected \`argv\` to be an array of strings, got ${describeValue(argv)}`);
    return this.#run(this.#commandLine(argv, options), { ...options, stateless: isStatelessBuiltin(argv, options) });
  }

  /** Runs a script through `sh -c`. */
  async shell(script: string, options: ExecOptions = {}): Promise<ExecResult> {
    if (typeof script !== 'string') throw new TypeError(`Expected \`script\` to be a string, got ${describeValue(script)}`);
    return this.exec(['sh', '-c', script], options);
  }

  /** Runs argv (or a script through sh -c) and returns its stdout; throws GuestCommandError otherwise. */
  async succeed(argvOrScript: string[] | string, options: ExecOptions = {}): Promise<string> {
    const argv = typeof argvOrScript === 'string' ? ['sh', '-c', argvOrScript] : argvOrScript;
    const result = await this.exec(argv, options);
    if (result.exitCode !== 0 || result.timedOut) {
      throw new GuestCommandError({
        command: typeof argvOrScript === 'string' ? argvOrScript : quoteArgv(argv),
        exitCode: result.exitCode,
        signal: result.signal,
        stdout: result.stdout,
        stderr: result.stderr,
        timedOut: result.timedOut,
        guest: this.name,
      });
    }
    return result.stdout;
  }

  /**
   * Waits until a systemd unit (or OpenRC service) is active. A unit that fails meanwhile ends the
   * wait at once with UnitFailedError, carrying its status and journal tail.
   */
  async waitForUnit(name: string, options: WaitOptions = {}): Promise<UnitState> {
    try {
      return await pollUntil(this, `unit ${name} to be active`, options, async () => {
        const state = await this.unitState(name);
        if (state.active) return { done: true, value: state };
        if (state.state === 'failed' || state.state === 'crashed') throw new UnitFailedError(this.name, name, state, await unitDiagnostics(this, name));
        return { done: false, seen: state.loaded ? describeUnitState(state) : `unit ${name} is not loaded (${describeUnitState(state)})` };
      });
    } catch (error) {
      if (!(error instanceof WaitTimeoutError)) throw error;
      throw new WaitTimeoutError(this.name, `unit ${name} to be active`, error.timeoutMs, `${error.lastSeen}\n${await unitDiagnostics(this, name)}`);
    }
  }

  /** Waits until something in the guest listens on `port` (TCP by default), on any address. */
  async waitForPort(port: number, options: WaitOptions & { protocol?: 'tcp' | 'udp' } = {}): Promise<ListeningSocket> {
    expectPositiveInteger('port', port);
    const protocol = expectOneOf('protocol', options.protocol ?? 'tcp', ['tcp', 'udp'] as const);
    return pollUntil(this, `${protocol} port ${port} to listen`, options, async () => {
      const sockets = await this.listeningSockets();
      const found = sockets.find((socket) => socket.port === port && socket.protocol === protocol);
      return found ? { done: true, value: found } : { done: false, seen: `listening: ${sockets.map(formatSocket).join(', ') || 'nothing'}` };
    });
  }

  /** A systemd unit's (or OpenRC service's) state. */
  unitState(name: string): Promise<UnitState> {
    return unitState(this, name);
  }

  /** Sockets listening in the guest (ss, or netstat where there is no ss). */
  listeningSockets(): Promise<ListeningSocket[]> {
    return listeningSockets(this);
  }

  /** Type, mode, owner, group and size of a guest path (looked at as root; a symlink itself, not its target). */
  fileInfo(guestPath: string): Promise<FileInfo> {
    return fileInfo(this, guestPath);
  }

  /** Whether a package is installed and its version, from dpkg, rpm or apk, whichever the guest has. */
  packageInfo(name: string): Promise<PackageInfo> {
    return packageInfo(this, name);
  }

  /** A user's passwd entry and groups. */
  userInfo(name: string): Promise<UserInfo> {
    return userInfo(this, name);
  }

  /** Waits until `path` exists in the guest (as root, so any path can be checked). */
  async waitForFile(guestPath: string, options: WaitOptions = {}): Promise<void> {
    if (typeof guestPath !== 'string' || !guestPath) throw new TypeError(`Expected \`path\` to be a path in the guest, got ${describeValue(guestPath)}`);
    await pollUntil(this, `file ${guestPath}`, options, async () => {
      const result = await this.exec(['sh', '-c', 'test -e "$1" || { ls -la -- "$(dirname -- "$1")" 2>&1; exit 1; }', 'sh', guestPath], { sudo: true });
      return result.exitCode === 0 ? { done: true, value: undefined } : { done: false, seen: `${guestPath} does not exist; its directory:\n${result.stdout}${result.stderr}` };
    });
  }

  /**
   * Waits until the serial console shows a line matching `pattern`; returns the match. Matches the
   * whole console since boot, or only what comes after the call with `{ fromNow: true }`.
   */
  async waitForConsole(pattern: RegExp | string, options: WaitOptions & { fromNow?: boolean } = {}): Promise<RegExpMatchArray> {
    const regex = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
    if (!(regex instanceof RegExp)) throw new TypeError(`Expected \`pattern\` to be a RegExp or a string, got ${describeValue(pattern)}`);
    const skip = options.fromNow ? (await this.consoleLog()).length : 0;
    return pollUntil(this, `console output matching ${regex}`, options, async () => {
      const text = (await this.consoleLog()).slice(skip);
      const match = text.match(new RegExp(regex.source, regex.flags.replace('g', '')));
      return match ? { done: true, value: match } : { done: false, seen: `serial console, last lines:\n${text.split('\n').slice(-15).join('\n')}` };
    });
  }

  /** Runs argv (or a script through sh -c) until it exits 0; returns that run's result. */
  async waitUntil(argvOrScript: string[] | string, options: WaitOptions & Pick<ExecOptions, 'sudo' | 'env' | 'cwd'> = {}): Promise<ExecResult> {
    const argv = typeof argvOrScript === 'string' ? ['sh', '-c', argvOrScript] : argvOrScript;
    const what = `\`${typeof argvOrScript === 'string' ? argvOrScript : quoteArgv(argv)}\` to succeed`;
    const { sudo, env, cwd } = options;
    return pollUntil(this, what, options, async () => {
      const result = await this.exec(argv, { sudo, env, cwd });
      return result.exitCode === 0
        ? { done: true, value: result }
        : { done: false, seen: `exit code ${result.exitCode}\n--- stdout ---\n${result.stdout.trim()}\n--- stderr ---\n${result.stderr.trim()}` };
    });
  }

  /** Copies a host file or directory (recursively) to an absolute guest path. */
  copyTo(localPath: string, guestPath: string, options: WriteFileOptions = {}): Promise<void> {
    return copyToGuest(this, localPath, guestPath, options);
  }

  /** Copies a guest file or directory (recursively) to a host path. */
  copyFrom(guestPath: string, localPath: string, options: ReadFileOptions = {}): Promise<void> {
    return copyFromGuest(this, guestPath, localPath, options);
  }

  /** A guest file's bytes, or its text when an encoding is given. */
  readFile(guestPath: string, options?: ReadFileOptions): Promise<Buffer>;
  readFile(guestPath: string, options: ReadFileOptions & { encoding: BufferEncoding }): Promise<string>;
  async readFile(guestPath: string, options: ReadFileOptions & { encoding?: BufferEncoding } = {}): Promise<Buffer | string> {
    const data = await readGuestFile(this, guestPath, options);
    return options.encoding ? data.toString(options.encoding) : data;
  }

  /** Writes a guest file atomically (temporary file, chmod/chown, rename); parents are created. */
  writeFile(guestPath: string, data: string | Uint8Array, options: WriteFileOptions = {}): Promise<void> {
    return writeGuestFile(this, guestPath, data, options);
  }

  /**
   * Forwards a port on 127.0.0.1 of the host to `guestPort` of the guest (added at run time through
   * QEMU's user network) and returns the host port. Forwarding the same port again returns the same
   * host port. The guest's service must listen on its network address (or 0.0.0.0), not only on
   * its own loopback.
   */
  async forward(guestPort: number, options: { protocol?: 'tcp' | 'udp' } = {}): Promise<number> {
    const port = expectPositiveInteger('guestPort', guestPort);
    if (port > 65535) throw new TypeError(`Expected \`guestPort\` to be a port number from 1 to 65535, got ${port}`);
    const protocol = expectOneOf('protocol', options.protocol ?? 'tcp', ['tcp', 'udp'] as const);
    const key = `${protocol}:${port}`;
    const next = this.#forwarding.then(async () => {
      const known = this.#forwards.get(key);
      if (known) return known;
      this.#checkUsable();
      const qmp = this.#parts.qmp;
      const before = new Set(parseUsernetForwards(await qmp.hmp('info usernet')).map((f) => `${f.protocol}:${f.hostPort}`));
      const reply = await qmp.hmp(`hostfwd_add net0 ${protocol}:127.0.0.1:0-:${port}`);
      if (reply.trim()) throw new QemuError(`QEMU refused to forward ${protocol} port ${port} of guest ${this.name}: ${reply.trim()}`);
      const added = parseUsernetForwards(await qmp.hmp('info usernet')).find(
        (f) => f.protocol === protocol && f.guestPort === port && f.hostAddress === '127.0.0.1' && !before.has(`${f.protocol}:${f.hostPort}`),
      );
      if (!added) throw new QemuError(`QEMU accepted a forward to ${protocol} port ${port} of guest ${this.name} but does not list it (info usernet)`);
      this.#forwards.set(key, added.hostPort);
      return added.hostPort;
    });
    this.#forwarding = next.catch(() => undefined);
    return next;
  }

  /** Removes a forward made by forward(); the host port is closed. */
  async unforward(guestPort: number, options: { protocol?: 'tcp' | 'udp' } = {}): Promise<void> {
    const protocol = options.protocol ?? 'tcp';
    const key = `${protocol}:${guestPort}`;
    const next = this.#forwarding.then(async () => {
      const hostPort = this.#forwards.get(key);
      if (hostPort === undefined) return;
      this.#checkUsable();
      const reply = await this.#parts.qmp.hmp(`hostfwd_remove net0 ${protocol}:127.0.0.1:${hostPort}`);
      if (!/removed/i.test(reply) && reply.trim()) throw new QemuError(`QEMU could not remove the forward of ${key} in guest ${this.name}: ${reply.trim()}`);
      this.#forwards.delete(key);
    });
    this.#forwarding = next.catch(() => undefined);
    return next;
  }

  /**
   * Saves the guest's disk and running state under `label` (QEMU savevm into the guest's overlay;
   * the guest pauses meanwhile), with an inventory of its configuration for diffSince() unless
   * `inventory: false`. Saving a label again replaces it.
   */
  async checkpoint(label: string, options: { inventory?: InventoryOptions | false } = {}): Promise<CheckpointInfo> {
    const name = checkpointLabel(label);
    this.#checkUsable();
    const inventory = options.inventory === false ? undefined : await takeInventory(this, options.inventory ?? {});
    const started = performance.now();
    const reply = await this.#parts.qmp.hmp(`savevm ${name}`);
    if (reply.trim()) throw new QemuError(`Saving checkpoint ${name} of guest ${this.name} failed: ${reply.trim()}`);
    const saveMs = Math.round(performance.now() - started);
    const listed = parseSnapshots(await this.#parts.qmp.hmp('info snapshots')).find((snapshot) => snapshot.tag === name);
    const info: CheckpointInfo = { label: name, createdAt: new Date(), saveMs, vmStateBytes: listed?.vmStateBytes };
    this.#checkpoints.set(name, { info, inventory, inventoryOptions: options.inventory || {} });
    this.#parts.log.debug(`checkpoint ${name} saved in ${saveMs} ms`);
    return info;
  }

  /**
   * Returns the guest to a checkpoint: disk, memory and services as they were. The SSH connection
   * is made anew (commands still running are cut off), the guest's clock is set to now, and
   * forwards added after the checkpoint are gone with the network state they lived in.
   */
  async restore(label: string): Promise<RestoreTimings> {
    const name = checkpointLabel(label);
    this.#checkUsable();
    if (!this.#checkpoints.has(name)) throw new GuestlabError(`Guest ${this.name} has no checkpoint "${name}" (has: ${[...this.#checkpoints.keys()].join(', ') || 'none'}); take one with guest.checkpoint("${name}")`);
    const started = performance.now();
    this.#parts.session.close(new GuestlabError(`Guest ${this.name} is being restored to checkpoint ${name}`));
    const reply = await this.#parts.qmp.hmp(`loadvm ${name}`);
    if (reply.trim()) throw new QemuError(`Restoring checkpoint ${name} of guest ${this.name} failed: ${reply.trim()}`);
    const loadMs = Math.round(performance.now() - started);
    this.#parts.session = await this.#reconnect(60_000 * this.timeoutScale);
    // The guest resumes with the checkpoint's clock.
    await this.succeed(['date', '-u', '-s', `@${(Date.now() / 1000).toFixed(3)}`], { sudo: true });
    const live = new Set(parseUsernetForwards(await this.#parts.qmp.hmp('info usernet')).map((f) => `${f.protocol}:${f.guestPort}:${f.hostPort}`));
    for (const [key, hostPort] of this.#forwards) if (!live.has(`${key}:${hostPort}`)) this.#forwards.delete(key);
    const totalMs = Math.round(performance.now() - started);
    this.#parts.log.debug(`restored ${name}: loadvm ${loadMs} ms, total ${totalMs} ms`);
    return { loadMs, reconnectMs: totalMs - loadMs, totalMs };
  }

  /** The checkpoints taken, oldest first. */
  checkpoints(): CheckpointInfo[] {
    return [...this.#checkpoints.values()].map((c) => c.info);
  }

  /** What changed in files, packages and enabled units since the checkpoint (taken with its inventory). */
  async diffSince(label: string): Promise<InventoryDiff> {
    const checkpoint = this.#checkpoints.get(checkpointLabel(label));
    if (!checkpoint?.inventory) throw new GuestlabError(`Guest ${this.name} has no inventory for checkpoint "${label}"; take it with guest.checkpoint("${label}") without inventory: false`);
    return diffInventories(checkpoint.inventory, await takeInventory(this, checkpoint.inventoryOptions ?? {}));
  }

  /** Applies files, commands, a script or a playbook as root (see GuestChange); stops at the first failure. */
  apply(change: GuestChange): Promise<AppliedChange> {
    return applyChange(this, change);
  }

  /** Starts a rehearsal: a checkpoint (with inventory) to try changes against and return to. */
  rehearse(label = 'rehearsal', inventory: InventoryOptions = {}): Promise<Rehearsal> {
    return Rehearsal.begin(this, label, inventory);
  }

  /** A new authenticated SSH session to the same guest, retried until `withinMs` passes. */
  async #reconnect(withinMs: number): Promise<SshSession> {
    const deadline = Date.now() + withinMs;
    const privateKey = await fs.readFile(this.ssh.privateKeyPath, 'utf8');
    const endpoint = { host: this.ssh.host, port: this.ssh.port, user: this.ssh.user, privateKey, hostKey: this.ssh.hostKey };
    for (;;) {
      try {
        return await SshSession.connect(endpoint, { readyTimeoutMs: Math.max(1000, Math.min(20_000, deadline - Date.now())) });
      } catch (error) {
        if ((error as GuestlabError).code === 'ERR_HOST_KEY_MISMATCH' || Date.now() >= deadline) throw error;
        await sleep(200);
      }
    }
  }

  /** The serial console tail, cloud-init's output and the journal's warnings: what a failed test attaches. */
  evidence(): Promise<GuestEvidence> {
    return collectEvidence(this);
  }

  /**
   * Hands the running guest over to the user instead of stopping it: it outlives this process, no
   * sweep removes it, and the returned text says how to get in and how to stop it. Only for guests
   * started with GUESTLAB_KEEP=on-failure set (otherwise QEMU dies with this process).
   */
  async keep(why = 'keep() was called'): Promise<string> {
    this.#checkUsable();
    const { qemu, session, qmp, instance, lease } = this.#parts;
    if (!qemu.keepable) {
      throw new GuestlabError(`Guest ${this.name} cannot be kept: it was started without GUESTLAB_KEEP=on-failure, so its QEMU dies with this process. Set GUESTLAB_KEEP=on-failure before the guest starts.`);
    }
    await markInstanceKept(instance);
    this.#kept = true;
    this.#stopping = Promise.resolve();
    unregisterLive(instance.id);
    session.close(new GuestStoppedError(this.name));
    qmp.close();
    qemu.detach();
    // A kept guest is the user's now; it no longer counts against this run's budget.
    await lease?.release();
    return keepInstructions(this, why);
  }

  /** Everything the guest wrote to its serial console so far. */
  async consoleLog(): Promise<string> {
    return fs.readFile(this.#parts.instance.file('serial'), 'utf8').catch(() => '');
  }

  /** Ends the guest: SSH, then QMP quit, then SIGKILL after a grace period; removes its directory. */
  stop(): Promise<void> {
    this.#stopping ??= this.#teardown();
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  #commandLine(argv: string[], options: ExecOptions): string {
    const prefix: string[] = [];
    if (options.sudo) prefix.push('sudo', '-n', '--');
    if (options.timeoutMs !== undefined) {
      // timeout(1) inside the guest kills the command's whole process group (TERM, then KILL 2 s
      // later), whoever it runs as; the host only abandons the channel as a backstop.
      const seconds = expectPositiveInteger('timeoutMs', options.timeoutMs) / 1000;
      prefix.push('timeout', '-k', String(GUEST_KILL_AFTER_S), String(seconds));
    }
    if (options.env) {
      const pairs = Object.entries(options.env).map(([key, value]) => {
        if (!ENV_NAME.test(key)) throw new TypeError(`Invalid environment variable name in \`env\`: ${describeValue(key)}`);
        return `${key}=${value}`;
      });
      prefix.push('env', ...pairs);
    }
    const command = quoteArgv([...prefix, ...argv]);
    return options.cwd === undefined ? command : `cd ${quoteArg(options.cwd)} && ${command}`;
  }

  #checkUsable(): void {
    if (this.#stopping) throw new GuestStoppedError(this.name);
    if (this.#parts.diskFull) throw this.#parts.diskFull;
  }

  async #run(command: string, options: ExecOptions & { stateless?: boolean }): Promise<ExecResult> {
    this.#checkUsable();
    const started = performance.now();
    const { timeoutMs } = options;
    const raw = await this.#parts.session
      .run(command, {
        ownChannel: options.ownChannel,
        stdin: options.stdin,
        stdout: options.stdout,
        signal: options.signal,
        stateless: options.stateless,
        timeoutMs: timeoutMs === undefined ? undefined : timeoutMs + HOST_BACKSTOP_MS,
      })
      .catch((error: unknown) => {
        throw this.#parts.diskFull ?? error;
      });
    const durationMs = performance.now() - started;
    // timeout(1) exits 124 (or 137 when TERM was ignored); the duration tells it from a command
    // that merely exits with the same code.
    const killedInGuest = timeoutMs !== undefined && (raw.exitCode === 124 || raw.exitCode === 137) && durationMs >= timeoutMs * 0.9;
    return {
      stdout: raw.stdout.toString('utf8'),
      stderr: raw.stderr.toString('utf8'),
      exitCode: raw.exitCode,
      signal: raw.signal,
      timedOut: raw.timedOut || killedInGuest,
      durationMs,
    };
  }

  async #teardown(): Promise<void> {
    await shutdownParts(this.#parts);
  }
}

/** Tears down whatever parts exist; shared by stop() and by a failed start. */
export async function shutdownParts(parts: TeardownParts): Promise<void> {
  const started = Date.now();
  parts.session?.close();
  const { qemu, qmp } = parts;
  if (qemu && !qemu.hasExited) {
    if (qmp && !qmp.closed) {
      await Promise.race([qmp.execute('quit').catch(() => undefined), sleep(QUIT_GRACE_MS)]);
    }
    const exitedInTime = await Promise.race([qemu.exited.then(() => true), sleep(QUIT_GRACE_MS, false)]);
    if (!exitedInTime) {
      parts.log.warn(`QEMU (pid ${qemu.pid}) did not quit within ${QUIT_GRACE_MS} ms; killing it`);
      qemu.kill('SIGKILL');
      await qemu.exited;
    }
  }
  qmp?.close();
  for (const network of parts.networks ?? []) if (parts.instance) network.detach(parts.instance.id);
  if (parts.instance) {
    await fs.rm(parts.instance.dir, { recursive: true, force: true });
    unregisterLive(parts.instance.id);
  }
  // Last: the budget frees up only once QEMU is really gone.
  await parts.lease?.release();
  parts.log.debug(`stopped in ${Date.now() - started} ms`);
}
