// What ends commands and sessions: timeouts (TERM, then KILL) and aborts take the whole process
// group; a HELLO starts a new session; a garbled frame resets the agent without killing it; the
// host end closing kills everything, and without --exit-on-eof the agent then waits without
// spinning. The real binary on a socketpair.
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AgentClient } from '../../src/agent/client.ts';
import { encodeExecPayload, FrameType } from '../../src/agent/protocol.ts';
import { AbortedError } from '../../src/errors.ts';
import { compileAgent, cpuTicks, eventually, isRunning, liveInGroup, RawPeer, spawnAgent, startAgent } from './agent-harness.ts';

let binary: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ binary, cleanup } = await compileAgent());
}, 60_000);

afterAll(async () => {
  await cleanup?.();
});

/** Collects stdout as it streams and resolves the first line (a pid the command printed). */
function firstLine(): { stream: PassThrough; line: Promise<number> } {
  const stream = new PassThrough();
  let text = '';
  const line = new Promise<number>((resolve) => {
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('\n')) resolve(Number(text.split('\n')[0]));
    });
  });
  return { stream, line };
}

describe('timeouts and aborts', () => {
  test('a timeout ends the whole process group: TERM, EXIT says timed out, no sleep is left', async () => {
    const { agent, client } = await startAgent(binary);
    const result = await client.exec({ argv: ['sh', '-c', 'sleep 100 & echo $$ $!; sleep 100'], timeoutMs: 300 });
    const [leader, background] = result.stdout.toString().trim().split(' ').map(Number) as [number, number];
    expect([result.timedOut, result.exitCode, result.signal]).toEqual([true, null, 'TERM']);
    expect(await eventually(() => liveInGroup(leader).length === 0 && !isRunning(background))).toBe(true);
    client.close();
    await agent.exited;
  });

  test('a group that ignores TERM gets KILL 2 s later; an escaped process holding stdout does not hold EXIT', async () => {
    const { agent, client } = await startAgent(binary);
    const started = Date.now();
    const result = await client.exec({ argv: ['sh', '-c', 'trap "" TERM; setsid sleep 30 & echo $!; sleep 100'], timeoutMs: 200 });
    const escaped = Number(result.stdout.toString().trim());
    expect([result.timedOut, result.signal]).toEqual([true, 'KILL']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
    expect(isRunning(escaped)).toBe(true); // it left the group on purpose; EXIT did not wait for it
    process.kill(escaped, 'SIGKILL');
    client.close();
    await agent.exited;
  }, 10_000);

  test('abort rejects at once with an AbortedError and kills the group', async () => {
    const { agent, client } = await startAgent(binary);
    const controller = new AbortController();
    const { stream, line } = firstLine();
    const running = client.exec({ argv: ['sh', '-c', 'echo $$; sleep 100 & sleep 100'], stdout: stream, signal: controller.signal });
    const leader = await line;
    controller.abort();
    await expect(running).rejects.toBeInstanceOf(AbortedError);
    expect(await eventually(() => liveInGroup(leader).length === 0)).toBe(true);
    const stubborn = firstLine();
    const ignoring = client.exec({ argv: ['sh', '-c', 'trap "" TERM; echo $$; sleep 100'], stdout: stubborn.stream, signal: AbortSignal.timeout(100) });
    const stubbornLeader = await stubborn.line;
    await expect(ignoring).rejects.toBeInstanceOf(AbortedError);
    expect(liveInGroup(stubbornLeader).length).toBeGreaterThan(0); // TERM is ignored...
    expect(await eventually(() => liveInGroup(stubbornLeader).length === 0, 4000)).toBe(true); // ...KILL follows
    await expect(client.exec({ argv: ['true'], signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortedError);
    client.close();
    await agent.exited;
  }, 10_000);
});

describe('sessions and the connection', () => {
  test('a HELLO with a new nonce kills the previous session\'s commands; the same nonce only answers again', async () => {
    const agent = spawnAgent(binary);
    const peer = new RawPeer(agent.stream);
    const first = Buffer.alloc(16, 1);
    await peer.hello(first);
    peer.write(FrameType.EXEC, 7, encodeExecPayload({ argv: ['sh', '-c', 'echo $$; sleep 100'], stdin: false }));
    const leader = Number((await peer.next((f) => f.type === FrameType.STDOUT && f.id === 7)).payload.toString());
    await peer.hello(first);
    expect(liveInGroup(leader).length).toBeGreaterThan(0);
    const reply = await peer.hello(Buffer.alloc(16, 2));
    expect(reply.readUInt32LE(28)).toBe(agent.child.pid);
    expect(await eventually(() => liveInGroup(leader).length === 0)).toBe(true);
    peer.write(FrameType.EXEC, 7, encodeExecPayload({ argv: ['true'], stdin: false })); // the id is free again
    const exit = await peer.next((f) => f.id === 7);
    expect([exit.type, exit.payload.readInt32LE(0)]).toEqual([FrameType.EXIT, 0]);
    agent.stream.destroy();
    await agent.exited;
  });

  // A RENEW that is carried out sets the host's clock here, so only refusals are tested on the
  // host; test/integration/clone.test.ts checks a real clone's clock and randomness.
  test('a RENEW of the wrong size is refused on its own; the client checks its arguments first', async () => {
    const agent = spawnAgent(binary);
    const peer = new RawPeer(agent.stream);
    await peer.hello(Buffer.alloc(16, 5));
    for (const [id, bytes] of [[11, 8 + 15], [12, 8 + 257], [13, 4]] as const) {
      peer.write(FrameType.RENEW, id, Buffer.alloc(bytes));
      const refused = await peer.next((f) => f.id === id);
      expect([refused.type, refused.payload.toString()]).toEqual([FrameType.ERROR, `malformed RENEW: ${bytes} bytes`]);
    }
    peer.write(FrameType.PING, 14, Buffer.from('alive'));
    expect((await peer.next((f) => f.type === FrameType.PONG)).payload.toString()).toBe('alive');
    agent.stream.destroy();
    await agent.exited;
    const started = await startAgent(binary);
    await expect(started.client.renew(Date.now(), Buffer.alloc(15))).rejects.toThrow(/16 to 256 bytes/);
    await expect(started.client.renew(Number.NaN, Buffer.alloc(32))).rejects.toThrow(/epochMs/);
    started.client.close();
    await started.agent.exited;
  });

  test('garbled frames reset the agent, which lives on and answers the next HELLO', async () => {
    const agent = spawnAgent(binary);
    const peer = new RawPeer(agent.stream);
    await peer.hello(Buffer.alloc(16, 3));
    // A malformed EXEC is refused on its own; the session goes on.
    peer.write(FrameType.EXEC, 5, Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('\0\0only-one\0')]));
    const refused = await peer.next((f) => f.id === 5);
    expect([refused.type, refused.payload.toString()]).toEqual([FrameType.ERROR, 'malformed EXEC: string 4 of 5 is not NUL-terminated']);
    peer.write(FrameType.PING, 6, Buffer.from('still'));
    expect((await peer.next((f) => f.type === FrameType.PONG)).payload.toString()).toBe('still');
    // An oversized frame and an unknown type each reset the whole connection state.
    for (const garbage of [Buffer.from('ffffffff01000000000000000000', 'hex'), Buffer.from('000000007f00000009000000', 'hex')]) {
      agent.stream.write(garbage);
      const error = await peer.next((f) => f.type === FrameType.ERROR && f.id === 0);
      expect(error.payload.toString()).toMatch(/^protocol error: .*waits for a HELLO$/);
      peer.write(FrameType.PING, 8); // ignored until a HELLO
      await peer.hello(Buffer.alloc(16, 4));
    }
    peer.write(FrameType.PING, 9);
    const pong = await peer.next();
    expect([pong.type, pong.id]).toEqual([FrameType.PONG, 9]); // nothing answered the ignored PING 8
    expect(agent.log()).toMatch(/protocol error: a frame of 4294967295 bytes/);
    expect(agent.child.exitCode).toBe(null);
    agent.stream.destroy();
    await agent.exited;
  });

  test('the host end closing kills every command; --exit-on-eof then exits 0', async () => {
    const { agent, client } = await startAgent(binary);
    const { stream, line } = firstLine();
    const running = client.exec({ argv: ['sh', '-c', 'echo $$; sleep 100'], stdout: stream });
    const leader = await line;
    client.close();
    await expect(running).rejects.toThrow('The guest agent channel closed: closed by AgentClient.close()');
    expect(client.lost).toBe('closed by AgentClient.close()');
    expect(await agent.exited).toEqual({ code: 0, signal: null });
    expect(await eventually(() => liveInGroup(leader).length === 0)).toBe(true);
    await expect(client.ping()).rejects.toThrow('channel closed');
  });

  test('without --exit-on-eof the agent outlives its host end without spinning and exits on SIGTERM', async () => {
    const agent = spawnAgent(binary, ['--fd', '3']);
    const client = await AgentClient.over(agent.stream);
    const { stream, line } = firstLine();
    void client.exec({ argv: ['sh', '-c', 'echo $$; sleep 100'], stdout: stream }).catch(() => {});
    const leader = await line;
    client.close();
    expect(await eventually(() => liveInGroup(leader).length === 0)).toBe(true);
    const before = cpuTicks(agent.child.pid!);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(cpuTicks(agent.child.pid!) - before).toBeLessThan(20); // 20 ticks = 0.2 s of CPU in 1 s
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toEqual({ code: 0, signal: null });
  });

  test('a port that is not there yet is retried quietly', async () => {
    const agent = spawnAgent(binary, ['--port', path.join(os.tmpdir(), 'guestlab-no-such-port')]);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = cpuTicks(agent.child.pid!);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(cpuTicks(agent.child.pid!) - before).toBeLessThan(20);
    expect(agent.log().match(/cannot open/g)).toHaveLength(1);
    agent.child.kill('SIGTERM');
    await agent.exited;
  });

  test('connect() reaches an agent behind a unix socket; it fails clearly on no socket, a silent peer, an abort', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-agent-'));
    const socketPath = path.join(dir, 'agent.sock');
    const agents: ReturnType<typeof spawnAgent>[] = [];
    const server = net.createServer((socket) => {
      agents.push(spawnAgent(binary, ['--fd', '3', '--exit-on-eof']));
      const pair = agents.at(-1)!.stream;
      socket.pipe(pair).pipe(socket);
      socket.on('close', () => pair.destroy());
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    const client = await AgentClient.connect(socketPath);
    expect((await client.exec({ argv: ['echo', 'via socket'] })).stdout.toString()).toBe('via socket\n');
    client.close();
    await expect(AgentClient.connect(path.join(dir, 'missing.sock'))).rejects.toThrow(/Could not connect to the guest agent socket .*missing\.sock: connect ENOENT/);
    const silentPath = path.join(dir, 'silent.sock');
    const silent = net.createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(silentPath, resolve));
    await expect(AgentClient.connect(silentPath, { timeoutMs: 300 })).rejects.toThrow('The guest agent handshake timed out after');
    await expect(AgentClient.connect(silentPath, { signal: AbortSignal.timeout(100) })).rejects.toBeInstanceOf(AbortedError);
    silent.close();
    server.close();
    await Promise.all(agents.map((a) => a.exited));
    await fs.rm(dir, { recursive: true, force: true });
  });
});
