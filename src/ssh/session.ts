// One SSH connection per guest (connection.ts: ssh2, the guest's host key pinned). Commands run
// either on a long-lived command shell (command-shell.ts: a few of them, reused, no per-command
// session setup in the guest's sshd) or on a channel of their own (channel.ts: stdin, streamed
// stdout, or every command shell busy), at most MAX_CHANNELS at once (channel-limit.ts).
import { AbortedError, SshError } from '../errors.ts';
import { execOnChannel } from './channel.ts';
import { ChannelLimit } from './channel-limit.ts';
import { CommandShell } from './command-shell.ts';
import { SshConnection, type ConnectOptions, type SshEndpoint } from './connection.ts';
import type { RawExecOptions, RawExecResult } from './raw-exec.ts';

export { COMMAND_SHELL } from './command-shell.ts';
export type { ConnectOptions, SshEndpoint } from './connection.ts';
export type { RawExecOptions, RawExecResult } from './raw-exec.ts';

/** Long-lived command shells per connection, on top of MAX_CHANNELS. */
const MAX_SHELLS = 2;

export class SshSession {
  readonly endpoint: SshEndpoint;
  #connection: SshConnection;
  #closed = false;
  #channels = new ChannelLimit();
  /** Settles every command in flight with an error; used when the session is closed under them. */
  #inFlight = new Set<(error: Error) => void>();
  #idleShells: CommandShell[] = [];
  #shellCount = 0;
  /** Set when a command shell could not be started; every command then gets a channel of its own. */
  #shellsUnavailable: string | undefined;

  private constructor(endpoint: SshEndpoint, connection: SshConnection) {
    this.endpoint = endpoint;
    this.#connection = connection;
  }

  /**
   * Authenticate over `sock` (already connected, e.g. by the banner wait) or a new connection.
   * Rejects with HostKeyMismatchError when the server's key is not the pinned one.
   */
  static async connect(endpoint: SshEndpoint, options: ConnectOptions = {}): Promise<SshSession> {
    return new SshSession(endpoint, await SshConnection.open(endpoint, options));
  }

  /** Why the connection is unusable, or undefined while it is fine. */
  get lost(): string | undefined {
    return this.#closed ? 'the session was closed' : this.#connection.lostReason;
  }

  async exec(command: string, options: RawExecOptions = {}): Promise<RawExecResult> {
    const lost = this.lost;
    if (lost) throw new SshError(`Cannot run a command: ${lost}`);
    await this.#channels.acquire();
    try {
      return await execOnChannel(this.#connection.client, command, options, { lost: () => this.lost, inFlight: this.#inFlight });
    } finally {
      this.#channels.release();
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
        shell = await CommandShell.open(this.#connection.client);
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
    this.#connection.client.end();
    this.#connection.client.destroy();
  }
}
