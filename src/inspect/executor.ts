// What inspection needs from a guest: a name for messages and exec(). StartedGuest fits, and so
// does a fake in unit tests. Commands go as argv; user input is never spliced into a script.
import type { ExecOutput } from '../exec-result.ts';
import { GuestCommandError, InspectError, tailLines } from '../errors.ts';
import { quoteArgv } from '../util/shell-quote.ts';

export type { ExecOutput };

export interface GuestExecutor {
  /** The guest's name, for messages. */
  readonly name: string;
  exec(argv: string[], options?: { sudo?: boolean; timeoutMs?: number }): Promise<ExecOutput>;
}

/**
 * Runs argv and parses its output. A parser returns undefined for output it does not recognise:
 * that becomes a GuestCommandError (non-zero exit) or an InspectError (exit 0), with the output.
 */
export async function query<T>(
  executor: GuestExecutor,
  argv: string[],
  parse: (output: ExecOutput) => T | undefined,
  options: { sudo?: boolean } = {},
): Promise<T> {
  const output = await executor.exec(argv, options);
  const parsed = parse(output);
  if (parsed !== undefined) return parsed;
  const command = quoteArgv(options.sudo ? ['sudo', ...argv] : argv);
  if (output.exitCode !== 0) {
    throw new GuestCommandError({ ...output, command, guest: executor.name });
  }
  throw new InspectError(
    `Guest ${executor.name}: unexpected output from ${command}; guestlab cannot read it. ` +
      'Please report it with the guest image name.\n' +
      `--- stdout (last lines) ---\n${tailLines(output.stdout, 20)}\n--- stderr (last lines) ---\n${tailLines(output.stderr, 20)}`,
  );
}

/** The non-empty lines of a command's output, without trailing blanks. */
export function lines(text: string): string[] {
  return text.split('\n').map((line) => line.trimEnd()).filter((line) => line.trim() !== '');
}
