// Runs the real agent binary on a socketpair (its fd 3), the way the agent tests drive it, and
// reads the process table to check what a command left behind. Not a test file itself.
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { dir } from 'tmp-promise';
import { buildAgent } from '../../src/agent/build.ts';
import { AgentClient } from '../../src/agent/client.ts';
import { FrameDecoder } from '../../src/agent/frame-decoder.ts';
import { encodeFrame, encodeHello, type Frame, FrameType, MAGIC } from '../../src/agent/protocol.ts';

/** Compiles the agent into a fresh temporary directory (once per test file). */
export async function compileAgent(): Promise<{ binary: string; cleanup: () => Promise<void> }> {
  const tmp = await dir({ unsafeCleanup: true });
  return { binary: await buildAgent(tmp.path), cleanup: tmp.cleanup };
}

export interface SpawnedAgent {
  child: ChildProcess;
  /** The host end of the socketpair. */
  stream: Duplex;
  /** What the agent logged so far. */
  log: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function spawnAgent(binary: string, args = ['--fd', '3', '--exit-on-eof'], env: NodeJS.ProcessEnv = process.env): SpawnedAgent {
  const child = spawn(binary, args, { stdio: ['ignore', 'inherit', 'pipe', 'pipe'], env });
  let log = '';
  child.stderr!.on('data', (chunk: Buffer) => (log += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return { child, stream: child.stdio[3] as Duplex, log: () => log, exited };
}

export async function startAgent(binary: string, env?: NodeJS.ProcessEnv): Promise<{ agent: SpawnedAgent; client: AgentClient }> {
  const agent = spawnAgent(binary, undefined, env);
  return { agent, client: await AgentClient.over(agent.stream, { timeoutMs: 5000 }) };
}

/** Frames written and read by hand, for what AgentClient never sends. */
export class RawPeer {
  #decoder = new FrameDecoder();
  #frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  readonly stream: Duplex;

  constructor(stream: Duplex) {
    this.stream = stream;
    stream.on('data', (chunk: Buffer) => {
      this.#frames.push(...this.#decoder.push(chunk));
      for (const wake of this.#waiters.splice(0)) wake();
    });
  }

  write(type: number, id: number, payload?: Buffer): void {
    this.stream.write(encodeFrame(type, id, payload));
  }

  /** Sends HELLO and returns the reply's payload (frames before it are dropped). */
  async hello(nonce: Buffer): Promise<Buffer> {
    this.stream.write(encodeHello(nonce));
    const reply = await this.next((f) => f.type === FrameType.HELLO_REPLY && f.payload.subarray(8, 24).equals(nonce));
    return reply.payload;
  }

  /** The next frame matching `accept`; frames before it are dropped. */
  async next(accept: (frame: Frame) => boolean = () => true, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.#frames.length) {
        const frame = this.#frames.shift()!;
        if (accept(frame)) return frame;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no matching frame from the agent in time');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

export { MAGIC };

/** Processes (not zombies) whose process group is `pgid`. */
export function liveInGroup(pgid: number): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat && stat.pgrp === pgid && stat.state !== 'Z') found.push(Number(entry));
  }
  return found;
}

/** Whether a process runs (exists and is not a zombie). */
export function isRunning(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== undefined && stat.state !== 'Z';
}

/** CPU time (user + system, clock ticks) a process has used. */
export function cpuTicks(pid: number): number {
  const stat = readStat(pid);
  if (!stat) throw new Error(`process ${pid} is gone`);
  return stat.utime + stat.stime;
}

function readStat(pid: number): { state: string; pgrp: number; utime: number; stime: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime"
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0]!, pgrp: Number(fields[2]), utime: Number(fields[11]), stime: Number(fields[12]) };
}

/** Polls `check` every 20 ms until it is true or `timeoutMs` passes; returns its last value. */
export async function eventually(check: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return true;
}
