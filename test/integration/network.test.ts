// Private networks with real guests: two on "lan" reach each other by name, a disconnect
// partitions one until reconnect, and a third on "other" cannot reach them. Both networks use the
// same subnet on purpose: the third guest then has a route to lan's addresses, so only the
// separation of the segments keeps it out (and not a missing route that sends it out via eth0).
// The third guest starts once the client has stopped: two guests at a time fit a 2-core budget.
// The server and the client are restored from the template cache and join their networks after
// the restore (NICs hot-plugged, addresses set through the agent); the third boots cold, where its
// NIC is on QEMU's command line and cloud-init's network-config gives it its address.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createNetwork, startGuest, type GuestNetwork, type StartedGuest } from '../../src/index.ts';

const SUBNET = '10.77.40.0/24';
let lan: GuestNetwork;
let other: GuestNetwork;
let side: GuestNetwork;
let server: StartedGuest;
let client: StartedGuest;
let outsider: StartedGuest;

// A one-line HTTP server on port 8000 of every interface, as a transient systemd service.
const SERVE = ['systemd-run', '--unit=web', '--property=WorkingDirectory=/etc', 'python3', '-m', 'http.server', '8000'];
// GET http://HOST:8000/hostname with a 3 s timeout: prints the status, exits non-zero on failure.
const fetchFrom = (host: string) => ['python3', '-c', 'import sys,urllib.request as u; print(u.urlopen(f"http://{sys.argv[1]}:8000/hostname", timeout=3).read().decode().strip())', host];

beforeAll(async () => {
  lan = await createNetwork({ name: 'lan', subnet: SUBNET });
  other = await createNetwork({ name: 'other', subnet: SUBNET });
  side = await createNetwork({ name: 'side', subnet: '10.77.41.0/24' });
  [server, client] = await Promise.all([
    startGuest({ image: 'debian-12', name: 'server', networks: ['lan', 'side'] }),
    startGuest({ image: 'debian-12', name: 'client', networks: [{ name: 'lan', address: '10.77.40.99' }] }),
  ]);
  await server.succeed(SERVE, { sudo: true });
  await server.waitForPort(8000);
});

afterAll(async () => {
  await Promise.all([server, client, outsider].map((g) => g?.stop()));
  lan?.close();
  other?.close();
  side?.close();
});

describe('private networks', () => {
  test('each guest has its static address on eth1 and every member of its network in /etc/hosts', async () => {
    expect(client.networks).toEqual([{ network: 'lan', address: '10.77.40.99', interfaceName: 'eth1', mac: expect.stringMatching(/^52:54:00:/) }]);
    const serverAddress = lan.addressOf(server);
    expect(await server.succeed(['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth1'])).toContain(`inet ${serverAddress}/24`);
    expect((await client.succeed(['getent', 'hosts', 'server'])).split(/\s+/)[0]).toBe(serverAddress);
    expect((await server.succeed(['getent', 'hosts', 'client'])).split(/\s+/)[0]).toBe('10.77.40.99');
    // eth0 still has user-mode networking (and the default route).
    expect(await client.succeed(['ip', 'route', 'show', 'default'])).toMatch(/via 10\.0\.2\.2 dev eth0/);
  });

  test('a restored guest joins each of its networks on its own interface, in the order the spec gives', async () => {
    expect([server.timings.template?.key, client.timings.template?.key]).toEqual([expect.stringMatching(/^[0-9a-f]{32}$/), server.timings.template?.key]);
    expect(server.networks.map((n) => [n.network, n.interfaceName, n.address])).toEqual([
      ['lan', 'eth1', lan.addressOf(server)],
      ['side', 'eth2', side.addressOf(server)],
    ]);
    for (const nic of server.networks) {
      const link = await server.succeed(['ip', '-o', 'link', 'show', 'dev', nic.interfaceName]);
      expect(link).toContain(`link/ether ${nic.mac}`);
      expect(link).toMatch(/state UP/);
    }
    expect(await server.succeed(['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth2'])).toContain(`inet ${side.addressOf(server)}/24`);
    expect(side.members.map((m) => m.guestName)).toEqual(['server']);
  });

  test('guests on one network reach each other by name', async () => {
    expect((await client.succeed(fetchFrom('server'))).trim()).toBe('server');
    const banner = await server.succeed(['python3', '-c', 'import socket; s=socket.create_connection(("client", 22), 3); print(s.recv(64).decode().strip())']);
    expect(banner).toMatch(/^SSH-2\.0-OpenSSH/);
  });

  test('disconnect partitions a guest from its network, reconnect ends the partition', async () => {
    lan.disconnect(server);
    expect(lan.members.find((m) => m.guestName === 'server')?.connected).toBe(false);
    const cut = await client.exec(fetchFrom('server'));
    expect(cut.exitCode).not.toBe(0);
    expect(cut.stderr).toMatch(/timed out|No route to host|unreachable/i);
    lan.reconnect(server);
    expect((await client.succeed(fetchFrom('server'))).trim()).toBe('server');
    expect(lan.stats.dropped).toBeGreaterThan(0);
  });

  test('a guest on another network (same subnet) neither resolves nor reaches them', async () => {
    await client.stop();
    expect(lan.members.map((m) => m.guestName)).toEqual(['server']);
    outsider = await startGuest({ image: 'debian-12', name: 'outsider', networks: [{ name: 'other', address: '10.77.40.200' }] }, { template: false });
    expect(outsider.timings.template).toBeUndefined();
    expect(outsider.networks).toEqual([{ network: 'other', address: '10.77.40.200', interfaceName: 'eth1', mac: expect.stringMatching(/^52:54:00:/) }]);
    expect(await outsider.succeed(['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth1'])).toContain('inet 10.77.40.200/24');
    expect((await outsider.exec(['getent', 'hosts', 'server'])).exitCode).not.toBe(0);
    const blocked = await outsider.exec(fetchFrom(lan.addressOf(server)));
    expect(blocked.exitCode).not.toBe(0);
    expect(blocked.stderr).toMatch(/timed out|No route to host|unreachable/i);
  });
});
