// Matchers that look inside a guest: `await expect(vm).toHaveActiveUnit('nginx')`, and
// `expect(await vm.exec(argv)).toSucceed()`. Messages name the guest and say what was found.
import { expect, type MatcherState, type SyncMatcherResult } from 'vitest';
import type { ExecResult } from '../exec-result.ts';
import { tailLines } from '../errors.ts';
import { parseMode } from '../guest/files.ts';
import type { GuestExecutor } from '../inspect/executor.ts';
import { fileInfo, readFileText, textContains, type FileType } from '../inspect/files.ts';
import { packageInfo, upstreamVersion } from '../inspect/packages.ts';
import { formatSocket, listeningSockets } from '../inspect/sockets.ts';
import { describeUnitState, unitDiagnostics, unitState } from '../inspect/units.ts';
import { userInfo } from '../inspect/users.ts';
import { describeValue, expectOneOf, expectPositiveInteger, expectString, isPlainObject } from '../util/validate.ts';

export interface ListenOnOptions {
  /** Default 'tcp'. */
  protocol?: 'tcp' | 'udp';
  /** Compared as ss/netstat print it (brackets and "%interface" removed): "0.0.0.0", "::" and "*" differ. Default: any. */
  address?: string;
}

export interface HaveFileOptions {
  /** Permission bits including setuid/setgid/sticky: 0o644 or "0644". */
  mode?: number | string;
  owner?: string;
  group?: string;
  /** A string the file's text includes, or a RegExp it matches. */
  contains?: string | RegExp;
  /** What the path itself is; a symbolic link is a 'symlink', whatever it points to. */
  type?: FileType;
}

export interface HavePackageOptions {
  /**
   * A string equals the installed version, the version without its epoch, or its upstream part
   * (without the Debian revision, rpm release or apk "-rN"): "1.22.1-9", "1.22.1". A RegExp is
   * searched in the full version.
   */
  version?: string | RegExp;
}

export interface HaveUserOptions {
  /** Groups the user must be in (among others). */
  groups?: string[];
  shell?: string;
  home?: string;
  uid?: number;
}

declare module 'vitest' {
  // Vitest 5 merges this interface into expect(), expect.extend() and expect.* at once.
  // The guest matchers are asynchronous: await them.
  interface Matchers<R, T> {
    /** The systemd unit or OpenRC service is active (started); on failure, shows its status and last log lines. */
    toHaveActiveUnit(name: string): Promise<void>;
    /** Something listens on the port (TCP unless `protocol` says otherwise). */
    toListenOn(port: number, options?: ListenOnOptions): Promise<void>;
    /** The path exists and, when given, has this type, mode, owner, group and content. Read as root. */
    toHaveFile(path: string, options?: HaveFileOptions): Promise<void>;
    /** The package is installed (dpkg, rpm or apk), in this version when one is given. */
    toHavePackage(name: string, options?: HavePackageOptions): Promise<void>;
    /** The user exists and, when given, has this uid, home, shell and is in these groups. */
    toHaveUser(name: string, options?: HaveUserOptions): Promise<void>;
    /** An exec result (or a promise of one) exited 0 without timing out. */
    toSucceed(): T extends PromiseLike<unknown> ? Promise<void> : R;
  }
}

async function toHaveActiveUnit(this: MatcherState, received: unknown, name: string): Promise<SyncMatcherResult> {
  const guest = expectGuest('toHaveActiveUnit', received);
  const unit = await unitState(guest, name);
  const found = describeUnitState(unit);
  if (unit.active) return result(true, `expected guest ${guest.name} not to have ${name} active, but it is (${found})`);
  const diagnostics = this.isNot ? '' : `\n${await unitDiagnostics(guest, name)}`;
  return result(false, `expected guest ${guest.name} to have ${name} active, but it is not (${found})${diagnostics}`, {
    actual: unit.state,
    expected: unit.manager === 'systemd' ? 'active' : 'started',
  });
}

async function toListenOn(this: MatcherState, received: unknown, port: number, options: ListenOnOptions = {}): Promise<SyncMatcherResult> {
  const guest = expectGuest('toListenOn', received);
  expectPositiveInteger('port', port, 65535);
  expectOptions(options, ['protocol', 'address']);
  const protocol = expectOneOf('protocol', options.protocol ?? 'tcp', ['tcp', 'udp'] as const);
  const address = options.address === undefined ? undefined : expectString('address', options.address).replace(/^\[(.*)\]$/, '$1');
  const sockets = await listeningSockets(guest);
  const matching = sockets.filter((s) => s.port === port && s.protocol === protocol && (address === undefined || s.address === address));
  const what = `${protocol} port ${port}${address === undefined ? '' : ` on ${address}`}`;
  if (matching.length > 0) {
    return result(true, `expected guest ${guest.name} not to listen on ${what}, but it does: ${matching.map(formatSocket).join(', ')}`);
  }
  const listening = sockets.length === 0 ? 'nothing listens' : `it listens on: ${sockets.map(formatSocket).join(', ')}`;
  return result(false, `expected guest ${guest.name} to listen on ${what}, but ${listening}`);
}

async function toHaveFile(this: MatcherState, received: unknown, path: string, options: HaveFileOptions = {}): Promise<SyncMatcherResult> {
  const guest = expectGuest('toHaveFile', received);
  expectOptions(options, ['mode', 'owner', 'group', 'contains', 'type']);
  const mode = options.mode === undefined ? undefined : parseInt(parseMode(options.mode), 8);
  const type = options.type === undefined ? undefined : expectOneOf('type', options.type, ['file', 'directory', 'symlink', 'other'] as const);
  const { owner, group, contains } = options;
  if (owner !== undefined) expectString('owner', owner);
  if (group !== undefined) expectString('group', group);
  if (contains !== undefined && typeof contains !== 'string' && !(contains instanceof RegExp)) {
    throw new TypeError(`Expected \`contains\` to be a string or a RegExp, got ${describeValue(contains)}`);
  }
  const wanted = [
    type && `type ${type}`,
    mode !== undefined && `mode ${octal(mode)}`,
    owner && `owner ${owner}`,
    group && `group ${group}`,
    contains !== undefined && `containing ${show(contains)}`,
  ].filter(Boolean);
  const subject = `file ${path}${wanted.length ? ` (${wanted.join(', ')})` : ''}`;
  const info = await fileInfo(guest, path);
  if (!info.exists) return result(false, `expected guest ${guest.name} to have ${subject}, but it does not exist`);

  const found = `${info.type}, mode ${octal(info.mode)}, owner ${info.owner}:${info.group}, ${info.size} bytes`;
  const problems: string[] = [];
  const actual: Record<string, string> = {};
  const expected: Record<string, string> = {};
  const checks: [key: string, want: string | undefined, have: string][] = [
    ['type', type, info.type],
    ['mode', mode === undefined ? undefined : octal(mode), octal(info.mode)],
    ['owner', owner, info.owner],
    ['group', group, info.group],
  ];
  for (const [key, want, have] of checks) {
    if (want === undefined) continue;
    actual[key] = have;
    expected[key] = want;
    if (want !== have) problems.push(`its ${key} is ${have}, not ${want}`);
  }
  let preview = '';
  if (contains !== undefined) {
    if (info.type === 'directory') {
      problems.push('it is a directory, which has no content to search');
    } else {
      const text = await readFileText(guest, path);
      if (!textContains(text, contains)) {
        problems.push(`its content does not contain ${show(contains)}`);
        preview = `\n--- ${path} (first 20 lines) ---\n${text.split('\n').slice(0, 20).join('\n')}`;
      }
    }
  }
  if (problems.length === 0) return result(true, `expected guest ${guest.name} not to have ${subject}, but it does (${found})`);
  return result(false, `expected guest ${guest.name} to have ${subject}, but ${problems.join('; ')} (${found})${preview}`, { actual, expected });
}

async function toHavePackage(this: MatcherState, received: unknown, name: string, options: HavePackageOptions = {}): Promise<SyncMatcherResult> {
  const guest = expectGuest('toHavePackage', received);
  expectOptions(options, ['version']);
  const { version } = options;
  if (version !== undefined && !(version instanceof RegExp)) expectString('version', version);
  const info = await packageInfo(guest, name);
  const subject = `package ${name}${version === undefined ? '' : ` ${show(version)}`} installed`;
  if (!info.installed) return result(false, `expected guest ${guest.name} to have ${subject}, but it is not installed (${info.manager})`);
  const installed = `${info.version ?? 'of unknown version'} is installed (${info.manager})`;
  if (version === undefined || (info.version !== undefined && versionMatches(info.version, version))) {
    return result(true, `expected guest ${guest.name} not to have ${subject}, but ${installed}`);
  }
  return result(false, `expected guest ${guest.name} to have ${subject}, but ${installed}`, { actual: info.version, expected: String(version) });
}

async function toHaveUser(this: MatcherState, received: unknown, name: string, options: HaveUserOptions = {}): Promise<SyncMatcherResult> {
  const guest = expectGuest('toHaveUser', received);
  expectOptions(options, ['groups', 'shell', 'home', 'uid']);
  const { groups, shell, home, uid } = options;
  if (groups !== undefined && (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string'))) {
    throw new TypeError(`Expected \`groups\` to be an array of group names, got ${describeValue(groups)}`);
  }
  if (shell !== undefined) expectString('shell', shell);
  if (home !== undefined) expectString('home', home);
  if (uid !== undefined && !(Number.isInteger(uid) && uid >= 0)) throw new TypeError(`Expected \`uid\` to be a non-negative integer, got ${describeValue(uid)}`);
  const user = await userInfo(guest, name);
  if (!user.exists) return result(false, `expected guest ${guest.name} to have user ${name}, but there is no such user`);

  const found = `uid ${user.uid}, gid ${user.gid}, home ${user.home}, shell ${user.shell}, groups ${user.groups.join(' ')}`;
  const missing = (groups ?? []).filter((g) => !user.groups.includes(g));
  const problems = [
    uid !== undefined && uid !== user.uid && `its uid is ${user.uid}, not ${uid}`,
    home !== undefined && home !== user.home && `its home is ${user.home}, not ${home}`,
    shell !== undefined && shell !== user.shell && `its shell is ${user.shell}, not ${shell}`,
    missing.length > 0 && `it is not in ${missing.join(', ')}`,
  ].filter(Boolean);
  if (problems.length === 0) return result(true, `expected guest ${guest.name} not to have user ${name}${describeUserOptions(options)}, but it does (${found})`);
  return result(false, `expected guest ${guest.name} to have user ${name}${describeUserOptions(options)}, but ${problems.join('; ')} (${found})`);
}

function toSucceed(this: MatcherState, received: unknown): SyncMatcherResult | Promise<SyncMatcherResult> {
  if (isPromiseLike(received)) return Promise.resolve(received).then((value) => commandSucceeded(value));
  return commandSucceeded(received);
}


function commandSucceeded(received: unknown): SyncMatcherResult {
  const run = received as Partial<ExecResult> | null;
  if (typeof run !== 'object' || run === null || typeof run.exitCode !== 'number' || typeof run.stdout !== 'string' || typeof run.stderr !== 'string') {
    throw new TypeError(`toSucceed() expects the result of exec() ({ exitCode, stdout, stderr }) or a promise of one, got ${describeValue(received)}`);
  }
  const how = run.timedOut ? `timed out (exit code ${run.exitCode})` : run.signal ? `was killed by ${run.signal}` : `exited with code ${run.exitCode}`;
  const output = [
    run.stderr.trim() && `--- stderr (last lines) ---\n${tailLines(run.stderr, 20)}`,
    run.stdout.trim() && `--- stdout (last lines) ---\n${tailLines(run.stdout, 20)}`,
  ].filter(Boolean).join('\n');
  const pass = run.exitCode === 0 && !run.timedOut;
  const message = `expected the command to ${pass ? 'fail' : 'succeed'}, but it ${how}${output ? `\n${output}` : ''}`;
  return result(pass, message);
}

const MATCHERS = { toHaveActiveUnit, toListenOn, toHaveFile, toHavePackage, toHaveUser, toSucceed };
let registered = false;

/** Adds the guest matchers to vitest's expect. Safe to call more than once. */
export function registerGuestMatchers(): void {
  if (registered) return;
  expect.extend(MATCHERS);
  registered = true;
}

registerGuestMatchers();

/** `version` matches the full version, the version without epoch, or the upstream version. */
export function versionMatches(installed: string, version: string | RegExp): boolean {
  if (version instanceof RegExp) return installed.search(version) !== -1;
  return [installed, installed.replace(/^\d+:/, ''), upstreamVersion(installed)].includes(version);
}

// `diff` is given only with pass: false, so it never shows under .not; vitest prints it as a diff.
function result(pass: boolean, message: string, diff?: { actual: unknown; expected: unknown }): SyncMatcherResult {
  return { pass, message: () => message, ...diff };
}

function expectGuest(matcher: string, received: unknown): GuestExecutor {
  const guest = received as Partial<GuestExecutor> | null;
  if (typeof guest !== 'object' || guest === null || typeof guest.exec !== 'function' || typeof guest.name !== 'string') {
    throw new TypeError(`${matcher}() expects a guest (an object with \`name\` and \`exec()\`, such as a StartedGuest), got ${describeValue(received)}`);
  }
  return guest as GuestExecutor;
}

function expectOptions(options: unknown, known: string[]): void {
  if (!isPlainObject(options)) throw new TypeError(`Expected the options to be a plain object, got ${describeValue(options)}`);
  const unknown = Object.keys(options).find((key) => !known.includes(key));
  if (unknown !== undefined) throw new TypeError(`Unknown option \`${unknown}\`; expected one of ${known.map((k) => `\`${k}\``).join(', ')}`);
}

function describeUserOptions(options: HaveUserOptions): string {
  const parts = [
    options.uid !== undefined && `uid ${options.uid}`,
    options.home !== undefined && `home ${options.home}`,
    options.shell !== undefined && `shell ${options.shell}`,
    options.groups?.length && `in ${options.groups.join(', ')}`,
  ].filter(Boolean);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | null)?.then === 'function';
}

function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}

function show(value: string | RegExp): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}
