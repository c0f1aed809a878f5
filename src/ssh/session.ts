// One SSH connection per guest (ssh2), with the guest's host key pinned. The only module that
// imports ssh2's Client. Commands run as separate channels on the shared connection.
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
}

export interface RawExecResult {
  stdout: Buffer;
  stderr: Buffer;
  exitCode: number;
  signal: string | undefined;
  timedOut: boolean;
}

/** OpenSSH's default MaxSessions is 10; stay below it and queue the rest. */
const MAX_CHANNELS = 8;

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

  /** Close the connection; commands still running fail with `reason` (or a generic error). */
  close(reason?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const fail of this.#inFlight) fail(reason ?? new SshError('The SSH session was closed while the command ran'));
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
