// One command on an SSH channel of its own: the way for commands with stdin or streamed stdout,
// and the fallback when no command shell is free. sshd sets up a session for each such command.
import { finished } from 'node:stream/promises';
import type { Client, ClientChannel } from 'ssh2';
import { AbortedError, SshError } from '../errors.ts';
import type { RawExecOptions, RawExecResult } from './raw-exec.ts';

const SIGNAL_NUMBERS: Record<string, number> = { HUP: 1, INT: 2, QUIT: 3, ILL: 4, ABRT: 6, FPE: 8, KILL: 9, SEGV: 11, PIPE: 13, ALRM: 14, TERM: 15 };

/** What the session lends a command on a channel of its own. */
export interface ChannelContext {
  /** Why the connection is unusable, or undefined while it is fine. */
  lost: () => string | undefined;
  /** The command registers here how to fail it, for a session closed under it. */
  inFlight: Set<(error: Error) => void>;
}

export function execOnChannel(client: Client, command: string, options: RawExecOptions, context: ChannelContext): Promise<RawExecResult> {
  // Messages name the command by its label: the command line itself may carry environment values.
  const shown = options.label ?? command;
  return new Promise((resolve, reject) => {
    if (options.signal?.aborted) return reject(new AbortedError('Guest command', { cause: options.signal.reason }));
    client.exec(command, (error, channel: ClientChannel) => {
      if (error) return reject(new SshError(`Could not open an SSH channel: ${error.message}`, { cause: error }));
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      let exitCode: number | undefined;
      let exitSignal: string | undefined;
      let settled = false;
      const settle = (outcome: { timedOut: boolean } | { error: Error }) => {
        if (settled) return;
        settled = true;
        context.inFlight.delete(failInFlight);
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
      context.inFlight.add(failInFlight);
      const timer = options.timeoutMs ? setTimeout(() => abandon({ timedOut: true }), options.timeoutMs) : undefined;
      const onAbort = () => abandon({ error: new AbortedError(`Guest command ${shown}`, { cause: options.signal?.reason }) });
      options.signal?.addEventListener('abort', onAbort, { once: true });
      // A stdout stream gets the data with backpressure; the command counts as done once the
      // stream has taken all of it (its writable side only: a pipe to a child is a Duplex).
      const stdoutDone = options.stdout
        ? finished(channel.pipe(options.stdout), { readable: false }).catch((error: unknown) => {
            abandon({ error: new SshError(`Writing the output of ${shown} failed: ${(error as Error).message}`, { cause: error }) });
          })
        : Promise.resolve();
      if (!options.stdout) channel.on('data', (chunk: Buffer) => stdout.push(chunk));
      channel.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
      channel.on('exit', (code: number | null, signalName?: string) => {
        if (typeof code === 'number') exitCode = code;
        else if (signalName) exitSignal = signalName;
      });
      channel.on('close', () => {
        const lost = context.lost();
        if (exitCode === undefined && exitSignal === undefined && lost) {
          settle({ error: new SshError(`The command ended without an exit status: ${lost}: ${shown}`) });
        } else {
          void stdoutDone.then(() => settle({ timedOut: false }));
        }
      });
      const { stdin } = options;
      if (stdin === undefined) channel.end();
      else if (typeof stdin === 'string' || stdin instanceof Uint8Array) channel.end(stdin);
      else {
        stdin.once('error', (error) => abandon({ error: new SshError(`Reading the input of ${shown} failed: ${error.message}`, { cause: error }) }));
        stdin.pipe(channel);
      }
    });
  });
}
