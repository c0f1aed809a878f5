// The host end of guestlab's command channel: one connection to a guest agent (the unix socket
// QEMU joins to the guest's virtio-serial port, or any duplex stream), many commands at once, each
// multiplexed by an id. Frames are written as they come; nothing waits for a reply but the caller.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { AbortedError } from '../errors.ts';
import { describeValue, expectPositiveInteger } from '../util/validate.ts';
import { AgentCommand } from './command.ts';
import { FrameDecoder } from './frame-decoder.ts';
import { decodeHelloReply, encodeFrame, encodeHeader, encodeHello, type Frame, FrameType, MAGIC, PROTOCOL_VERSION } from './protocol.ts';
import { type AgentCommandRequest } from './command.ts';
import { type AgentExecRequest, type AgentExecResult, type AgentReadFileRequest, type AgentWriteFileRequest, encodeExecRequest, encodeReadFileRequest, encodeWriteFileRequest } from './request.ts';

export interface AgentHello {
  version: number;
  pid: number;
  /** The guest kernel's boot id: a restored clone keeps its template's. */
  bootId: string;
}

export interface AgentConnectOptions {
  /** For the connection and the HELLO answer together; default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const MAX_ID = 0xffff_ffff;
/** Payloads up to this size are copied behind their header; larger ones are written as they are. */
const COPY_BYTES = 16 * 1024;

export class AgentClient {
  #stream: Duplex;
  #decoder = new FrameDecoder();
  #commands = new Map<number, AgentCommand>();
  #pings = new Map<number, { start: number; resolve: (ms: number) => void; reject: (error: Error) => void }>();
  #renewals = new Map<number, (error?: Error) => void>();
  #nextId = 1;
  #nextPing = 1;
  #lost: string | undefined;
  #hello: AgentHello | undefined;
  #stdinWindow = 0;
  #handshake: { nonce: Buffer; settle: (error?: Error) => void } | undefined;

  private constructor(stream: Duplex) {
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => this.#onData(chunk));
    stream.on('end', () => this.#lose('the agent closed the channel (end of file)'));
    stream.on('close', () => this.#lose('the channel closed'));
    stream.on('error', (error: Error) => this.#lose(`the channel failed: ${error.message}`));
  }

  /** Connects to the unix socket, does the HELLO handshake; rejects on timeout/abort/EOF. */
  static async connect(socketPath: string, options: AgentConnectOptions = {}): Promise<AgentClient> {
    if (typeof socketPath !== 'string' || !socketPath) throw new TypeError(`Expected \`socketPath\` to be a non-empty string, got ${describeValue(socketPath)}`);
    const { timeoutMs, signal } = checkOptions(options);
    const started = Date.now();
    const socket = net.createConnection(socketPath);
    await within(timeoutMs, signal, `Connecting to the guest agent socket ${socketPath}`, (settle) => {
      socket.once('connect', () => settle());
      socket.once('error', (error) => settle(new Error(`Could not connect to the guest agent socket ${socketPath}: ${error.message}`, { cause: error })));
    }).catch((error: unknown) => {
      socket.destroy();
      throw error;
    });
    return AgentClient.over(socket, { timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)), ...(signal ? { signal } : {}) });
  }

  /** Same over an already connected duplex, which the client owns from now on (close() destroys it). */
  static async over(stream: Duplex, options: AgentConnectOptions = {}): Promise<AgentClient> {
    const { timeoutMs, signal } = checkOptions(options);
    const client = new AgentClient(stream);
    const nonce = randomBytes(16);
    client.#decoder.syncOn(FrameType.HELLO_REPLY, Buffer.concat([MAGIC, nonce]));
    await within(timeoutMs, signal, 'The guest agent handshake', (settle) => {
      client.#handshake = { nonce, settle };
      client.#write(encodeHello(nonce));
    }).catch((error: unknown) => {
      client.#handshake = undefined;
      client.#lose(`the handshake failed: ${(error as Error).message}`);
      throw error;
    });
    client.#handshake = undefined;
    return client;
  }

  get hello(): AgentHello {
    return this.#hello!;
  }

  /** Why the channel is unusable (closed, EOF, protocol error), or undefined. */
  get lost(): string | undefined {
    return this.#lost;
  }

  /** A PING's round trip in milliseconds. */
  ping(): Promise<number> {
    if (this.#lost) return Promise.reject(this.#lostError());
    const id = this.#nextPing;
    this.#nextPing = id >= MAX_ID ? 1 : id + 1;
    return new Promise((resolve, reject) => {
      this.#pings.set(id, { start: performance.now(), resolve, reject });
      this.#write(encodeFrame(FrameType.PING, id));
    });
  }

  /**
   * A restored clone's clock and randomness, done by the agent itself (no process started): the
   * guest's wall clock set to `epochMs` (the host's, as the request leaves), `seed` (16 to 256
   * bytes) written into /dev/urandom and a reseed of the kernel's generator forced.
   */
  renew(epochMs: number, seed: Uint8Array, timeoutMs = 30_000): Promise<void> {
    if (!Number.isFinite(epochMs) || epochMs < 0) return Promise.reject(new TypeError(`Expected \`epochMs\` to be a time in ms since the epoch, got ${String(epochMs)}`));
    if (!(seed instanceof Uint8Array) || seed.length < 16 || seed.length > 256) return Promise.reject(new TypeError('Expected `seed` to be 16 to 256 bytes'));
    if (this.#lost) return Promise.reject(this.#lostError());
    const id = this.#allocateId();
    const payload = Buffer.alloc(8 + seed.length);
    payload.writeBigUInt64LE(BigInt(Math.round(epochMs)) * 1_000_000n);
    payload.set(seed, 8);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => settle(new Error(`The guest agent did not answer RENEW within ${timeoutMs} ms`)), timeoutMs);
      const settle = (error?: Error) => {
        clearTimeout(timer);
        this.#renewals.delete(id);
        if (error) reject(error);
        else resolve();
      };
      this.#renewals.set(id, settle);
      this.#write(encodeFrame(FrameType.RENEW, id, payload));
    });
  }

  #allocateId(): number {
    let id = this.#nextId;
    while (this.#commands.has(id) || this.#renewals.has(id)) id = id >= MAX_ID ? 1 : id + 1;
    this.#nextId = id >= MAX_ID ? 1 : id + 1;
    return id;
  }

  async exec(request: AgentExecRequest): Promise<AgentExecResult> {
    const payload = encodeExecRequest(request);
    return this.#start(FrameType.EXEC, payload, request, `command ${request.argv[0]}`);
  }

  /**
   * Writes `data` into a new file beside `path` and renames it over path, done by the agent itself
   * with the user's file permissions: no process, no pipe. A failed step is exit code 1 with the
   * agent's message on stderr, and leaves nothing behind.
   */
  async writeFile(request: AgentWriteFileRequest): Promise<AgentExecResult> {
    const payload = encodeWriteFileRequest(request);
    return this.#start(FrameType.WRITE_FILE, payload, { stdin: request.data, signal: request.signal }, `file write ${request.path}`);
  }

  /** The bytes of a guest file, read by the agent itself with the user's file permissions (exit code 1 and a message on stderr when it cannot). */
  async readFile(request: AgentReadFileRequest): Promise<AgentExecResult> {
    const payload = encodeReadFileRequest(request);
    return this.#start(FrameType.READ_FILE, payload, { stdout: request.stdout, signal: request.signal }, `file read ${request.path}`);
  }

  async #start(type: number, payload: Buffer, request: AgentCommandRequest, label: string): Promise<AgentExecResult> {
    if (request.signal?.aborted) throw new AbortedError(`Guest ${label}`, { cause: request.signal.reason });
    if (this.#lost) throw this.#lostError();
    const id = this.#allocateId();
    const command = new AgentCommand(id, request, {
      send: (frameType, commandId, framePayload) => this.#send(frameType, commandId, framePayload),
      done: (commandId) => this.#commands.delete(commandId),
      stdinWindow: this.#stdinWindow,
    }, label);
    this.#commands.set(id, command);
    command.start(type, payload);
    return command.result;
  }

  /** Ends the channel; in-flight execs reject with an error saying it closed. */
  close(): void {
    this.#lose('closed by AgentClient.close()');
  }

  #lostError(): Error {
    return new Error(`The guest agent channel closed: ${this.#lost}`);
  }

  #lose(reason: string): void {
    if (this.#lost) return;
    this.#lost = reason;
    const error = this.#lostError();
    for (const command of this.#commands.values()) command.fail(error);
    this.#commands.clear();
    for (const ping of this.#pings.values()) ping.reject(error);
    this.#pings.clear();
    for (const settle of [...this.#renewals.values()]) settle(error);
    this.#handshake?.settle(new Error(`The guest agent channel closed before the agent answered HELLO: ${reason}`));
    this.#stream.destroy();
  }

  #write(frame: Buffer): void {
    if (!this.#lost) this.#stream.write(frame);
  }

  #send(type: number, id: number, payload?: Buffer): void {
    if (this.#lost) return;
    if (!payload || payload.length <= COPY_BYTES) return this.#write(encodeFrame(type, id, payload));
    this.#stream.cork();
    this.#stream.write(encodeHeader(type, id, payload.length));
    this.#stream.write(payload);
    this.#stream.uncork();
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (error) {
      return this.#lose(`protocol error: ${(error as Error).message}`);
    }
    for (const frame of frames) {
      if (this.#lost) return;
      this.#dispatch(frame);
    }
  }

  #dispatch(frame: Frame): void {
    switch (frame.type) {
      case FrameType.STDOUT:
      case FrameType.STDERR:
      case FrameType.STDIN_ACK:
        this.#commands.get(frame.id)?.onFrame(frame);
        return;
      case FrameType.EXIT:
        if (this.#renewals.has(frame.id)) return this.#renewals.get(frame.id)!();
        this.#commands.get(frame.id)?.onFrame(frame);
        return;
      case FrameType.ERROR:
        if (frame.id === 0) return this.#lose(`the agent reported a protocol error: ${frame.payload.toString('utf8')}`);
        if (this.#renewals.has(frame.id)) return this.#renewals.get(frame.id)!(new Error(`The guest agent could not renew the clone's clock and randomness: ${frame.payload.toString('utf8')}`));
        this.#commands.get(frame.id)?.onFrame(frame);
        return;
      case FrameType.PONG: {
        const ping = this.#pings.get(frame.id);
        this.#pings.delete(frame.id);
        ping?.resolve(performance.now() - ping.start);
        return;
      }
      case FrameType.HELLO_REPLY:
        if (this.#handshake) this.#onHello(frame.payload);
        return; // after the handshake: the answer to a repeated HELLO
      case FrameType.READY:
        return this.#lose('the agent restarted or its port reconnected (READY): the commands it ran are gone; connect again');
      default:
        return this.#lose(`protocol error: a frame of unknown type 0x${frame.type.toString(16)}`);
    }
  }

  #onHello(payload: Buffer): void {
    const handshake = this.#handshake!;
    let reply: ReturnType<typeof decodeHelloReply>;
    try {
      reply = decodeHelloReply(payload);
    } catch (error) {
      return handshake.settle(error as Error);
    }
    if (reply.version !== PROTOCOL_VERSION) {
      return handshake.settle(new Error(`The guest agent speaks protocol ${reply.version}, this guestlab speaks ${PROTOCOL_VERSION}: rebuild the image's agent (buildAgent) to match`));
    }
    this.#hello = { version: reply.version, pid: reply.pid, bootId: reply.bootId };
    this.#stdinWindow = reply.stdinWindow;
    handshake.settle();
  }
}

function checkOptions(options: AgentConnectOptions): { timeoutMs: number; signal: AbortSignal | undefined } {
  const timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : expectPositiveInteger('timeoutMs', options.timeoutMs);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new TypeError(`Expected \`signal\` to be an AbortSignal, got ${describeValue(options.signal)}`);
  }
  return { timeoutMs, signal: options.signal };
}

/** Runs `start` and waits for it to settle, for at most `timeoutMs`, until `signal` aborts. */
function within(timeoutMs: number, signal: AbortSignal | undefined, what: string, start: (settle: (error?: Error) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = false;
    const settle = (error?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve();
    };
    const onAbort = () => settle(new AbortedError(what, { cause: signal?.reason }));
    const timer = setTimeout(() => settle(new Error(`${what} timed out after ${timeoutMs} ms: is the agent running in the guest (systemctl status guestlab-agent)?`)), timeoutMs);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    start(settle);
  });
}
