// A minimal QMP client: line-delimited JSON over the guest's unix socket.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { QemuError } from '../errors.ts';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void; command: string };

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  #socket: net.Socket;
  #buffer = '';
  #pending: Pending[] = [];
  #closed = false;

  private constructor(socket: net.Socket) {
    super();
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('close', () => this.#onClose());
    socket.on('error', () => undefined); // surfaced through 'close' and pending rejections
  }

  /** Connect, wait for the greeting and leave capabilities negotiation mode. */
  static async connect(socketPath: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new QemuError(`QMP socket ${socketPath} did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    const client = new QmpClient(socket);
    // The greeting arrives first; the first command's reply is then ours.
    await client.execute('qmp_capabilities');
    return client;
  }

  get closed(): boolean {
    return this.#closed;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(new QemuError(`QMP connection is closed (command ${command})`));
    return new Promise<T>((resolve, reject) => {
      this.#pending.push({ resolve: resolve as (v: unknown) => void, reject, command });
      this.#socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  /** Run an HMP command (for the few things QMP lacks, e.g. `info usernet`). */
  hmp(commandLine: string): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine });
  }

  close(): void {
    this.#socket.destroy();
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let newline: number;
    while ((newline = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, newline).trim();
      this.#buffer = this.#buffer.slice(newline + 1);
      if (!line) continue;
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in message) continue; // greeting
      if ('event' in message) {
        this.emit('event', message as unknown as QmpEvent);
        continue;
      }
      const pending = this.#pending.shift();
      if (!pending) continue;
      if ('error' in message) {
        const error = message.error as { class?: string; desc?: string };
        pending.reject(new QemuError(`QMP ${pending.command} failed: ${error.class ?? 'Error'}: ${error.desc ?? line}`));
      } else {
        pending.resolve(message.return);
      }
    }
  }

  #onClose(): void {
    this.#closed = true;
    for (const pending of this.#pending.splice(0)) {
      // `quit` is answered by the socket closing as often as by a reply.
      if (pending.command === 'quit') pending.resolve(undefined);
      else pending.reject(new QemuError(`QMP connection closed before ${pending.command} was answered (QEMU exited?)`));
    }
    this.emit('close');
  }
}
