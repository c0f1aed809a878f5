// What AgentClient.exec() takes and gives back, checked once at the boundary: a bad request fails
// here with a message naming the field, never as a garbled frame the agent has to refuse.
import type { Readable, Writable } from 'node:stream';
import { describeValue, isPlainObject } from '../util/validate.ts';
import { encodeExecPayload, encodeReadFilePayload, encodeWriteFilePayload, MAX_PAYLOAD } from './protocol.ts';

export interface AgentExecRequest {
  /** The program and its arguments; argv[0] is looked up in PATH (execvp), never run by a shell. */
  argv: string[];
  /** A login name from the guest's /etc/passwd; absent: root. */
  user?: string;
  /** Added to the clean base environment (PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_*). */
  env?: Record<string, string>;
  /** Absolute; absent: the user's home. */
  cwd?: string;
  /** The agent sends SIGTERM to the command's process group, SIGKILL 2 s later. */
  timeoutMs?: number;
  stdin?: string | Uint8Array | Readable;
  /** Receives stdout instead of the result (ended when the command ends). Buffered in memory, never blocking other commands. */
  stdout?: Writable;
  /** Abort: KILL TERM, then KILL after 2 s; the promise rejects with an AbortedError at once. */
  signal?: AbortSignal;
}

export interface AgentExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** null when the command was killed by a signal. */
  exitCode: number | null;
  /** The signal's name without "SIG" ("TERM"), or null. */
  signal: string | null;
  timedOut: boolean;
}

/** A file in the guest, read or written by the agent itself (no process), with a user's file permissions. */
export interface AgentFileRequest {
  /** Absolute path in the guest. */
  path: string;
  /** A login name from the guest's /etc/passwd whose file-system credentials are used; absent: root. */
  user?: string;
  /** Abort: the agent abandons the file (a write's new file is removed); the promise rejects at once. */
  signal?: AbortSignal;
}

export interface AgentWriteFileRequest extends AgentFileRequest {
  data: string | Uint8Array | Readable;
  /** Permission bits of the new file; default 0o644. */
  mode?: number;
  /** "user", "user:group", "user:" or ":group" (root only). */
  owner?: string;
}

export interface AgentReadFileRequest extends AgentFileRequest {
  /** Receives the bytes instead of the result (ended at the end of the file). */
  stdout?: Writable;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_TIMEOUT_MS = 0xffff_ffff;

const fail = (message: string): never => {
  throw new TypeError(message);
};

/** Checks a request and returns its EXEC payload. */
export function encodeExecRequest(request: AgentExecRequest): Buffer {
  if (!isPlainObject(request)) fail(`Expected the exec request to be an object, got ${describeValue(request)}`);
  const { argv, user, env, cwd, timeoutMs, stdin, stdout, signal } = request;
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((arg) => typeof arg === 'string' && !arg.includes('\0'))) {
    fail(`Expected \`argv\` to be a non-empty array of strings without NUL bytes, got ${describeValue(argv)}`);
  }
  if (argv[0] === '') fail('Expected `argv[0]` to name a program, got "" (string)');
  if (user !== undefined && (typeof user !== 'string' || !/^[^:/\0\n]+$/.test(user))) {
    fail(`Expected \`user\` to be a login name (no ":", "/", NUL or newline), got ${describeValue(user)}`);
  }
  if (env !== undefined) {
    if (!isPlainObject(env)) fail(`Expected \`env\` to be an object of strings, got ${describeValue(env)}`);
    for (const [name, value] of Object.entries(env)) {
      if (!ENV_NAME.test(name)) fail(`Invalid \`env\` name "${name}": must match ${ENV_NAME}`);
      if (typeof value !== 'string' || value.includes('\0')) fail(`Expected \`env.${name}\` to be a string without NUL bytes, got ${typeof value}`);
    }
  }
  if (cwd !== undefined && (typeof cwd !== 'string' || !cwd.startsWith('/') || cwd.includes('\0'))) {
    fail(`Expected \`cwd\` to be an absolute path, got ${describeValue(cwd)}`);
  }
  if (timeoutMs !== undefined && (typeof timeoutMs !== 'number' || !Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_TIMEOUT_MS)) {
    fail(`Expected \`timeoutMs\` to be a positive integer of at most ${MAX_TIMEOUT_MS}, got ${describeValue(timeoutMs)}`);
  }
  if (stdin !== undefined && typeof stdin !== 'string' && !(stdin instanceof Uint8Array) && !isReadable(stdin)) {
    fail(`Expected \`stdin\` to be a string, a Uint8Array or a readable stream, got ${describeValue(stdin)}`);
  }
  if (stdout !== undefined && !isWritable(stdout)) fail(`Expected \`stdout\` to be a writable stream, got ${describeValue(stdout)}`);
  if (signal !== undefined && !(signal instanceof AbortSignal)) fail(`Expected \`signal\` to be an AbortSignal, got ${describeValue(signal)}`);
  const payload = encodeExecPayload({ argv, env, user, cwd, timeoutMs, stdin: stdin !== undefined });
  if (payload.length > MAX_PAYLOAD) {
    fail(`The command's argv and env take ${payload.length} bytes; the agent accepts at most ${MAX_PAYLOAD}. Pass large data through \`stdin\` instead.`);
  }
  return payload;
}

function checkFileRequest(request: AgentFileRequest, what: string): void {
  if (!isPlainObject(request)) fail(`Expected the ${what} request to be an object, got ${describeValue(request)}`);
  const { path, user, signal } = request;
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0')) fail(`Expected \`path\` to be an absolute path in the guest, got ${describeValue(path)}`);
  if (user !== undefined && (typeof user !== 'string' || !/^[^:/\0\n]+$/.test(user))) {
    fail(`Expected \`user\` to be a login name (no ":", "/", NUL or newline), got ${describeValue(user)}`);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) fail(`Expected \`signal\` to be an AbortSignal, got ${describeValue(signal)}`);
}

/** Checks a file write and returns its WRITE_FILE payload. */
export function encodeWriteFileRequest(request: AgentWriteFileRequest): Buffer {
  checkFileRequest(request, 'write file');
  const { path, user, data, mode = 0o644, owner } = request;
  if (typeof data !== 'string' && !(data instanceof Uint8Array) && !isReadable(data)) {
    fail(`Expected \`data\` to be a string, a Uint8Array or a readable stream, got ${describeValue(data)}`);
  }
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) fail(`Expected \`mode\` to be permission bits from 0 to 0o7777, got ${describeValue(mode)}`);
  if (owner !== undefined && (typeof owner !== 'string' || !/^[^:/\0\n]*(:[^:/\0\n]*)?$/.test(owner) || owner === '' || owner === ':')) {
    fail(`Expected \`owner\` to be "user", "user:group" or ":group", got ${describeValue(owner)}`);
  }
  return encodeWriteFilePayload({ user, path, mode, owner });
}

/** Checks a file read and returns its READ_FILE payload. */
export function encodeReadFileRequest(request: AgentReadFileRequest): Buffer {
  checkFileRequest(request, 'read file');
  if (request.stdout !== undefined && !isWritable(request.stdout)) fail(`Expected \`stdout\` to be a writable stream, got ${describeValue(request.stdout)}`);
  return encodeReadFilePayload(request);
}

function isReadable(value: unknown): value is Readable {
  const stream = value as Readable | null;
  return typeof stream === 'object' && stream !== null && typeof stream.on === 'function' && typeof stream.pause === 'function' && typeof stream.resume === 'function';
}

function isWritable(value: unknown): value is Writable {
  const stream = value as Writable | null;
  return typeof stream === 'object' && stream !== null && typeof stream.write === 'function' && typeof stream.end === 'function';
}
