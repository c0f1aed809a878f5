// The wire format on its own: the C agent and protocol.ts document the same protocol and use the
// same numbers; frames survive any split of the stream; the decoder skips stale bytes before the
// handshake; a request is refused before it is sent, with a message naming the field.
import fs from 'node:fs/promises';
import { describe, expect, test } from 'vitest';
import { AGENT_SOURCE } from '../../src/agent/build.ts';
import { FrameDecoder } from '../../src/agent/frame-decoder.ts';
import {
  decodeExit, decodeHelloReply, encodeExecPayload, encodeFrame, encodeHello, FrameType, HEADER_BYTES, MAGIC, MAX_PAYLOAD, PROTOCOL_VERSION,
} from '../../src/agent/protocol.ts';
import { encodeExecRequest } from '../../src/agent/request.ts';

const docOf = (source: string) => /^\/\*\n \* guestlab agent protocol[\s\S]*?\*\/\n/.exec(source)?.[0];

describe('the protocol', () => {
  test('the C agent and protocol.ts open with the same protocol text and use the same numbers', async () => {
    const c = await fs.readFile(AGENT_SOURCE, 'utf8');
    const ts = await fs.readFile(new URL('../../src/agent/protocol.ts', import.meta.url), 'utf8');
    expect(docOf(c)).toBeDefined();
    expect(docOf(ts)).toBe(docOf(c));
    expect(c).toContain(`#define PROTOCOL_VERSION ${PROTOCOL_VERSION}\n`);
    expect(c).toContain('#define MAX_PAYLOAD (1u << 20)');
    expect(MAX_PAYLOAD).toBe(1 << 20);
    expect(c).toContain(`MAGIC[8] = {0x89, 'G', 'L', 'A', 'G', 'E', 'N', 'T'}`);
    expect(MAGIC.toString('latin1')).toBe('\x89GLAGENT');
    const cTypes = Object.fromEntries([...c.matchAll(/\b[TR]_([A-Z_]+) = (0x[0-9a-f]+)/g)].map((m) => [m[1] === 'HELLO' && m[0].startsWith('R_') ? 'HELLO_REPLY' : m[1]!, Number(m[2])]));
    expect(cTypes).toEqual(FrameType);
  });

  test('EXEC: flags, timeout, counts, then NUL-terminated user, cwd, argv, env', () => {
    const payload = encodeExecPayload({ argv: ['ls', '-l'], env: { A: '1' }, user: 'nobody', cwd: '/tmp', timeoutMs: 500, stdin: true });
    expect([payload.readUInt32LE(0), payload.readUInt32LE(4), payload.readUInt32LE(8), payload.readUInt32LE(12)]).toEqual([1, 500, 2, 1]);
    expect(payload.subarray(16).toString()).toBe('nobody\0/tmp\0ls\0-l\0A=1\0');
    expect(encodeExecPayload({ argv: ['true'], stdin: false }).subarray(16).toString()).toBe('\0\0true\0');
  });

  test('frames come out whole however the stream is cut, payloads as the pieces they arrived in', () => {
    const big = Buffer.alloc(300_000, 7);
    const stream = Buffer.concat([encodeFrame(FrameType.STDOUT, 1, Buffer.from('abc')), encodeFrame(FrameType.EXIT, 1, Buffer.alloc(8)), encodeFrame(FrameType.STDOUT, 2, big), encodeFrame(FrameType.PONG, 3)]);
    for (const size of [1, 5, 12, 13, 4096, 65536, stream.length]) {
      const decoder = new FrameDecoder();
      const frames = [];
      for (let at = 0; at < stream.length; at += size) frames.push(...decoder.push(stream.subarray(at, at + size)));
      expect(frames.map((f) => [f.type, f.id, f.payload.length])).toEqual([[0x82, 1, 3], [0x85, 1, 8], [0x82, 2, 300_000], [0x86, 3, 0]]);
      expect(frames[2]!.payload.equals(big)).toBe(true);
      expect(frames[2]!.pieces.length > 1).toBe(size < 300_000); // not copied together on the way
    }
  });

  test('before the handshake the decoder skips everything up to the HELLO reply with this nonce', () => {
    const nonce = Buffer.alloc(16, 9);
    const reply = (n: Buffer) => encodeFrame(FrameType.HELLO_REPLY, 0, Buffer.concat([MAGIC, n, Buffer.from([1, 0, 0, 0, 42, 0, 0, 0, 0, 0, 16, 0, 0, 0, 16, 0]), Buffer.from('boot')]));
    const stale = Buffer.concat([Buffer.from('tail of an old frame'), encodeFrame(FrameType.STDOUT, 4, Buffer.from('old')), reply(Buffer.alloc(16, 1))]);
    const decoder = new FrameDecoder();
    decoder.syncOn(FrameType.HELLO_REPLY, Buffer.concat([MAGIC, nonce]));
    const input = Buffer.concat([stale, reply(nonce), encodeFrame(FrameType.PONG, 5)]);
    const frames = [];
    for (let at = 0; at < input.length; at += 7) frames.push(...decoder.push(input.subarray(at, at + 7)));
    expect(frames.map((f) => f.type)).toEqual([FrameType.HELLO_REPLY, FrameType.PONG]);
    expect(decodeHelloReply(frames[0]!.payload)).toEqual({ nonce, version: 1, pid: 42, stdinWindow: 1 << 20, maxPayload: 1 << 20, bootId: 'boot' });
  });

  test('a header the protocol does not allow is an error, not a wait for 4 GiB', () => {
    expect(() => new FrameDecoder().push(Buffer.from('ffffffff820000000100000000', 'hex'))).toThrow('a frame header the protocol does not allow (4294967295 bytes');
    expect(() => new FrameDecoder().push(Buffer.from('00000000820100000100000000', 'hex'))).toThrow('flags 010000');
  });

  test('EXIT and HELLO payloads decode', () => {
    const exit = (code: number, flags: number, signal: string) => {
      const payload = Buffer.alloc(8 + signal.length);
      payload.writeInt32LE(code, 0);
      payload.writeUInt32LE(flags, 4);
      payload.write(signal, 8);
      return decodeExit(payload);
    };
    expect(exit(3, 0, '')).toEqual({ exitCode: 3, signal: null, timedOut: false });
    expect(exit(-1, 1, 'TERM')).toEqual({ exitCode: null, signal: 'TERM', timedOut: true });
    expect(encodeHello(Buffer.alloc(16)).length).toBe(HEADER_BYTES + 24);
    expect(() => encodeHello(Buffer.alloc(8))).toThrow('16 bytes');
  });
});

describe('exec requests are checked before they are sent', () => {
  test.each([
    [{ argv: [] }, 'Expected `argv` to be a non-empty array of strings without NUL bytes, got an array'],
    [{ argv: 'ls' }, 'Expected `argv` to be a non-empty array of strings without NUL bytes, got "ls" (string)'],
    [{ argv: ['a\0b'] }, 'without NUL bytes'],
    [{ argv: [''] }, 'Expected `argv[0]` to name a program'],
    [{ argv: ['ls'], env: { 'BAD-NAME': 'x' } }, 'Invalid `env` name "BAD-NAME": must match'],
    [{ argv: ['ls'], env: { A: 1 } }, 'Expected `env.A` to be a string without NUL bytes, got number'],
    [{ argv: ['ls'], cwd: 'relative' }, 'Expected `cwd` to be an absolute path, got "relative" (string)'],
    [{ argv: ['ls'], timeoutMs: 0 }, 'Expected `timeoutMs` to be a positive integer of at most 4294967295, got 0 (number)'],
    [{ argv: ['ls'], timeoutMs: 1.5 }, 'got 1.5 (number)'],
    [{ argv: ['ls'], user: 'a:b' }, 'Expected `user` to be a login name'],
    [{ argv: ['ls'], stdin: 42 }, 'Expected `stdin` to be a string, a Uint8Array or a readable stream, got 42 (number)'],
    [{ argv: ['ls'], stdout: {} }, 'Expected `stdout` to be a writable stream, got an object'],
    [{ argv: ['x'.repeat(MAX_PAYLOAD)] }, 'The command\'s argv and env take 1048595 bytes; the agent accepts at most 1048576. Pass large data through `stdin` instead.'],
  ])('%# refused', (request, message) => {
    expect(() => encodeExecRequest(request as never)).toThrow(TypeError);
    expect(() => encodeExecRequest(request as never)).toThrow(message);
  });
});
