// Service state: systemd units (`systemctl show`) or OpenRC services (`rc-service NAME status`),
// and the text that explains a failed one (status plus recent log lines).
import { describeUnitState, tailLines, type UnitState } from '../errors.ts';
import { quoteArgv } from '../util/shell-quote.ts';
import { expectString } from '../util/validate.ts';
import { detectTools, required } from './detect.ts';
import { lines, query, type ExecOutput, type GuestExecutor } from './executor.ts';

// The state type and its description live beside UnitFailedError, which carries them.
export { describeUnitState, type UnitState };

// Unit and service names: no leading dash (an option), no spaces or globs. "@", ":" and "\" occur
// in systemd template instances ("getty@tty1", "mnt-a\x2db.mount").
const UNIT_NAME = /^[A-Za-z0-9_.@:\\][A-Za-z0-9_.@:\\-]*$/;
const DIAGNOSTIC_LOG_LINES = 30;
// OpenRC's status exit codes, for services whose status() prints something else.
const OPENRC_EXIT_STATES: Record<number, string> = { 0: 'started', 3: 'stopped', 4: 'stopping', 8: 'starting', 16: 'inactive', 32: 'crashed' };

export function systemctlShowArgv(systemctl: string, name: string): string[] {
  return [systemctl, 'show', '-p', 'LoadState', '-p', 'ActiveState', '-p', 'SubState', '-p', 'Result', name];
}

/** `systemctl show -p ...`: "Key=value" lines in systemd's own order. A missing unit is LoadState=not-found. */
export function parseSystemctlShow(output: ExecOutput): UnitState | undefined {
  if (output.exitCode !== 0) return undefined;
  const props = new Map(lines(output.stdout).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  const loadState = props.get('LoadState');
  const state = props.get('ActiveState');
  if (!loadState || !state) return undefined;
  const unit: UnitState = { manager: 'systemd', active: state === 'active' || state === 'reloading', state, loadState, loaded: loadState === 'loaded' };
  const subState = props.get('SubState');
  const result = props.get('Result');
  if (subState) unit.subState = subState;
  if (result) unit.result = result;
  return unit;
}

/** `rc-service NAME status`: " * status: started" (exit 0), "stopped" (3), "crashed" (32), ... */
export function parseRcServiceStatus(output: ExecOutput): UnitState | undefined {
  // Colours only appear on a terminal, but a forced RC_COLOR would add them.
  const text = (output.stdout + output.stderr).replace(/\x1b\[[0-9;]*m/g, '');
  if (output.exitCode !== 0 && /service .* does not exist/.test(text)) {
    return { manager: 'openrc', active: false, state: 'not-found', loaded: false };
  }
  const state = /status: ([a-z]+)/.exec(text)?.[1] ?? OPENRC_EXIT_STATES[output.exitCode];
  return state === undefined ? undefined : { manager: 'openrc', active: state === 'started', state, loaded: true };
}

export async function unitState(executor: GuestExecutor, name: string): Promise<UnitState> {
  const { manager, paths } = await serviceTools(executor, name);
  return manager === 'systemd'
    ? query(executor, systemctlShowArgv(paths.systemctl!, name), parseSystemctlShow)
    : query(executor, [paths['rc-service']!, name, 'status'], parseRcServiceStatus, { sudo: true });
}

/**
 * What explains a unit's state: systemd's status and the unit's last journal lines, or OpenRC's
 * status and the lines of /var/log/messages that mention the service. Never throws: a part that
 * cannot be had says why instead.
 */
export async function unitDiagnostics(executor: GuestExecutor, name: string): Promise<string> {
  const { manager, paths } = await serviceTools(executor, name);
  const lastLines = String(DIAGNOSTIC_LOG_LINES);
  if (manager === 'systemd') {
    const sections = await Promise.all([
      section(executor, [paths.systemctl!, 'status', '--no-pager', '-l', '-n', '0', name]),
      section(executor, [paths.journalctl ?? 'journalctl', '-u', name, '-n', lastLines, '--no-pager', '-o', 'short-precise']),
    ]);
    return sections.join('\n');
  }
  const sections = await Promise.all([
    section(executor, [paths['rc-service']!, name, 'status']),
    // Filtered on the host: the name never reaches a grep pattern or a script.
    section(executor, ['tail', '-n', '2000', '/var/log/messages'], (text) =>
      tailLines(text.split('\n').filter((line) => line.includes(name)).join('\n'), DIAGNOSTIC_LOG_LINES) || `(no line mentions ${name})`),
  ]);
  return sections.join('\n');
}

async function serviceTools(executor: GuestExecutor, name: string) {
  expectString('name', name, UNIT_NAME, 'a unit name has no spaces or wildcards and does not start with "-"');
  const tools = await detectTools(executor);
  const manager = required(executor, tools.serviceManager, 'service manager', 'systemd, OpenRC');
  return { manager, paths: tools.paths };
}

async function section(executor: GuestExecutor, argv: string[], filter = (text: string) => text): Promise<string> {
  const header = `--- sudo ${quoteArgv(argv)} ---`;
  try {
    const output = await executor.exec(argv, { sudo: true });
    const text = output.exitCode === 0 ? filter(output.stdout) : output.stdout + output.stderr;
    return `${header}\n${text.trimEnd() || '(no output)'}`;
  } catch (error) {
    return `${header}\n(unavailable: ${(error as Error).message.split('\n')[0]})`;
  }
}
