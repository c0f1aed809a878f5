// Files between host and guest. With a guest agent, a single file is written or read by the agent
// itself (WRITE_FILE, READ_FILE: no process, no pipe, the user's file permissions); over SSH it
// streams through `cat` on a channel. Directories go through tar on both ends. Paths and modes
// reach the guest as request fields or as positional arguments of fixed scripts, never spliced
// into script text. Measured in bench/files.ts (agent and SSH side by side), see README.
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { AgentExecResult } from '../agent/request.ts';
import { GuestCommandError } from '../errors.ts';
import { quoteArgv } from '../util/shell-quote.ts';
import { describeValue } from '../util/validate.ts';
import type { ExecOptions, ExecResult } from './types.ts';

export interface WriteFileOptions {
  /** Permission bits, as a number (0o640) or octal text ("0640"). Default 0644 for files, 0755 for directories. */
  mode?: number | string;
  /** "user", "user:group" or ":group"; needs root, so it implies `sudo`. */
  owner?: string;
  /** Write as root (through passwordless sudo). Default: as the guest's login user. */
  sudo?: boolean;
  signal?: AbortSignal;
  /** The channel the bytes go through (see ExecOptions.via); default the agent when there is one. */
  via?: ExecOptions['via'];
}

export interface ReadFileOptions {
  /** Read as root. Default: as the guest's login user. */
  sudo?: boolean;
  signal?: AbortSignal;
  /** The channel the bytes go through (see ExecOptions.via); default the agent when there is one. */
  via?: ExecOptions['via'];
}

/** A file request as a guest passes it to its agent: as the login user, or as root with `sudo`. */
export interface AgentFileRequest {
  path: string;
  sudo?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

/** The agent's own file requests (see AgentClient.writeFile/readFile); a failure is an errno exit code. */
export interface AgentFiles {
  write(request: AgentFileRequest & { data: string | Uint8Array | Readable; mode: number; owner?: string | undefined }): Promise<AgentExecResult>;
  read(request: AgentFileRequest & { stdout: Writable }): Promise<AgentExecResult>;
}

/** What files.ts needs from a guest: exec with streaming stdin/stdout, and its agent's file requests when it has an agent. */
export interface FileGuest {
  readonly name: string;
  exec(argv: string[], options?: ExecOptions): Promise<ExecResult>;
  /** The agent's file requests, unless `via` asks for SSH or the guest has no agent answering. */
  agentFiles?(via: ExecOptions['via']): AgentFiles | undefined;
}

/** errno values the agent's file requests exit with, where the caller acts on them. */
const ENOENT = 2;
const EISDIR = 21;

// Write stdin to "$1" atomically: a temporary file beside it, then chmod/chown, then rename.
const WRITE_SCRIPT =
  'set -e; dir=$(dirname -- "$1"); mkdir -p -- "$dir"; ' +
  't=$(mktemp -- "$1.guestlab-XXXXXX"); trap \'rm -f -- "$t"\' EXIT; ' +
  'cat > "$t"; chmod -- "$2" "$t"; if [ -n "$3" ]; then chown -- "$3" "$t"; fi; mv -f -- "$t" "$1"; trap - EXIT';
// Unpack a tar stream from stdin into directory "$1" (created with mode "$2"). As root, the
// archive's numeric owners are not applied: "$3" (when set) owns everything instead.
const UNTAR_SCRIPT =
  'set -e; mkdir -p -- "$1"; chmod -- "$2" "$1"; tar -x -f - -C "$1" --no-same-owner; if [ -n "$3" ]; then chown -R -- "$3" "$1"; fi';
const TYPE_SCRIPT = 'if [ -d "$1" ]; then echo directory; elif [ -e "$1" ]; then echo file; else echo missing; exit 1; fi';

export function parseMode(mode: number | string, what = 'mode'): string {
  const value = typeof mode === 'string' ? (/^0?[0-7]{3,4}$/.test(mode) ? parseInt(mode, 8) : NaN) : mode;
  if (!Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new TypeError(`Expected \`${what}\` to be a permission mode such as 0o644 or "0644", got ${describeValue(mode)}`);
  }
  return value.toString(8).padStart(4, '0');
}

function checkGuestPath(guestPath: unknown, what: string): string {
  if (typeof guestPath !== 'string' || !guestPath.startsWith('/')) {
    throw new TypeError(`Expected \`${what}\` to be an absolute path in the guest, got ${describeValue(guestPath)}`);
  }
  return guestPath;
}

function checkOwner(owner: string | undefined): string {
  if (owner === undefined) return '';
  if (typeof owner !== 'string' || !/^[A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]*)?$/.test(owner) || owner === '' || owner === ':') {
    throw new TypeError(`Expected \`owner\` to be "user", "user:group" or ":group", got ${describeValue(owner)}`);
  }
  return owner;
}

async function must(guest: FileGuest, argv: string[], options: ExecOptions, what: string): Promise<ExecResult> {
  const result = await guest.exec(argv, options);
  if (result.exitCode !== 0) {
    throw new GuestCommandError({ command: `${what}: ${quoteArgv(argv)}`, exitCode: result.exitCode, signal: result.signal, stdout: result.stdout, stderr: result.stderr, guest: guest.name });
  }
  return result;
}

/** A failed agent file request as the error a failed command would give. */
function fileFailed(guest: FileGuest, what: string, result: AgentExecResult): GuestCommandError {
  return new GuestCommandError({ command: what, exitCode: result.exitCode ?? -1, signal: result.signal ?? undefined, stdout: '', stderr: result.stderr.toString('utf8'), guest: guest.name });
}

export async function writeGuestFile(guest: FileGuest, guestPath: string, data: string | Uint8Array | NodeJS.ReadableStream, options: WriteFileOptions = {}): Promise<void> {
  const target = checkGuestPath(guestPath, 'guestPath');
  const mode = parseMode(options.mode ?? 0o644);
  const owner = checkOwner(options.owner);
  const stdin = typeof data === 'string' || data instanceof Uint8Array ? data : (data as Readable);
  const sudo = options.sudo || !!owner;
  const agent = guest.agentFiles?.(options.via);
  if (agent) {
    const result = await agent.write({ path: target, data: stdin, mode: parseInt(mode, 8), owner: owner || undefined, sudo, signal: options.signal });
    if (result.exitCode !== 0) throw fileFailed(guest, `writing ${target}`, result);
    return;
  }
  await must(guest, ['sh', '-c', WRITE_SCRIPT, 'sh', target, mode, owner], { stdin, sudo, signal: options.signal, via: options.via }, `writing ${target}`);
}

export async function readGuestFile(guest: FileGuest, guestPath: string, options: ReadFileOptions = {}): Promise<Buffer> {
  const source = checkGuestPath(guestPath, 'guestPath');
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk);
      callback();
    },
  });
  const agent = guest.agentFiles?.(options.via);
  if (agent) {
    const result = await agent.read({ path: source, stdout: sink, sudo: options.sudo, signal: options.signal });
    if (result.exitCode !== 0) throw fileFailed(guest, `reading ${source}`, result);
  } else {
    await must(guest, ['cat', '--', source], { stdout: sink, sudo: options.sudo, signal: options.signal, via: options.via }, `reading ${source}`);
  }
  return Buffer.concat(chunks);
}

/** Copies a host file or directory (recursively) to guestPath. */
export async function copyToGuest(guest: FileGuest, localPath: string, guestPath: string, options: WriteFileOptions = {}): Promise<void> {
  const target = checkGuestPath(guestPath, 'guestPath');
  const stat = await fs.stat(localPath).catch((error: NodeJS.ErrnoException) => {
    throw new TypeError(`Cannot copy ${localPath} to guest ${guest.name}: ${error.code === 'ENOENT' ? 'no such file or directory on the host' : error.message}`);
  });
  if (!stat.isDirectory()) {
    await writeGuestFile(guest, target, createReadStream(localPath), { ...options, mode: options.mode ?? stat.mode & 0o7777 });
    return;
  }
  const owner = checkOwner(options.owner);
  const mode = parseMode(options.mode ?? stat.mode & 0o7777);
  // Host tar writes the directory's contents; the guest's tar unpacks them under target.
  await withHostTar(['-c', '-f', '-', '-C', localPath, '.'], `packing ${localPath}`, async (tar) => {
    // Through a PassThrough taken at once: Node discards the unread output of a child that has
    // exited, and a small tree is packed before the SSH channel is open.
    const archive = tar.stdout.pipe(new PassThrough());
    await must(guest, ['sh', '-c', UNTAR_SCRIPT, 'sh', target, mode, owner], { stdin: archive, sudo: options.sudo || !!owner, signal: options.signal, via: options.via }, `unpacking into ${target}`);
  });
}

/** Runs host tar beside `body`; the first failure wins, and tar never outlives the copy. */
async function withHostTar(args: string[], what: string, body: (tar: ChildProcessByStdio<Writable, Readable, Readable>) => Promise<void>): Promise<void> {
  const tar = spawn('tar', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  tar.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-4096)));
  const exited = new Promise<{ code: number | null; error?: Error }>((resolve) => {
    tar.once('error', (error) => resolve({ code: null, error }));
    tar.once('close', (code) => resolve({ code }));
  });
  let failure: unknown;
  try {
    await body(tar);
  } catch (error) {
    failure = error;
    tar.kill('SIGKILL');
  } finally {
    tar.stdin.end();
  }
  const { code, error } = await exited;
  if (failure) throw failure;
  if (code !== 0) throw new Error(`${what} with tar failed: ${error?.message ?? (stderr.trim() || `exit code ${code}`)}`);
}

/** Copies a guest file or directory (recursively) to localPath on the host. */
export async function copyFromGuest(guest: FileGuest, guestPath: string, localPath: string, options: ReadFileOptions = {}): Promise<void> {
  const source = checkGuestPath(guestPath, 'guestPath');
  const agent = guest.agentFiles?.(options.via);
  if (agent) {
    // A file in one request; a directory answers EISDIR and goes through tar below.
    const copied = await intoPartial(localPath, async (stdout) => {
      const result = await agent.read({ path: source, stdout, sudo: options.sudo, signal: options.signal });
      if (result.exitCode === EISDIR) return false;
      if (result.exitCode === ENOENT) throw fileFailed(guest, `copyFrom: ${source} does not exist in the guest`, result);
      if (result.exitCode !== 0) throw fileFailed(guest, `reading ${source}`, result);
      return true;
    });
    if (!copied) return copyTreeFromGuest(guest, source, localPath, options);
    return;
  }
  const kind = await guest.exec(['sh', '-c', TYPE_SCRIPT, 'sh', source], { sudo: options.sudo, signal: options.signal, via: options.via });
  if (kind.exitCode !== 0) throw new GuestCommandError({ command: `copyFrom: ${source} does not exist in the guest`, exitCode: kind.exitCode, stdout: kind.stdout, stderr: kind.stderr, guest: guest.name });
  if (kind.stdout.trim() === 'file') {
    await intoPartial(localPath, async (stdout) => {
      await must(guest, ['cat', '--', source], { stdout, sudo: options.sudo, signal: options.signal, via: options.via }, `reading ${source}`);
      return true;
    });
    return;
  }
  await copyTreeFromGuest(guest, source, localPath, options);
}

/**
 * Writes localPath through a partial file beside it (0600), renamed into place when `body` returns
 * true; removed when it returns false or throws.
 */
async function intoPartial(localPath: string, body: (stdout: Writable) => Promise<boolean>): Promise<boolean> {
  await fs.mkdir(path.dirname(path.resolve(localPath)), { recursive: true });
  const partial = `${localPath}.guestlab-partial-${process.pid}`;
  try {
    const keep = await body(createWriteStream(partial, { mode: 0o600 }));
    if (keep) await fs.rename(partial, localPath);
    else await fs.rm(partial, { force: true });
    return keep;
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  }
}

/** A guest directory, packed by the guest's tar and unpacked by the host's under localPath. */
async function copyTreeFromGuest(guest: FileGuest, source: string, localPath: string, options: ReadFileOptions): Promise<void> {
  await fs.mkdir(localPath, { recursive: true });
  await withHostTar(['-x', '-f', '-', '-C', localPath, '--no-same-owner'], `unpacking ${source} into ${localPath}`, async (tar) => {
    // Not straight into tar.stdin: Node destroys a child's stdin when the child exits, which can
    // come before the last write is acknowledged even though tar read everything. Whatever tar
    // does not take is drained here, and tar's exit status judges the unpacking.
    const archive = new PassThrough();
    archive.pipe(tar.stdin);
    tar.stdin.on('error', () => {});
    const delivered = new Promise<void>((resolve) => {
      tar.stdin.once('finish', resolve);
      tar.stdin.once('close', () => {
        archive.unpipe(tar.stdin);
        archive.resume();
        resolve();
      });
    });
    await must(guest, ['tar', '-c', '-f', '-', '-C', source, '.'], { stdout: archive, sudo: options.sudo, signal: options.signal, via: options.via }, `packing ${source}`);
    await delivered;
  });
}
