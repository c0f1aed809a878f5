// The banner wait against a local TCP server that stands in for slirp: early connections are held
// open and never answered (as slirp holds one while the guest's network is down), later ones get
// sshd's banner. Attempts are one at a time and start short, so a held connection does not keep
// the wait from a later banner for long, and every connection but the winner is closed.
import net from 'node:net';
import { afterEach, expect, test } from 'vitest';
import { waitForSshBanner } from '../../src/ssh/banner.ts';

let server: net.Server | undefined;
afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

/** A server whose first `held` connections never get a byte; the rest get a banner. */
async function slirpLike(held: number, options: { refuseFirst?: number } = {}) {
  const connections: net.Socket[] = [];
  let closed = 0;
  let open = 0;
  let mostOpen = 0;
  server = net.createServer((socket) => {
    connections.push(socket);
    mostOpen = Math.max(mostOpen, ++open);
    socket.once('close', () => {
      closed++;
      open--;
    });
    socket.on('error', () => undefined);
    if (connections.length <= (options.refuseFirst ?? 0)) socket.destroy();
    else if (connections.length > held) socket.write('SSH-2.0-OpenSSH_9.2p1 test\r\n');
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, connections, closed: () => closed, mostOpen: () => mostOpen };
}

const settled = async (fake: { connections: net.Socket[]; closed: () => number }) => {
  for (let i = 0; i < 100 && fake.closed() < fake.connections.length; i++) await new Promise((resolve) => setTimeout(resolve, 20));
};

test('held connections are given up and a later one gets the banner; one connection at a time, the others closed', async () => {
  const fake = await slirpLike(3);
  const result = await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 20_000, firstAttemptMs: 50, attemptMs: 60_000, retryDelayMs: 10 });
  expect(result && 'banner' in result ? result.banner : result).toBe('SSH-2.0-OpenSSH_9.2p1 test');
  const { socket, attempts } = result as { socket: net.Socket; attempts: number };
  expect(attempts).toBe(4);
  // The banner is still readable on the socket handed on.
  const first = await new Promise<Buffer>((resolve) => socket.once('data', resolve).resume());
  expect(first.toString('latin1')).toMatch(/^SSH-2\.0-OpenSSH/);
  socket.destroy();
  await settled(fake);
  expect(fake.closed()).toBe(fake.connections.length);
  expect(fake.mostOpen()).toBe(1);
});

test('once the other end has closed an attempt (the guest network is up), attempts wait the whole attemptMs for a slow banner', async () => {
  // Refused once, then held for 300 ms before the banner: with attempts still growing from 50 ms
  // this would take several tries; after the refusal, one attempt of attemptMs waits it out.
  const fake = await slirpLike(0, { refuseFirst: 1 });
  server!.removeAllListeners('connection');
  let count = 0;
  server!.on('connection', (socket: net.Socket) => {
    socket.on('error', () => undefined);
    if (++count === 1) socket.destroy();
    else setTimeout(() => socket.write('SSH-2.0-slow\r\n'), 300);
  });
  const result = await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 20_000, firstAttemptMs: 50, attemptMs: 10_000, retryDelayMs: 10 });
  expect(result && 'attempts' in result ? [result.banner, result.attempts] : result).toEqual(['SSH-2.0-slow', 2]);
  (result as { socket: net.Socket }).socket.destroy();
});

test('no banner by the deadline is undefined; a stop reason ends the wait at once; nothing stays open', async () => {
  const fake = await slirpLike(Infinity);
  expect(await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 600, attemptMs: 60_000, retryDelayMs: 50 })).toBeUndefined();
  let calls = 0;
  expect(await waitForSshBanner({ host: '127.0.0.1', port: fake.port, deadline: Date.now() + 60_000, firstAttemptMs: 50, retryDelayMs: 10, shouldStop: () => (++calls > 3 ? 'QEMU exited' : undefined) })).toEqual({ stopped: 'QEMU exited' });
  await settled(fake);
  expect(fake.connections.length).toBeGreaterThanOrEqual(2);
  expect(fake.closed()).toBe(fake.connections.length);
});
