// A running, reachable guest: commands over SSH, the console log, and an idempotent stop().
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Lease } from '../budget/leases.ts';
import { GuestCommandError, GuestlabError, GuestStoppedError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Accel } from '../qemu/argv.ts';
import type { QemuProcess } from '../qemu/process.ts';
import type { QmpClient } from '../qemu/qmp.ts';
import type { SshSession } from '../ssh/session.ts';
import { quoteArg, quoteArgv } from '../util/shell-quote.ts';
import { describeValue, expectPositiveInteger } from '../util/validate.ts';
import type { InstanceDir } from './instance.ts';
import { unregisterLive } from './registry.ts';

export interface ExecOptions {
  /** Bytes or text fed to the command's standard input (closed afterwards). */
  stdin?: string | Uint8Array;
  /** Kill the command after this long; the result then has `timedOut: true`. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Run as root through passwordless sudo. */
  sudo?: boolean;
  /** Working directory inside the guest. */
  cwd?: string;
  /** Extra environment variables for the command. */
  env?: Record<string, string>;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  /** Signal name when the command was killed by one. */
  signal?: string | undefined;
  timedOut?: boolean;
  durationMs?: number;
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
  cloudInitDoneMs: number;
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
  #parts: GuestParts['parts'];
  #stopping: Promise<void> | undefined;

  constructor(parts: GuestParts) {
    this.#parts = parts.parts;
    this.leaseWaitMs = parts.leaseWaitMs;
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

  /** Runs argv in the guest. Every argument is quoted, so the guest's shell never re-parses it. */
  async exec(argv: string[], options: ExecOptions = {}): Promise<ExecResult> {
    if (!Array.isArray(argv)) throw new TypeError(`Expected \`argv\` to be an array of strings, got ${describeValue(argv)}`);
    return this.#run(this.#commandLine(argv, options), options);
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

  async #run(command: string, options: ExecOptions): Promise<ExecResult> {
    if (this.#stopping) throw new GuestStoppedError(this.name);
    if (this.#parts.diskFull) throw this.#parts.diskFull;
    const started = performance.now();
    const { timeoutMs } = options;
    const raw = await this.#parts.session
      .exec(command, {
        stdin: options.stdin,
        signal: options.signal,
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
  if (parts.instance) {
    await fs.rm(parts.instance.dir, { recursive: true, force: true });
    unregisterLive(parts.instance.id);
  }
  // Last: the budget frees up only once QEMU is really gone.
  await parts.lease?.release();
  parts.log.debug(`stopped in ${Date.now() - started} ms`);
}
