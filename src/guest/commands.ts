// Commands in a guest: through the guest agent when the guest has one (runOnAgent), otherwise argv
// quoted into one command line (sudo, timeout, env, cwd around it) and run on the guest's SSH
// session (runCommand). StartedGuest's exec(), succeed() and fail() are built on these.
import os from 'node:os';
import type { AgentClient } from '../agent/client.ts';
import { GuestCommandError, GuestlabError } from '../errors.ts';
import type { ExecResult } from '../exec-result.ts';
import type { SshSession } from '../ssh/session.ts';
import { quoteArg, quoteArgv } from '../util/shell-quote.ts';
import { describeValue, expectPositiveInteger } from '../util/validate.ts';
import type { ExecOptions } from './types.ts';

/** timeout(1) in the guest sends KILL this long after TERM. */
const GUEST_KILL_AFTER_S = 2;
/** The host gives up on a timed-out command this long after the guest should have killed it. */
const HOST_BACKSTOP_MS = GUEST_KILL_AFTER_S * 1000 + 5_000;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Builtins of every POSIX shell that change nothing in the shell running them. */
const STATELESS_BUILTINS = new Set(['true', 'false', ':', 'test', '[', 'echo', 'printf', 'pwd']);

/** argv, or a script for `sh -c`, as users pass it to succeed(), fail() and waitUntil(). */
export type ArgvOrScript = string[] | string;

export function toArgv(argvOrScript: ArgvOrScript): string[] {
  return typeof argvOrScript === 'string' ? ['sh', '-c', argvOrScript] : argvOrScript;
}

/** How a command reads in messages: the script as written, or the argv quoted. */
export function describeCommand(argvOrScript: ArgvOrScript): string {
  return typeof argvOrScript === 'string' ? argvOrScript : quoteArgv(argvOrScript);
}

/**
 * A command the command shell may run without a subshell: a stateless builtin with nothing around
 * it (no sudo, timeout, env or cwd), and not `printf -v`, which assigns a variable in bash.
 */
export function isStatelessBuiltin(argv: readonly string[], options: Pick<ExecOptions, 'sudo' | 'timeoutMs' | 'env' | 'cwd'>): boolean {
  const [name, first] = argv;
  if (name === undefined || !STATELESS_BUILTINS.has(name)) return false;
  if (options.sudo || options.timeoutMs !== undefined || options.env || options.cwd !== undefined) return false;
  return !(name === 'printf' && first?.startsWith('-'));
}

/**
 * argv[0] names the program. A word with "=" in it would be read as an assignment instead (by the
 * shell when it comes first, by sudo and env anywhere before the program), and the next word run:
 * ['FOO=bar', 'id'] would run id. It is refused on every path, so argv means the same everywhere.
 */
export function expectProgram(argv: readonly string[]): void {
  if (!Array.isArray(argv)) throw new TypeError(`Expected \`argv\` to be an array of strings, got ${describeValue(argv)}`);
  const program = argv[0];
  if (typeof program === 'string' && program.includes('=')) {
    throw new TypeError(
      `Expected \`argv[0]\` to name a program, got ${JSON.stringify(program)}: a word with "=" would be read as an environment assignment. ` +
        `Pass variables in \`env\` (exec(['id'], { env: { NAME: 'value' } })), or run such a program through a shell: ['sh', '-c', '"$0"', ${JSON.stringify(program)}].`,
    );
  }
}

/**
 * The command line for argv with the options around it; every argument quoted. `redacted`: the
 * line for messages, with each environment value shown as *** (env often carries secrets).
 */
export function commandLine(argv: string[], options: ExecOptions, redacted = false): string {
  expectProgram(argv);
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
      return `${key}=${redacted ? '***' : value}`;
    });
    prefix.push('env', ...pairs);
  }
  const command = quoteArgv([...prefix, ...argv]);
  return options.cwd === undefined ? command : `cd ${quoteArg(options.cwd)} && ${command}`;
}

/** Runs argv on the session and decodes the result. */
export async function runCommand(session: SshSession, argv: string[], options: ExecOptions): Promise<ExecResult> {
  const command = commandLine(argv, options);
  const label = options.env ? commandLine(argv, options, true) : undefined;
  const started = performance.now();
  const { timeoutMs } = options;
  const raw = await session.run(command, {
    ownChannel: options.ownChannel,
    stdin: options.stdin,
    stdout: options.stdout,
    signal: options.signal,
    stateless: isStatelessBuiltin(argv, options),
    label,
    timeoutMs: timeoutMs === undefined ? undefined : timeoutMs + HOST_BACKSTOP_MS,
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

/**
 * Runs argv through the guest agent (the command channel): as the login user `user`, or as root
 * with `sudo`. The agent execs argv itself (no shell), kills the command's process group on timeout
 * (TERM, KILL 2 s later) and on abort, and keeps working with the guest's network or sshd down.
 */
export async function runOnAgent(agent: AgentClient, user: string, argv: string[], options: ExecOptions): Promise<ExecResult> {
  if (!Array.isArray(argv)) throw new TypeError(`Expected \`argv\` to be an array of strings, got ${describeValue(argv)}`);
  if (options.timeoutMs !== undefined) expectPositiveInteger('timeoutMs', options.timeoutMs);
  const started = performance.now();
  const raw = await agent.exec({
    argv,
    ...(options.sudo ? {} : { user }),
    ...(options.env === undefined ? {} : { env: options.env }),
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    ...(options.stdin === undefined ? {} : { stdin: options.stdin }),
    ...(options.stdout === undefined ? {} : { stdout: options.stdout }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
  });
  return {
    stdout: raw.stdout.toString('utf8'),
    stderr: raw.stderr.toString('utf8'),
    // As a shell reports a command killed by a signal, and as the SSH path does.
    exitCode: raw.exitCode ?? 128 + (raw.signal ? (os.constants.signals[`SIG${raw.signal}` as NodeJS.Signals] ?? 0) : 0),
    signal: raw.signal ?? undefined,
    timedOut: raw.timedOut,
    durationMs: performance.now() - started,
  };
}

/** Runs argv through the agent while it answers, on the SSH session otherwise (a launch's own commands). */
export async function runOnAgentOrSession(channels: { agent?: AgentClient | undefined; session?: SshSession | undefined }, user: string, argv: string[], options: ExecOptions): Promise<ExecResult> {
  const { agent, session } = channels;
  expectProgram(argv);
  if (agent && !agent.lost) return runOnAgent(agent, user, argv, options);
  if (!session) throw new GuestlabError('Cannot run a command in the guest: it has neither an agent nor an SSH session yet');
  return runCommand(session, argv, options);
}

/** runOnAgentOrSession as root: the agent runs it as root itself; over SSH it goes through `sudo -n`. */
export function runAsRootOnAgentOrSession(channels: { agent?: AgentClient | undefined; session?: SshSession | undefined }, argv: string[], options: ExecOptions): Promise<ExecResult> {
  const { agent } = channels;
  return runOnAgentOrSession(channels, 'root', agent && !agent.lost ? argv : ['sudo', '-n', ...argv], options);
}

/** The error for a command that did not end the way succeed() or fail() expected. */
export function unexpectedOutcome(guest: string, argvOrScript: ArgvOrScript, result: ExecResult, expected?: string): GuestCommandError {
  return new GuestCommandError({
    command: describeCommand(argvOrScript),
    exitCode: result.exitCode,
    signal: result.signal,
    stdout: result.stdout,
    stderr: result.stderr,
    timedOut: result.timedOut,
    guest,
    expected,
  });
}
