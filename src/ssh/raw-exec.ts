// What running one command over SSH takes and gives back, whether it runs on a command shell or on
// a channel of its own.
import type { Readable, Writable } from 'node:stream';
import type { ExecResult } from '../exec-result.ts';

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
  /** How the command reads in error messages, when the command line holds what must not be shown (environment values). */
  label?: string | undefined;
}

/** A result as it comes off the channel: output as bytes. */
export type RawExecResult = ExecResult<Buffer>;
