// Waiting for a guest to reach a condition: a unit active, a port listening, a file present, a
// console line, a command succeeding. Each is a poll (waits.ts) whose timeout shows what was last seen.
import fs from 'node:fs/promises';
import type { ExecResult } from '../exec-result.ts';
import { describeUnitState, unitDiagnostics, unitState, type UnitState } from '../inspect/units.ts';
import { formatSocket, listeningSockets, type ListeningSocket } from '../inspect/sockets.ts';
import { describeValue, expectOneOf, expectPositiveInteger } from '../util/validate.ts';
import { describeCommand, toArgv, type ArgvOrScript } from './commands.ts';
import type { ExecOptions } from './types.ts';
import { pollUntil, type PollTarget, type WaitOptions } from './waits.ts';
import { UnitFailedError, WaitTimeoutError } from '../errors.ts';

/** What the waits need of a guest. */
export interface WaitingGuest extends PollTarget {
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
}

export async function waitForUnit(guest: WaitingGuest, name: string, options: WaitOptions): Promise<UnitState> {
  try {
    return await pollUntil(guest, `unit ${name} to be active`, options, async () => {
      const state = await unitState(guest, name);
      if (state.active) return { done: true, value: state };
      if (state.state === 'failed' || state.state === 'crashed') throw new UnitFailedError(guest.name, name, state, await unitDiagnostics(guest, name));
      return { done: false, seen: state.loaded ? describeUnitState(state) : `unit ${name} is not loaded (${describeUnitState(state)})` };
    });
  } catch (error) {
    if (!(error instanceof WaitTimeoutError)) throw error;
    throw new WaitTimeoutError(guest.name, `unit ${name} to be active`, error.timeoutMs, `${error.lastSeen}\n${await unitDiagnostics(guest, name)}`);
  }
}

export async function waitForPort(guest: WaitingGuest, port: number, options: WaitOptions & { protocol?: 'tcp' | 'udp' }): Promise<ListeningSocket> {
  expectPositiveInteger('port', port);
  const protocol = expectOneOf('protocol', options.protocol ?? 'tcp', ['tcp', 'udp'] as const);
  return pollUntil(guest, `${protocol} port ${port} to listen`, options, async () => {
    const sockets = await listeningSockets(guest);
    const found = sockets.find((socket) => socket.port === port && socket.protocol === protocol);
    return found ? { done: true, value: found } : { done: false, seen: `listening: ${sockets.map(formatSocket).join(', ') || 'nothing'}` };
  });
}

export async function waitForFile(guest: WaitingGuest, guestPath: string, options: WaitOptions): Promise<void> {
  if (typeof guestPath !== 'string' || !guestPath) throw new TypeError(`Expected \`path\` to be a path in the guest, got ${describeValue(guestPath)}`);
  await pollUntil(guest, `file ${guestPath}`, options, async () => {
    const result = await guest.exec(['sh', '-c', 'test -e "$1" || { ls -la -- "$(dirname -- "$1")" 2>&1; exit 1; }', 'sh', guestPath], { sudo: true });
    return result.exitCode === 0 ? { done: true, value: undefined } : { done: false, seen: `${guestPath} does not exist; its directory:\n${result.stdout}${result.stderr}` };
  });
}

/** Everything the guest wrote to its serial console so far ('' before it wrote anything). */
export function readConsole(serialLog: string): Promise<string> {
  return fs.readFile(serialLog, 'utf8').catch(() => '');
}

export async function waitForConsole(guest: PollTarget, serialLog: string, pattern: RegExp | string, options: WaitOptions & { fromNow?: boolean }): Promise<RegExpMatchArray> {
  const regex = typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : pattern;
  if (!(regex instanceof RegExp)) throw new TypeError(`Expected \`pattern\` to be a RegExp or a string, got ${describeValue(pattern)}`);
  const skip = options.fromNow ? (await readConsole(serialLog)).length : 0;
  return pollUntil(guest, `console output matching ${regex}`, options, async () => {
    const text = (await readConsole(serialLog)).slice(skip);
    const match = text.match(new RegExp(regex.source, regex.flags.replace('g', '')));
    return match ? { done: true, value: match } : { done: false, seen: `serial console, last lines:\n${text.split('\n').slice(-15).join('\n')}` };
  });
}

export async function waitUntil(guest: WaitingGuest, argvOrScript: ArgvOrScript, options: WaitOptions & Pick<ExecOptions, 'sudo' | 'env' | 'cwd'>): Promise<ExecResult> {
  const argv = toArgv(argvOrScript);
  const { sudo, env, cwd } = options;
  return pollUntil(guest, `\`${describeCommand(argvOrScript)}\` to succeed`, options, async () => {
    const result = await guest.exec(argv, { sudo, env, cwd });
    return result.exitCode === 0
      ? { done: true, value: result }
      : { done: false, seen: `exit code ${result.exitCode}\n--- stdout ---\n${result.stdout.trim()}\n--- stderr ---\n${result.stderr.trim()}` };
  });
}
