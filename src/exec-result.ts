// What a command run in a guest gave back: one shape for every layer. The SSH layer hands it over
// with the output as bytes (ExecResult<Buffer>); StartedGuest decodes it (ExecResult, text).

export interface ExecResult<Output extends string | Buffer = string> {
  stdout: Output;
  stderr: Output;
  exitCode: number;
  /** Signal name when the command was killed by one. */
  signal?: string | undefined;
  /** The command ran past its `timeoutMs` and was killed. */
  timedOut?: boolean | undefined;
  /** From the call to the result, as the host saw it. */
  durationMs?: number | undefined;
}

/** What inspections and matchers read from a result. */
export type ExecOutput = Pick<ExecResult, 'stdout' | 'stderr' | 'exitCode'>;
