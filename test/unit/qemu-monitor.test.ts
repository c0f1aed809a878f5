// The typed monitor against a scripted QMP peer on a real unix socket: forwards read back from
// `info usernet`, migration waits with a deadline, and every wait ends at once when QEMU has exited.
import net from 'node:net';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { QemuError } from '../../src/errors.ts';
import { QemuMonitor } from '../../src/qemu/monitor.ts';
import type { QemuExit, QemuProcess } from '../../src/qemu/process.ts';

type Reply = unknown | ((args: Record<string, unknown> | undefined) => unknown);

/** A QMP peer: greets, then answers each command from `replies` (by command, or by HMP command line). */
function qmpPeer(socketPath: string, replies: Record<string, Reply>, seen: string[]): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\n');
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk.toString();
      for (let i; (i = buffer.indexOf('\n')) >= 0; ) {
        const message = JSON.parse(buffer.slice(0, i)) as { execute: string; arguments?: Record<string, unknown> };
        buffer = buffer.slice(i + 1);
        const key = message.execute === 'human-monitor-command' ? String(message.arguments?.['command-line']) : message.execute;
        seen.push(key);
        const reply = key in replies ? replies[key] : key.split(' ')[0]! in replies ? replies[key.split(' ')[0]!] : {};
        const value = typeof reply === 'function' ? (reply as (a: unknown) => unknown)(message.arguments) : reply;
        socket.write(JSON.stringify(value instanceof Error ? { error: { class: 'GenericError', desc: value.message } } : { return: value }) + '\n');
      }
    });
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

function fakeQemu(): QemuProcess & { end(exit: QemuExit): void } {
  let exit: QemuExit | undefined;
  let resolveExited!: (e: QemuExit) => void;
  const exited = new Promise<QemuExit>((resolve) => (resolveExited = resolve));
  return {
    pid: 1, exited, keepable: false,
    get hasExited() { return exit !== undefined; },
    get exit() { return exit; },
    outputTail: () => 'qemu-system-x86_64: the last words',
    kill: () => undefined,
    detach: () => undefined,
    end(e) { exit = e; resolveExited(e); },
  };
}

const USERNET_BEFORE = [
  'Hub -1 (net0):',
  '  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ',
  '  TCP[HOST_FORWARD]  13       127.0.0.1 40001       10.0.2.15    22     0     0',
].join('\r\n');
const USERNET_AFTER = `${USERNET_BEFORE}\r\n  TCP[HOST_FORWARD]  14       127.0.0.1 40777       10.0.2.15  8080     0     0`;

describe('QemuMonitor', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  let server: net.Server | undefined;
  beforeEach(async () => ({ path: root, cleanup } = await dir({ unsafeCleanup: true })));
  afterEach(async () => {
    server?.close();
    await cleanup();
  });

  test('adds a forward and reads its host port back; finds the SSH forward', async () => {
    const seen: string[] = [];
    let listed = 0;
    const socket = path.join(root, 'qmp');
    server = await qmpPeer(socket, { 'info usernet': () => (listed++ === 0 ? USERNET_BEFORE : USERNET_AFTER), hostfwd_add: '' }, seen);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    expect(await monitor.addForward('tcp', 8080)).toBe(40777);
    expect(seen).toContain('hostfwd_add net0 tcp:127.0.0.1:0-:8080');
    expect(await monitor.hostPortOf(22)).toBe(40001);
    await expect(monitor.hostPortOf(443)).rejects.toThrow(/does not list a forward to port 443 of guest web/);
    monitor.close();
  });

  test('a refused savevm is an error with QEMU’s words', async () => {
    const socket = path.join(root, 'qmp');
    server = await qmpPeer(socket, { savevm: 'Error: Device pflash0 is writable but does not support snapshots' }, []);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    await expect(monitor.saveSnapshot('before')).rejects.toThrow(/Saving checkpoint before of guest web failed: Error: Device pflash0/);
    monitor.close();
  });

  test('saving the state has a deadline', async () => {
    const socket = path.join(root, 'qmp');
    server = await qmpPeer(socket, { 'query-migrate': { status: 'active' } }, []);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    const started = Date.now();
    await expect(monitor.saveStateToFile(path.join(root, 'state'), Date.now() + 300)).rejects.toThrow(/Saving the state of guest web did not finish in time/);
    expect(Date.now() - started).toBeLessThan(3000);
    monitor.close();
  });

  test('a failed migration ends the wait with QEMU’s reason', async () => {
    const socket = path.join(root, 'qmp');
    server = await qmpPeer(socket, { 'query-migrate': { status: 'failed', 'error-desc': 'No space left on device' } }, []);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    await expect(monitor.saveStateToFile(path.join(root, 'state'), Date.now() + 60_000)).rejects.toThrow(/Saving the state of guest web failed: No space left on device/);
    monitor.close();
  });

  test('waiting for a restore ends at once when QEMU exits', async () => {
    const socket = path.join(root, 'qmp');
    const qemu = fakeQemu();
    let polls = 0;
    server = await qmpPeer(socket, { 'query-status': () => {
      if (++polls === 3) qemu.end({ exitCode: 1, signal: undefined });
      return { status: 'inmigrate' };
    } }, []);
    const monitor = await QemuMonitor.connect(socket, qemu, { label: 'guest web', deadline: Date.now() + 5000 });
    const started = Date.now();
    const error = await monitor.receiveState(undefined, Date.now() + 60_000).then(() => expect.unreachable('it should fail'), (e: unknown) => e as Error);
    expect(error).toBeInstanceOf(QemuError);
    expect(error.message).toMatch(/^QEMU exited with code 1 while restoring guest web:\nqemu-system-x86_64: the last words/);
    expect(Date.now() - started).toBeLessThan(3000);
    monitor.close();
  });

  test('a restored guest that is paused is told to run', async () => {
    const socket = path.join(root, 'qmp');
    const seen: string[] = [];
    server = await qmpPeer(socket, { 'query-status': { status: 'paused' } }, seen);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    await monitor.receiveState({ uri: 'exec:cat state' }, Date.now() + 5000);
    expect(seen).toEqual(['qmp_capabilities', 'migrate-set-capabilities', 'migrate-incoming', 'query-status', 'cont']);
    monitor.close();
  });

  test('attachDisk adds a read-only raw node, then a scsi-hd on the controller; a refused device takes its node away again', async () => {
    const socket = path.join(root, 'qmp');
    const seen: string[] = [];
    const args: Record<string, unknown> = {};
    server = await qmpPeer(socket, {
      'blockdev-add': (a: unknown) => (args['blockdev-add'] = a, {}),
      device_add: () => new Error("Duplicate device ID 'glmnt0'"),
      'blockdev-del': (a: unknown) => (args['blockdev-del'] = a, {}),
    }, seen);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    await expect(monitor.attachDisk({ id: 'glmnt0', file: '/inst/glmnt0.img', format: 'raw', serial: 'glmnt0' }))
      .rejects.toThrow("QEMU could not plug in read-only disk glmnt0 (/inst/glmnt0.img) of guest web: QMP device_add failed: GenericError: Duplicate device ID 'glmnt0'");
    expect(seen).toEqual(['qmp_capabilities', 'blockdev-add', 'device_add', 'blockdev-del']);
    expect(args['blockdev-add']).toEqual({ driver: 'raw', 'node-name': 'glmnt0', 'read-only': true, file: { driver: 'file', filename: '/inst/glmnt0.img', 'read-only': true } });
    expect(args['blockdev-del']).toEqual({ 'node-name': 'glmnt0' });
    await expect(monitor.attachDisk({ id: 'glmnt0', file: 'rel.img', format: 'raw', serial: 'glmnt0' })).rejects.toThrow(/must be an absolute path/);
    expect(seen).toHaveLength(4);
    monitor.close();
  });

  test('detachDisk has a deadline when the device never goes, and ends at once when QEMU exits', async () => {
    const socket = path.join(root, 'qmp');
    const qemu = fakeQemu();
    const seen: string[] = [];
    server = await qmpPeer(socket, { 'qom-list': [{ name: 'type' }, { name: 'glmnt0' }] }, seen);
    const monitor = await QemuMonitor.connect(socket, qemu, { label: 'guest web', deadline: Date.now() + 5000 });
    let started = Date.now();
    await expect(monitor.detachDisk('glmnt0', Date.now() + 300)).rejects.toThrow('QEMU did not finish unplugging disk glmnt0 of guest web in time (no DEVICE_DELETED event)');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(seen).not.toContain('blockdev-del');
    setTimeout(() => qemu.end({ exitCode: undefined, signal: 'SIGKILL' }), 100);
    started = Date.now();
    await expect(monitor.detachDisk('glmnt0', Date.now() + 60_000)).rejects.toThrow(/^QEMU was killed by SIGKILL while unplugging disk glmnt0 of guest web:\nqemu-system-x86_64: the last words/);
    expect(Date.now() - started).toBeLessThan(3000);
    monitor.close();
  });

  test('detachDisk skips what is already gone', async () => {
    const socket = path.join(root, 'qmp');
    const seen: string[] = [];
    server = await qmpPeer(socket, { 'qom-list': [{ name: 'type' }, { name: 'scsi0' }], 'query-named-block-nodes': [{ 'node-name': 'glmnt1' }] }, seen);
    const monitor = await QemuMonitor.connect(socket, fakeQemu(), { label: 'guest web', deadline: Date.now() + 5000 });
    await monitor.detachDisk('glmnt0');
    expect(seen).toEqual(['qmp_capabilities', 'qom-list', 'query-named-block-nodes']);
    monitor.close();
  });

  test('connecting fails at once, with QEMU’s output, when QEMU has exited', async () => {
    const qemu = fakeQemu();
    qemu.end({ exitCode: 1, signal: undefined });
    const started = Date.now();
    await expect(QemuMonitor.connect(path.join(root, 'no-socket'), qemu, { label: 'guest web', deadline: Date.now() + 60_000 }))
      .rejects.toThrow(/^QEMU exited with code 1 during startup:\nqemu-system-x86_64: the last words/);
    expect(Date.now() - started).toBeLessThan(1000);
  });
});
