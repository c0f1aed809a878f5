// Run a host tool with its output kept for the error message (and optionally streamed as progress).
import { execa } from 'execa';
import { tailLines } from '../errors.ts';

export interface RunOptions {
  signal?: AbortSignal | undefined;
  /** Called with each output line as it arrives. */
  onLine?: (line: string) => void;
  timeoutMs?: number;
  env?: Record<string, string>;
  /** Written to the tool's standard input (default: none). */
  input?: string;
}

export interface RunFailure {
  command: string;
  exitCode: number | undefined;
  output: string;
}

/** Runs `file args`; resolves with stdout, rejects with an Error whose message ends in the output tail. */
export async function run(file: string, args: string[], options: RunOptions = {}): Promise<string> {
  const subprocess = execa(file, args, {
    reject: false,
    all: true,
    cancelSignal: options.signal,
    timeout: options.timeoutMs,
    env: options.env,
    ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
    forceKillAfterDelay: 5000,
  });
  if (options.onLine && subprocess.all) {
    let pending = '';
    subprocess.all.on('data', (chunk: Buffer) => {
      pending += chunk.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) options.onLine!(line);
    });
  }
  const result = await subprocess;
  if (result.failed) {
    const how = result.isCanceled ? 'was aborted' : result.timedOut ? 'timed out' : `exited with code ${result.exitCode ?? result.signal}`;
    throw new Error(`${[file, ...args].join(' ')} ${how}\n${tailLines(String(result.all ?? ''), 30)}`);
  }
  return String(result.stdout);
}
