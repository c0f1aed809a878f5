// One command as the host sees it: its stdin sent within the agent's window (a command that
// does not read its stdin holds back only its own input, never the channel), its output collected
// or streamed, and one promise settled by EXIT, ERROR, an abort or a lost channel.
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { AbortedError } from '../errors.ts';
import { decodeExit, encodeU32, type ExitStatus, type Frame, FrameType, SIGNALS } from './protocol.ts';
import type { AgentExecRequest, AgentExecResult } from './request.ts';

/** What a command's frames need of its request: an exec's, or a file's in the same shape. */
export type AgentCommandRequest = Pick<AgentExecRequest, 'stdin' | 'stdout' | 'signal' | 'timeoutMs'>;

const STDIN_FRAME_BYTES = 256 * 1024;
const KILL_AFTER_MS = 2000;
/** After the agent's own timeout and KILL: how long the host waits for EXIT before giving up on it. */
const EXIT_GRACE_MS = 10_000;

/** What a command needs from its client. */
export interface CommandLink {
  /** Writes a frame; does nothing once the channel is lost (the client then fails every command). */
  send(type: number, id: number, payload?: Buffer): void;
  /** The command got its last frame: the client forgets its id. */
  done(id: number): void;
  stdinWindow: number;
}

export class AgentCommand {
  readonly result: Promise<AgentExecResult>;
  #resolve!: (result: AgentExecResult) => void;
  #reject!: (error: Error) => void;
  #settled = false;
  #stdout: Buffer[] = [];
  #stderr: Buffer[] = [];
  /** stdin bytes not sent yet, unacknowledged bytes, and where more come from. */
  #held: Buffer[] = [];
  #inFlight = 0;
  #inputEnded = false;
  #inputDone = false;
  #source: Readable | undefined;
  #killTimer: NodeJS.Timeout | undefined;
  #giveUpTimer: NodeJS.Timeout | undefined;
  readonly #onAbort = () => this.#abandon(new AbortedError(`Guest ${this.label}`, { cause: this.request.signal?.reason }));

  readonly id: number;
  readonly request: AgentCommandRequest;
  readonly link: CommandLink;
  /** How messages name it: "command ls", "file write /etc/motd". */
  readonly label: string;

  constructor(id: number, request: AgentCommandRequest, link: CommandLink, label: string) {
    this.id = id;
    this.request = request;
    this.link = link;
    this.label = label;
    this.result = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
  }

  /** Sends the request (EXEC, WRITE_FILE or READ_FILE) and starts its stdin. */
  start(type: number, payload: Buffer): void {
    this.link.send(type, this.id, payload);
    const { stdin, stdout, signal, timeoutMs } = this.request;
    signal?.addEventListener('abort', this.#onAbort, { once: true });
    if (timeoutMs !== undefined) {
      // The agent ends a command that timed out; this only covers an agent that never says so.
      const after = timeoutMs + KILL_AFTER_MS + EXIT_GRACE_MS;
      this.#giveUpTimer = setTimeout(() => this.#abandon(new Error(`The guest agent did not report the end of ${this.label} ${after} ms after it started (timeoutMs ${timeoutMs})`)), after);
      this.#giveUpTimer.unref();
    }
    stdout?.on('error', this.#onStdoutError);
    if (stdin === undefined) return;
    if (typeof stdin === 'string' || stdin instanceof Uint8Array) {
      const bytes = typeof stdin === 'string' ? Buffer.from(stdin) : Buffer.from(stdin.buffer, stdin.byteOffset, stdin.byteLength);
      if (bytes.length) this.#held.push(bytes);
      this.#inputEnded = true;
    } else {
      this.#source = stdin;
      stdin.on('data', this.#onInput);
      stdin.once('end', this.#onInputEnd);
      stdin.once('error', this.#onInputError);
      if (stdin.readableEnded) this.#inputEnded = true; // 'end' has been and will not come again
    }
    this.#pump();
  }

  onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.STDOUT:
        if (this.#settled) return;
        if (this.request.stdout) for (const piece of frame.pieces) this.request.stdout.write(piece);
        else this.#stdout.push(...frame.pieces);
        return;
      case FrameType.STDERR:
        if (!this.#settled) this.#stderr.push(...frame.pieces);
        return;
      case FrameType.STDIN_ACK:
        this.#inFlight -= frame.payload.length === 4 ? frame.payload.readUInt32LE(0) : 0;
        this.#pump();
        return;
      case FrameType.EXIT:
        this.#last();
        void this.#complete(decodeExit(frame.payload));
        return;
      case FrameType.ERROR:
        this.#last();
        this.#settle(new Error(`The guest agent refused the ${this.label}: ${frame.payload.toString('utf8')}`));
    }
  }

  /** The channel is gone: nothing more will come. */
  fail(error: Error): void {
    this.#cleanup();
    this.#settle(error);
  }

  #pump(): void {
    if (this.#inputDone || this.#settled) return;
    const window = this.link.stdinWindow;
    while (this.#held.length && this.#inFlight < window) {
      const chunk = this.#held[0]!;
      const n = Math.min(chunk.length, window - this.#inFlight, STDIN_FRAME_BYTES);
      this.link.send(FrameType.STDIN, this.id, chunk.subarray(0, n));
      this.#inFlight += n;
      if (n === chunk.length) this.#held.shift();
      else this.#held[0] = chunk.subarray(n);
    }
    if (this.#held.length) {
      this.#source?.pause();
    } else if (this.#inputEnded) {
      this.link.send(FrameType.STDIN_EOF, this.id);
      this.#stopInput();
    } else {
      this.#source?.resume();
    }
  }

  readonly #onInput = (chunk: Buffer | string) => {
    if (chunk.length) this.#held.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    this.#pump();
  };

  readonly #onInputEnd = () => {
    this.#inputEnded = true;
    this.#pump();
  };

  readonly #onInputError = (error: Error) => {
    this.#abandon(new Error(`Reading the stdin of the guest ${this.label} failed: ${error.message}`, { cause: error }));
  };

  readonly #onStdoutError = (error: Error) => {
    this.#abandon(new Error(`Writing the stdout of the guest ${this.label} failed: ${error.message}`, { cause: error }));
  };

  #stopInput(): void {
    this.#inputDone = true;
    this.#held = [];
    this.#source?.off('data', this.#onInput).off('end', this.#onInputEnd).off('error', this.#onInputError);
  }

  /** Settles at once and kills the command: TERM now, KILL in 2 s unless it has exited by then. */
  #abandon(error: Error): void {
    if (this.#settled) return;
    this.#stopInput();
    this.#settle(error);
    this.link.send(FrameType.KILL, this.id, encodeU32(SIGNALS.TERM));
    this.#killTimer = setTimeout(() => this.link.send(FrameType.KILL, this.id, encodeU32(SIGNALS.KILL)), KILL_AFTER_MS);
    this.#killTimer.unref();
  }

  /** EXIT or ERROR arrived: the agent forgot the id. */
  #last(): void {
    this.link.done(this.id);
    this.#cleanup();
  }

  #cleanup(): void {
    clearTimeout(this.#killTimer);
    clearTimeout(this.#giveUpTimer);
    this.#stopInput();
    this.request.signal?.removeEventListener('abort', this.#onAbort);
  }

  async #complete(status: ExitStatus): Promise<void> {
    const { stdout } = this.request;
    if (stdout && !this.#settled) {
      stdout.end();
      try {
        await finished(stdout, { readable: false });
      } catch (error) {
        return this.#settle(new Error(`Writing the stdout of the guest ${this.label} failed: ${(error as Error).message}`, { cause: error }));
      } finally {
        stdout.off('error', this.#onStdoutError);
      }
    }
    this.#settle({ stdout: Buffer.concat(this.#stdout), stderr: Buffer.concat(this.#stderr), ...status });
  }

  #settle(outcome: AgentExecResult | Error): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#stdout = [];
    if (outcome instanceof Error) this.#reject(outcome);
    else this.#resolve(outcome);
  }
}
