// The banner wait against a local TCP server that stands in for slirp: early connections are held
// open and never answered (as slirp holds one while the guest's network is down), later ones get
// sshd's banner. Attempts overlap, so a held connection never keeps the wait from a later banner,
// and every connection but the winner is closed.
import net from 'node:net';
import { afterEach, expect, test } from 'vitest';
import { waitForSshBanner } from '../../src/ssh/banner.ts';

let server: net.Server | undefined;
afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

/** A server whose first `held` connections never get a byte; the rest get a banner. */
async function slirpLike(held: number) {
  const connections: net.Socket[] = [];
  let closed = 0;
  server = net.createServer((socket) => {
    connections.push(socket);
    socket.once('close', () => closed++);
    socket.on('error', () => undefined);
    if (connections.length > held) socket.write('SSH-2.0-OpenSSH_9.2p1 test\r\n');
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, connections, closed: () => closed };
}

test('a banner on a later connection wins while earlier ones are still held, and the held ones are closed', async () => {
  const fake = await slirpLike(3);
  const result = await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 20_000, attemptMs: 60_000, retryDelayMs: 20 });
  expect(result && 'banner' in result ? result.banner : result).toBe('SSH-2.0-OpenSSH_9.2p1 test');
  const { socket, attempts } = result as { socket: net.Socket; attempts: number };
  expect(attempts).toBeGreaterThanOrEqual(4);
  // The banner is still readable on the socket handed on.
  const first = await new Promise<Buffer>((resolve) => socket.once('data', resolve).resume());
  expect(first.toString('latin1')).toMatch(/^SSH-2\.0-OpenSSH/);
  socket.destroy();
  for (let i = 0; i < 100 && fake.closed() < fake.connections.length; i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(fake.closed()).toBe(fake.connections.length);
});

test('no banner by the deadline is undefined; a stop reason ends the wait at once; nothing stays open', async () => {
  const fake = await slirpLike(Infinity);
  expect(await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 600, attemptMs: 60_000, retryDelayMs: 50 })).toBeUndefined();
  let calls = 0;
  expect(await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 60_000, retryDelayMs: 50, shouldStop: () => (++calls > 3 ? 'QEMU exited' : undefined) })).toEqual({ stopped: 'QEMU exited' });
  for (let i = 0; i < 100 && fake.closed() < fake.connections.length; i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(fake.connections.length).toBeGreaterThan(3);
  expect(fake.closed()).toBe(fake.connections.length);
});
