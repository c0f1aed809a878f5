// One SSH connection per guest (ssh2), with the guest's host key pinned. The only module that
// imports ssh2's Client. Commands run either on a long-lived command shell (a few of them, reused:
// no per-command session setup in the guest's sshd) or on a channel of their own (stdin, streamed
// stdout, or every command shell busy).
import type { ExecResult } from '../exec-result.ts';
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { finished } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import { Client, type ClientChannel } from 'ssh2';
import { AbortedError, HostKeyMismatchError, SshError } from '../errors.ts';
import { fingerprint, publicKeyBlob } from './keys.ts';

export interface SshEndpoint {
  host: string;
  port: number;
  user: string;
  privateKey: string;
  /** The pinned host key, as an OpenSSH public key line. */
  hostKey: string;
}

export interface RawExecOptions {
  /** Fed to the command's stdin, which is closed afterwards. A stream is piped with backpressure. */
  stdin?: string | Uint8Array | Readable | undefined;
  /** Where the command's stdout goes instead of the result's buffer (ended when the command ends). */
  stdout?: Writable | undefined;
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
  /**
   * The command cannot change the state of the shell that runs it (a builtin such as `test` or
   * `printf`), so a command shell may run it in place instead of in a subshell: no fork.
   */
  stateless?: boolean | undefined;
}

/** A result as it comes off the channel: output as bytes. */
export type RawExecResult = ExecResult<Buffer>;

/** OpenSSH's default MaxSessions is 10; stay below it and queue the rest. */
const MAX_CHANNELS = 6;
/** Long-lived command shells per connection, on top of MAX_CHANNELS. */
const MAX_SHELLS = 2;

const SIGNAL_NUMBERS: Record<string, number> = { HUP: 1, INT: 2, QUIT: 3, ILL: 4, ABRT: 6, FPE: 8, KILL: 9, SEGV: 11, PIPE: 13, ALRM: 14, TERM: 15 };

export class SshSession {
  readonly endpoint: SshEndpoint;
  #client: Client;
  #closed = false;
  #lostReason: string | undefined;
  #active = 0;
  #queue: (() => void)[] = [];
  /** Settles every command in flight with an error; used when the session is closed under them. */
  #inFlight = new Set<(error: Error) => void>();
  #idleShells: CommandShell[] = [];
  #shellCount = 0;
  /** Set when a command shell could not be started; every command then gets a channel of its own. */
  #shellsUnavailable: string | undefined;

  private constructor(endpoint: SshEndpoint, client: Client) {
    this.endpoint = endpoint;
    this.#client = client;
    client.on('close', () => {
      this.#lostReason ??= 'the SSH connection closed';
    });
    client.on('error', (error) => {
      this.#lostReason ??= `the SSH connection failed: ${error.message}`;
    });
  }

  /**
   * Authenticate over `sock` (already connected, e.g. by the banner wait) or a new connection.
   * Rejects with HostKeyMismatchError when the server's key is not the pinned one.
   */
  static connect(endpoint: SshEndpoint, options: { sock?: net.Socket; readyTimeoutMs?: number } = {}): Promise<SshSession> {
    const expectedBlob = publicKeyBlob(endpoint.hostKey);
    const where = `${endpoint.host}:${endpoint.port}`;
    return new Promise((resolve, reject) => {
      const client = new Client();
      let mismatch: HostKeyMismatchError | undefined;
      const fail = (error: Error) => {
        client.removeAllListeners('ready');
        client.end();
        reject(mismatch ?? error);
      };
      client.once('ready', () => {
        client.removeListener('error', fail);
        client.setNoDelay(true);
        resolve(new SshSession(endpoint, client));
      });
      client.once('error', fail);
      client.connect({
        sock: options.sock,
        host: endpoint.host,
        port: endpoint.port,
        username: endpoint.user,
        privateKey: endpoint.privateKey,
        readyTimeout: options.readyTimeoutMs ?? 20_000,
        keepaliveInterval: 15_000,
        keepaliveCountMax: 8,
        hostVerifier: (key: Buffer) => {
          if (key.equals(expectedBlob)) return true;
          mismatch = new HostKeyMismatchError(where, fingerprint(expectedBlob), fingerprint(key));
          return false;
        },
      });
    });
  }

  /** Why the connection is unusable, or undefined while it is fine. */
  get lost(): string | undefined {
    return this.#closed ? 'the session was closed' : this.#lostReason;
  }

  async exec(command: string, options: RawExecOptions = {}): Promise<RawExecResult> {
    const lost = this.lost;
    if (lost) throw new SshError(`Cannot run a command: ${lost}`);
    await this.#slot();
    try {
      return await this.#exec(command, options);
    } finally {
      this.#active--;
      this.#queue.shift()?.();
    }
  }

  /**
   * Runs a command on one of the connection's long-lived command shells: the guest's sshd sets up
   * no session for it, so a command costs little more than itself. Commands with stdin or a stdout
   * stream, `ownChannel`, and commands that find every shell busy run on a channel of their own.
   */
  async run(command: string, options: RawExecOptions & { ownChannel?: boolean } = {}): Promise<RawExecResult> {
    if (options.ownChannel || options.stdin !== undefined || options.stdout || this.#shellsUnavailable) return this.exec(command, options);
    const lost = this.lost;
    if (lost) throw new SshError(`Cannot run a command: ${lost}`);
    let shell = this.#idleShells.pop();
    if (!shell) {
      if (this.#shellCount >= MAX_SHELLS) return this.exec(command, options);
      this.#shellCount++;
      try {
        shell = await CommandShell.open(this.#client);
      } catch (error) {
        this.#shellCount--;
        this.#shellsUnavailable = (error as Error).message;
        return this.exec(command, options);
      }
    }
    const failInFlight = (error: Error) => shell.destroy(error);
    this.#inFlight.add(failInFlight);
    try {
      return await shell.run(command, options);
    } catch (error) {
      const lost = this.lost;
      if (lost && error instanceof SshError && !(error instanceof AbortedError)) throw new SshError(`The command ended without an exit status: ${lost}: ${command}`, { cause: error });
      throw error;
    } finally {
      this.#inFlight.delete(failInFlight);
      if (shell.usable && !this.#closed) this.#idleShells.push(shell);
      else this.#shellCount--;
    }
  }

  /** Close the connection; commands still running fail with `reason` (or a generic error). */
  close(reason?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const fail of this.#inFlight) fail(reason ?? new SshError('The SSH session was closed while the command ran'));
    this.#idleShells = [];
    this.#client.end();
    this.#client.destroy();
  }

  async #slot(): Promise<void> {
    if (this.#active < MAX_CHANNELS) {
      this.#active++;
      return;
    }
    await new Promise<void>((resolve) => this.#queue.push(resolve));
    this.#active++;
  }

  #exec(command: string, options: RawExecOptions): Promise<RawExecResult> {
    return new Promise((resolve, reject) => {
      if (options.signal?.aborted) return reject(new AbortedError('Guest command', { cause: options.signal.reason }));
      this.#client.exec(command, (error, channel: ClientChannel) => {
        if (error) return reject(new SshError(`Could not open an SSH channel: ${error.message}`, { cause: error }));
        const stdout: Buffer[] = [];
        const stderr: Buffer[] = [];
        let exitCode: number | undefined;
        let exitSignal: string | undefined;
        let settled = false;
        const settle = (outcome: { timedOut: boolean } | { error: Error }) => {
          if (settled) return;
          settled = true;
          this.#inFlight.delete(failInFlight);
          clearTimeout(timer);
          options.signal?.removeEventListener('abort', onAbort);
          if ('error' in outcome) return reject(outcome.error);
          resolve({
            stdout: Buffer.concat(stdout),
            stderr: Buffer.concat(stderr),
            exitCode: exitCode ?? (exitSignal ? 128 + (SIGNAL_NUMBERS[exitSignal] ?? 0) : 255),
            signal: exitSignal,
            timedOut: outcome.timedOut,
          });
        };
        // Settle at once and drop the channel. sshd may keep the command running (it only signals
        // commands of its own user, and only while stdin is open); callers that need the command
        // killed inside the guest wrap it with timeout(1), see StartedGuest.exec.
        const abandon = (outcome: { timedOut: boolean } | { error: Error }) => {
          settle(outcome);
          channel.close();
        };
        const failInFlight = (error: Error) => settle({ error });
        this.#inFlight.add(failInFlight);
        const timer = options.timeoutMs ? setTimeout(() => abandon({ timedOut: true }), options.timeoutMs) : undefined;
        const onAbort = () => abandon({ error: new AbortedError(`Guest command ${command}`, { cause: options.signal?.reason }) });
        options.signal?.addEventListener('abort', onAbort, { once: true });
        // A stdout stream gets the data with backpressure; the command counts as done once the
        // stream has taken all of it (its writable side only: a pipe to a child is a Duplex).
        const stdoutDone = options.stdout
          ? finished(channel.pipe(options.stdout), { readable: false }).catch((error: unknown) => {
              abandon({ error: new SshError(`Writing the output of ${command} failed: ${(error as Error).message}`, { cause: error }) });
            })
          : Promise.resolve();
        if (!options.stdout) channel.on('data', (chunk: Buffer) => stdout.push(chunk));
        channel.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
        channel.on('exit', (code: number | null, signalName?: string) => {
          if (typeof code === 'number') exitCode = code;
          else if (signalName) exitSignal = signalName;
        });
        channel.on('close', () => {
          const lost = this.lost;
          if (exitCode === undefined && exitSignal === undefined && lost) {
            settle({ error: new SshError(`The command ended without an exit status: ${lost}: ${command}`) });
          } else {
            void stdoutDone.then(() => settle({ timedOut: false }));
          }
        });
        const { stdin } = options;
        if (stdin === undefined) channel.end();
        else if (typeof stdin === 'string' || stdin instanceof Uint8Array) channel.end(stdin);
        else {
          stdin.once('error', (error) => abandon({ error: new SshError(`Reading the input of ${command} failed: ${error.message}`, { cause: error }) }));
          stdin.pipe(channel);
        }
      });
    });
  }
}

/**
 * What the login shell runs to become a command shell: itself again, reading commands from stdin,
 * so that commands are parsed and run exactly as on a channel of their own (sshd runs those with
 * `$SHELL -c`): the same shell, user, environment and home directory. /bin/sh for a login shell
 * that is not a POSIX shell.
 */
export const COMMAND_SHELL = 'case "$SHELL" in */bash|*/sh|*/dash|*/ash|*/ksh|*/mksh|*/zsh) exec "$SHELL" ;; *) exec /bin/sh ;; esac';

/**
 * A shell reading commands from one SSH channel, one command at a time. Each command runs in a
 * subshell with stdin from /dev/null; after it, the shell prints a marker with a fresh random token
 * and the exit status on stdout, and the token on stderr. Everything before the markers is the
 * command's output, byte for byte. A command that times out or is aborted on the host side takes
 * the shell with it (the next command gets a new one).
 */
class CommandShell {
  #channel: ClientChannel;
  #dead: Error | undefined;
  #current: { token: Buffer; stdout: Buffer[]; stderr: Buffer[]; exitCode?: number; stderrDone: boolean; check: () => void; fail: (error: Error) => void } | undefined;
  /** Per stream, bytes held back because they could be the start of the current marker. */
  #tail = { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };

  private constructor(channel: ClientChannel) {
    this.#channel = channel;
    channel.on('data', (chunk: Buffer) => this.#onData(chunk, 'stdout'));
    channel.stderr.on('data', (chunk: Buffer) => this.#onData(chunk, 'stderr'));
    channel.on('close', () => this.destroy(new SshError('The command shell closed')));
    channel.on('error', (error: Error) => this.destroy(new SshError(`The command shell failed: ${error.message}`, { cause: error })));
  }

  static open(client: Client): Promise<CommandShell> {
    return new Promise((resolve, reject) => {
      client.exec(COMMAND_SHELL, (error, channel) => {
        if (error) return reject(new SshError(`Could not open a command shell: ${error.message}`, { cause: error }));
        resolve(new CommandShell(channel));
      });
    });
  }

  get usable(): boolean {
    return !this.#dead && !this.#current;
  }

  destroy(reason: Error): void {
    if (this.#dead) return;
    this.#dead = reason;
    this.#current?.fail(reason);
    this.#channel.close();
  }

  run(command: string, options: RawExecOptions): Promise<RawExecResult> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#current) return Promise.reject(new SshError('A command shell runs one command at a time'));
    if (options.signal?.aborted) return Promise.reject(new AbortedError('Guest command', { cause: options.signal.reason }));
    const token = randomBytes(16).toString('hex');
    return new Promise<RawExecResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#current = undefined;
      };
      const onAbort = () => this.destroy(new AbortedError(`Guest command ${command}`, { cause: options.signal?.reason }));
      const current = {
        token: Buffer.from(token),
        stdout: [] as Buffer[],
        stderr: [] as Buffer[],
        exitCode: undefined as number | undefined,
        stderrDone: false,
        check: () => {
          if (current.exitCode === undefined || !current.stderrDone) return;
          done();
          // A shell reports a command killed by a signal as 128 + its number.
          resolve({ stdout: Buffer.concat(current.stdout), stderr: Buffer.concat(current.stderr), exitCode: current.exitCode, signal: undefined, timedOut: false });
        },
        fail: (error: Error) => {
          done();
          reject(error);
        },
      };
      this.#current = current;
      this.#tail = { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
      if (options.timeoutMs) {
        timer = setTimeout(() => {
          done();
          // What came so far, including bytes held back as a possible start of the marker.
          const stdout = Buffer.concat([...current.stdout, this.#tail.stdout]);
          const stderr = Buffer.concat([...current.stderr, this.#tail.stderr]);
          resolve({ stdout, stderr, exitCode: 255, signal: undefined, timedOut: true });
          this.destroy(new SshError('The command shell was given up after a command timed out'));
        }, options.timeoutMs);
      }
      options.signal?.addEventListener('abort', onAbort, { once: true });
      // The newline before ")" ends the command even if it ends in a comment; "$?" of the subshell
      // is the command's exit status. A stateless command runs in place: a subshell is a fork, which
      // under TCG costs more than the builtin itself.
      const framed = options.stateless ? `${command} </dev/null` : `(\n${command}\n) </dev/null`;
      this.#channel.write(`${framed}; printf '%s:%s\\n' ${token} "$?"; printf '%s\\n' ${token} >&2\n`);
    });
  }

  /**
   * Output goes to the current command until its marker. The marker can arrive split across chunks,
   * so the last bytes that could be the start of one are held back until the next chunk.
   */
  #onData(chunk: Buffer, stream: 'stdout' | 'stderr'): void {
    const current = this.#current;
    if (!current) return; // output of something a finished command left running: nobody's
    const done = stream === 'stdout' ? current.exitCode !== undefined : current.stderrDone;
    if (done) return;
    const data = Buffer.concat([this.#tail[stream], chunk]);
    const at = data.indexOf(current.token);
    const sink = current[stream];
    if (at === -1) {
      const keep = Math.min(data.length, current.token.length + 8);
      sink.push(data.subarray(0, data.length - keep));
      this.#tail[stream] = data.subarray(data.length - keep);
      return;
    }
    sink.push(data.subarray(0, at));
    const rest = data.subarray(at + current.token.length);
    const newline = rest.indexOf(0x0a);
    if (newline === -1) {
      // The marker's end is still to come.
      this.#tail[stream] = data.subarray(at);
      return;
    }
    this.#tail[stream] = Buffer.alloc(0);
    if (stream === 'stdout') {
      const m = /^:(\d+)$/.exec(rest.subarray(0, newline).toString('latin1'));
      if (!m) return this.destroy(new SshError(`The command shell printed a malformed status marker: ${JSON.stringify(rest.subarray(0, newline).toString('latin1'))}`));
      current.exitCode = Number(m[1]);
    } else {
      current.stderrDone = true;
    }
    current.check();
  }
}
