// The long-lived command shell: one SSH channel whose shell runs command after command, so that a
// command costs no session setup in the guest's sshd. SshSession keeps a few per connection.
import { randomBytes } from 'node:crypto';
import type { Client, ClientChannel } from 'ssh2';
import { AbortedError, SshError } from '../errors.ts';
import type { RawExecOptions, RawExecResult } from './raw-exec.ts';

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
export class CommandShell {
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
      const onAbort = () => this.destroy(new AbortedError(`Guest command ${options.label ?? command}`, { cause: options.signal?.reason }));
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
