/*
 * guestlab agent protocol, version 2
 *
 * guestlab (src/agent/) and the guest agent (images/agent/guestlab-agent.c) exchange frames over
 * one byte stream: a virtio-serial port in the guest (/dev/virtio-ports/org.guestlab.agent.0),
 * a unix socket on the host.
 *
 * A frame is a 12-byte header and a payload. Integers are little-endian.
 *   u32 length    payload bytes, at most 1048576 (1 MiB)
 *   u8  type
 *   u8  flags     0
 *   u16 reserved  0
 *   u32 id        the command (chosen by the host, never 0) or the ping; 0 on HELLO, READY and
 *                 connection-level ERROR frames
 * MAGIC is the 8 bytes 89 47 4c 41 47 45 4e 54 ("\x89GLAGENT").
 *
 * Host to agent
 *   0x01 HELLO      MAGIC, nonce (16 bytes): 24 bytes. The first frame on a connection. Ends the
 *                   previous session: the agent kills every command it runs and forgets them,
 *                   unless the nonce is the current session's (then it only answers again).
 *   0x02 EXEC       u32 flags (bit 0: stdin follows), u32 timeoutMs (0: none), u32 argc,
 *                   u32 envc, then NUL-terminated strings: user ("": root), cwd ("": the user's
 *                   home), argc argv strings, envc "NAME=value" strings. Nothing after them.
 *   0x03 STDIN      bytes for the command's stdin. The bytes sent and not yet acknowledged
 *                   (STDIN_ACK) stay within the window that the agent's HELLO announced.
 *   0x04 STDIN_EOF  empty. Closes the command's stdin once the bytes before it are written.
 *   0x05 KILL       u32 signal number, sent to the command's process group.
 *   0x06 PING       up to 64 bytes, echoed by a PONG with the same id.
 *   0x07 RENEW      u64 the host's wall-clock time (ns since the epoch), then 16 to 256 bytes of
 *                   seed: the agent sets the guest's clock, writes the seed into /dev/urandom and
 *                   forces a reseed (RNDRESEEDCRNG), without a fork; EXIT (0) or ERROR answers.
 *                   A restored clone's first request.
 *   0x08 WRITE_FILE u32 mode, then NUL-terminated strings: user ("": root), path (absolute), owner
 *                   ("": unchanged; "user", "user:group", "user:" or ":group", by name or number;
 *                   root only). With the user's file-system uid, gid and groups, the agent makes
 *                   the directories above path (0755), creates a new file beside it
 *                   (path.guestlab-XXXXXX, then owner and mode), writes the STDIN frames that
 *                   follow into it (within the window, acknowledged as for a command) and at
 *                   STDIN_EOF renames it over path. EXIT 0 once renamed. When a step fails: a
 *                   message on STDERR, the new file removed, and EXIT with the step's errno as the
 *                   exit code (ENOENT 2, EACCES 13, EISDIR 21, ENOSPC 28). KILL abandons it.
 *   0x09 READ_FILE  NUL-terminated strings: user ("": root), path (absolute). Opened with the
 *                   user's file-system credentials; its bytes come as STDOUT frames, then EXIT 0,
 *                   or a message on STDERR and EXIT with the errno (a directory: EISDIR, 21).
 *                   KILL abandons it.
 *                   Both are commands without a process: same ids, frames and limits, no timeout.
 *
 * Agent to host
 *   0x81 HELLO      MAGIC, the host's nonce, u32 protocol version, u32 agent pid, u32 stdin
 *                   window (bytes), u32 max payload, then the boot id (36 ASCII bytes).
 *   0x82 STDOUT     bytes the command wrote to stdout.
 *   0x83 STDERR     bytes the command wrote to stderr.
 *   0x84 STDIN_ACK  u32 n: n more stdin bytes left the agent (written to the command's pipe,
 *                   or dropped because the command closed its stdin).
 *   0x85 EXIT       i32 exit code (-1: killed by a signal), u32 flags (bit 0: timed out), then
 *                   the signal's name without "SIG" ("TERM"; empty after an exit). The last
 *                   frame of a command: sent once it exited and its stdout and stderr reached
 *                   end of file, or, once the agent sent its group SIGKILL, once it exited.
 *   0x86 PONG       the PING's payload.
 *   0x87 ERROR      UTF-8 message. With a command's id: the EXEC was refused (no such user, bad
 *                   request, too many commands) and nothing ran; the last frame of that id.
 *                   With id 0: the agent found a protocol error, killed every command, and
 *                   discards its input until a HELLO.
 *   0x88 READY      MAGIC, u32 protocol version, u32 agent pid, then the boot id. The agent
 *                   started or the host end (re)connected: no session, it waits for a HELLO.
 *
 * Resynchronisation: until a HELLO, the agent scans its input for MAGIC preceded by a HELLO
 * header, so stale bytes (a previous host's, a garbled frame's) are skipped. The host likewise
 * skips everything before the HELLO reply that carries its nonce.
 *
 * Commands: the child runs setsid(), takes the user's uid, gid and supplementary groups (from
 * /etc/passwd and /etc/group), umask 022, enters cwd, gets a clean environment (PATH, HOME,
 * USER, LOGNAME, SHELL, LANG and LC_* from /etc/default/locale, then the request's env) and
 * execs argv[0] with execvp semantics: exit 127 when it is not found, 126 when it cannot be
 * executed, 1 when cwd cannot be entered, each with a message on stderr. At timeoutMs the
 * process group gets SIGTERM, SIGKILL 2 s later, and EXIT says timed out. argv ["true"], [":"]
 * (exit 0) and ["false"] (exit 1) with no env, cwd or stdin, for any user, are answered without a
 * fork. When the host end closes, the agent kills every command and waits for a new host.
 */
// Frame encoding and payload decoding for the agent protocol above, shared by the client and the
// tests. Pure: no streams, no timers.

export const PROTOCOL_VERSION = 2;
export const HEADER_BYTES = 12;
export const MAX_PAYLOAD = 1 << 20;
export const MAX_PING = 64;
export const MAGIC = Buffer.from([0x89, 0x47, 0x4c, 0x41, 0x47, 0x45, 0x4e, 0x54]);

export const FrameType = {
  HELLO: 0x01,
  EXEC: 0x02,
  STDIN: 0x03,
  STDIN_EOF: 0x04,
  KILL: 0x05,
  PING: 0x06,
  RENEW: 0x07,
  WRITE_FILE: 0x08,
  READ_FILE: 0x09,
  HELLO_REPLY: 0x81,
  STDOUT: 0x82,
  STDERR: 0x83,
  STDIN_ACK: 0x84,
  EXIT: 0x85,
  PONG: 0x86,
  ERROR: 0x87,
  READY: 0x88,
} as const;

/** A frame as it came off the stream: its payload in the pieces it arrived in (not copied). */
export class Frame {
  readonly type: number;
  readonly id: number;
  readonly pieces: readonly Buffer[];
  #payload: Buffer | undefined;

  constructor(type: number, id: number, pieces: readonly Buffer[]) {
    this.type = type;
    this.id = id;
    this.pieces = pieces;
  }

  /** The payload in one buffer, copied only when it arrived in more than one piece. */
  get payload(): Buffer {
    this.#payload ??= this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces);
    return this.#payload;
  }
}

/** The 12-byte header of a frame whose payload has `length` bytes. */
export function encodeHeader(type: number, id: number, length: number): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32LE(length, 0);
  header[4] = type;
  header.writeUInt32LE(id, 8);
  return header;
}

/** A whole frame in one buffer (the payload is copied). */
export function encodeFrame(type: number, id: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`A frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  return Buffer.concat([encodeHeader(type, id, payload.length), payload]);
}

export function encodeHello(nonce: Uint8Array): Buffer {
  if (nonce.length !== 16) throw new RangeError(`A HELLO nonce has 16 bytes, got ${nonce.length}`);
  return encodeFrame(FrameType.HELLO, 0, Buffer.concat([MAGIC, nonce]));
}

export interface ExecFields {
  argv: readonly string[];
  env?: Readonly<Record<string, string>> | undefined;
  user?: string | undefined;
  cwd?: string | undefined;
  timeoutMs?: number | undefined;
  stdin: boolean;
}

/** The EXEC payload (without the header): flags, timeout, counts, then NUL-terminated strings. */
export function encodeExecPayload(fields: ExecFields): Buffer {
  const env = Object.entries(fields.env ?? {}).map(([name, value]) => `${name}=${value}`);
  const strings = [fields.user ?? '', fields.cwd ?? '', ...fields.argv, ...env];
  const fixed = Buffer.alloc(16);
  fixed.writeUInt32LE(fields.stdin ? 1 : 0, 0);
  fixed.writeUInt32LE(fields.timeoutMs ?? 0, 4);
  fixed.writeUInt32LE(fields.argv.length, 8);
  fixed.writeUInt32LE(env.length, 12);
  return Buffer.concat([fixed, Buffer.from(strings.join('\0') + '\0', 'utf8')]);
}

/** The WRITE_FILE payload: mode, then user, path and owner, NUL-terminated. */
export function encodeWriteFilePayload(fields: { user?: string | undefined; path: string; mode: number; owner?: string | undefined }): Buffer {
  const fixed = encodeU32(fields.mode);
  return Buffer.concat([fixed, Buffer.from(`${fields.user ?? ''}\0${fields.path}\0${fields.owner ?? ''}\0`, 'utf8')]);
}

/** The READ_FILE payload: user and path, NUL-terminated. */
export function encodeReadFilePayload(fields: { user?: string | undefined; path: string }): Buffer {
  return Buffer.from(`${fields.user ?? ''}\0${fields.path}\0`, 'utf8');
}

/** The payload of KILL (and of STDIN_ACK): one u32. */
export function encodeU32(value: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32LE(value, 0);
  return payload;
}

export interface HelloReply {
  nonce: Buffer;
  version: number;
  pid: number;
  stdinWindow: number;
  maxPayload: number;
  bootId: string;
}

export function decodeHelloReply(payload: Buffer): HelloReply {
  if (payload.length < 40 || !payload.subarray(0, 8).equals(MAGIC)) throw new Error(`Malformed HELLO reply of ${payload.length} bytes`);
  return {
    nonce: Buffer.from(payload.subarray(8, 24)),
    version: payload.readUInt32LE(24),
    pid: payload.readUInt32LE(28),
    stdinWindow: payload.readUInt32LE(32),
    maxPayload: payload.readUInt32LE(36),
    bootId: payload.subarray(40).toString('latin1'),
  };
}

export interface ExitStatus {
  exitCode: number | null;
  /** The signal's name without "SIG" ("TERM"), or null after an exit. */
  signal: string | null;
  timedOut: boolean;
}

export function decodeExit(payload: Buffer): ExitStatus {
  if (payload.length < 8) throw new Error(`Malformed EXIT of ${payload.length} bytes`);
  const code = payload.readInt32LE(0);
  const signal = payload.subarray(8).toString('latin1');
  return { exitCode: code < 0 ? null : code, signal: code < 0 ? signal || 'unknown' : null, timedOut: (payload.readUInt32LE(4) & 1) === 1 };
}

/** Signal numbers the host sends in KILL (the same on every Linux architecture). */
export const SIGNALS = { HUP: 1, INT: 2, KILL: 9, TERM: 15 } as const;
