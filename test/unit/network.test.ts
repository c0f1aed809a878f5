// Private networks without guests: the switch with unix stream sockets standing in for QEMU's
// stream netdevs, address allocation, and what a guest is given (QEMU argv, network-config, /etc/hosts).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { renderNetworkConfig } from '../../src/cloud-init/user-data.ts';
import { resolveSpec } from '../../src/guest/spec.ts';
import { createNetwork, memberMac, parseSubnet, type GuestNetwork } from '../../src/network/network.ts';
import { EthernetSwitch } from '../../src/network/switch.ts';
import { buildQemuArgv, USER_NIC_MAC } from '../../src/qemu/argv.ts';

let socketDir: string;
let sockets = 0;
beforeAll(() => {
  socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gl-net-'));
});
afterAll(() => fs.rmSync(socketDir, { recursive: true, force: true }));
const socketPath = () => path.join(socketDir, `s${++sockets}.sock`);

/** QEMU's stream framing: a 4-byte big-endian length, then the frame. */
function framed(frame: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(frame.length, 0);
  return Buffer.concat([header, frame]);
}

const connect = (where: string) =>
  new Promise<net.Socket>((resolve, reject) => {
    const socket = net.createConnection(where, () => resolve(socket));
    socket.once('error', reject);
  });

/** A fake QEMU: connects to the port's socket as QEMU's stream netdev does, and records the frames it receives. */
async function fakeNic(sw: EthernetSwitch, id: string) {
  const where = socketPath();
  await sw.addPort(id, where);
  const socket = await connect(where);
  const received: Buffer[] = [];
  let pending = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
      received.push(pending.subarray(4, 4 + pending.readUInt32BE(0)));
      pending = pending.subarray(4 + pending.readUInt32BE(0));
    }
  });
  return {
    where,
    received,
    send: (frame: Buffer) => socket.write(framed(frame)),
    /** Bytes as they are, however they split frames. */
    write: (bytes: Buffer) => socket.write(bytes),
    close: () => socket.destroy(),
  };
}

const mac = (last: number) => Buffer.from([0x52, 0x54, 0, 0, 0, last]);
const BROADCAST = Buffer.alloc(6, 0xff);
const frame = (to: Buffer, from: Buffer, payload = 'x') => Buffer.concat([to, from, Buffer.from([0x08, 0x00]), Buffer.from(payload)]);
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

describe('EthernetSwitch', () => {
  const switches: EthernetSwitch[] = [];
  afterEach(() => switches.splice(0).forEach((s) => s.close()));

  test('floods broadcasts, learns source MACs and then forwards to one port only', async () => {
    const sw = new EthernetSwitch('t');
    switches.push(sw);
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((id) => fakeNic(sw, id)));
    a!.send(frame(BROADCAST, mac(1), 'who has')); // ARP-like broadcast from a
    await settle();
    expect(b!.received.map(String)).toEqual([expect.stringContaining('who has')]);
    expect(c!.received).toHaveLength(1);
    expect(a!.received).toHaveLength(0);
    b!.send(frame(mac(1), mac(2), 'reply')); // b answers a: a's MAC is known now
    await settle();
    expect(a!.received.map(String)).toEqual([expect.stringContaining('reply')]);
    expect(c!.received).toHaveLength(1);
    expect(sw.stats).toMatchObject({ flooded: 1, forwarded: 1, dropped: 0 });
    [a, b, c].forEach((n) => n!.close());
  });

  test('frames split across writes, and several frames in one write, arrive whole and in order', async () => {
    const sw = new EthernetSwitch('t');
    switches.push(sw);
    const [a, b] = await Promise.all(['a', 'b'].map((id) => fakeNic(sw, id)));
    const one = framed(frame(BROADCAST, mac(1), 'first'));
    for (const byte of one) {
      a!.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    a!.write(Buffer.concat([framed(frame(BROADCAST, mac(1), 'second')), framed(frame(BROADCAST, mac(1), 'third'))]));
    await settle();
    expect(b!.received.map((f) => f.subarray(14).toString())).toEqual(['first', 'second', 'third']);
    [a, b].forEach((n) => n!.close());
  });

  test('a disconnected port neither sends nor receives, and is back after reconnect', async () => {
    const sw = new EthernetSwitch('t');
    switches.push(sw);
    const [a, b] = await Promise.all(['a', 'b'].map((id) => fakeNic(sw, id)));
    a!.send(frame(BROADCAST, mac(1)));
    b!.send(frame(mac(1), mac(2)));
    await settle();
    sw.setConnected('b', false);
    a!.send(frame(mac(2), mac(1), 'to b'));
    b!.send(frame(mac(1), mac(2), 'to a'));
    await settle();
    expect(b!.received).toHaveLength(1); // only the first broadcast
    expect(a!.received).toHaveLength(1); // only the reply from before
    expect(sw.stats.dropped).toBe(2);
    sw.setConnected('b', true);
    a!.send(frame(mac(2), mac(1), 'again'));
    await settle();
    expect(b!.received.map(String).at(-1)).toContain('again');
    [a, b].forEach((n) => n!.close());
  });

  test('a port takes one peer, QEMU: its socket is owner-only until then and gone after; a runt frame or an impossible length is rejected', async () => {
    const sw = new EthernetSwitch('t');
    switches.push(sw);
    const where = socketPath();
    await sw.addPort('c', where);
    expect(fs.statSync(where).mode & 0o777).toBe(0o600);
    const qemu = await connect(where);
    await settle();
    expect(fs.existsSync(where)).toBe(false);
    await expect(connect(where)).rejects.toThrow(/ENOENT|ECONNREFUSED/);
    const b = await fakeNic(sw, 'b');
    qemu.write(framed(Buffer.from('short')));
    await settle();
    expect(sw.stats.rejected).toBe(1);
    const closed = new Promise((resolve) => qemu.once('close', resolve));
    qemu.write(Buffer.from([0xff, 0xff, 0xff, 0xff]));
    await closed;
    expect(sw.stats.rejected).toBe(2);
    expect(b.received).toHaveLength(0);
    b.close();
  });
});

describe('GuestNetwork', () => {
  const networks: GuestNetwork[] = [];
  afterEach(() => networks.splice(0).forEach((n) => n.close()));

  test('hands out addresses from .10, honours a requested one, refuses duplicates and foreign addresses', async () => {
    const net = await createNetwork({ name: 'alloc', subnet: '192.168.50.0/24' });
    networks.push(net);
    const a = await net.attach('a', 'a-1', 'eth1', socketPath());
    const b = await net.attach('b', 'b-1', 'eth1', socketPath(), '192.168.50.99');
    const c = await net.attach('c', 'c-1', 'eth1', socketPath());
    expect([a.address, b.address, c.address]).toEqual(['192.168.50.10', '192.168.50.99', '192.168.50.11']);
    expect(a.prefixLength).toBe(24);
    expect(a.mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    await expect(net.attach('d', 'd-1', 'eth1', socketPath(), '192.168.50.99')).rejects.toThrow(/taken by another guest/);
    await expect(net.attach('e', 'e-1', 'eth1', socketPath(), '10.0.0.5')).rejects.toThrow(/not a host address in alloc's subnet 192\.168\.50\.0\/24/);
    await expect(net.attach('a', 'a-2', 'eth1', socketPath())).rejects.toThrow(/already has a guest named a/);
    expect(net.addressOf('b')).toBe('192.168.50.99');
    expect(() => net.addressOf('zz')).toThrow(/zz is not on network alloc \(members: a, b, c\)/);
    expect(net.hostsBlock()).toBe(
      '# guestlab-network alloc begin\n192.168.50.10\ta.alloc a\n192.168.50.99\tb.alloc b\n192.168.50.11\tc.alloc c\n# guestlab-network alloc end\n',
    );
    net.disconnect('a');
    expect(net.members.find((m) => m.guestName === 'a')?.connected).toBe(false);
    net.reconnect('a');
    for (const id of ['a-1', 'b-1', 'c-1']) net.detach(id);
    expect(net.members).toEqual([]);
  });

  test('networks are shared by name and counted; the last holder closes it', async () => {
    const first = await createNetwork({ name: 'shared' });
    const second = await createNetwork({ name: 'shared' });
    expect(second).toBe(first);
    await expect(createNetwork({ name: 'shared', subnet: '10.1.2.0/24' })).rejects.toThrow(/exists with subnet 10\.77\.\d+\.0\/24, not 10\.1\.2\.0\/24/);
    await first.attach('g', 'g-1', 'eth1', socketPath());
    first.close();
    second.close();
    expect(first.closed).toBe(false); // the guest still holds it
    first.detach('g-1');
    expect(first.closed).toBe(true);
    const fresh = await createNetwork({ name: 'shared' });
    expect(fresh).not.toBe(first);
    fresh.close();
  });

  test('a guest joining rewrites the network\'s /etc/hosts block on every running member', async () => {
    const net = await createNetwork({ name: 'hosts', subnet: '10.9.0.0/24' });
    networks.push(net);
    const calls: { guest: string; argv: string[]; stdin?: string; sudo?: boolean }[] = [];
    const member = (name: string, instanceId: string, fail = false) => ({
      name,
      instanceId,
      stopped: false,
      exec: async (argv: string[], options: { stdin?: string; sudo?: boolean } = {}) => {
        calls.push({ guest: name, argv, stdin: options.stdin, sudo: options.sudo });
        return { exitCode: fail ? 1 : 0, stderr: fail ? 'read-only file system' : '' };
      },
    });
    await net.attach('a', 'a-1', 'eth1', socketPath());
    await net.joined(member('a', 'a-1'));
    await net.attach('b', 'b-1', 'eth1', socketPath());
    await net.joined(member('b', 'b-1'));
    expect(calls.map((c) => c.guest)).toEqual(['a', 'a', 'b']);
    const last = calls.slice(1);
    for (const call of last) {
      expect(call.sudo).toBe(true);
      expect(call.argv.slice(0, 2)).toEqual(['sh', '-c']);
      expect(call.argv.slice(-2)).toEqual(['sh', 'hosts']); // the network name as "$1", not in the script
      expect(call.stdin).toBe('# guestlab-network hosts begin\n10.9.0.10\ta.hosts a\n10.9.0.11\tb.hosts b\n# guestlab-network hosts end\n');
    }
    await net.attach('c', 'c-1', 'eth1', socketPath());
    await expect(net.joined(member('c', 'c-1', true))).rejects.toThrow(/Updating \/etc\/hosts of c for network hosts failed: read-only file system/);
    for (const id of ['a-1', 'b-1', 'c-1']) net.detach(id);
  });

  test('bad subnets and names are refused with the fix', async () => {
    expect(() => parseSubnet('10.0.0.0/8')).toThrow(/prefix from \/16 to \/29/);
    expect(() => parseSubnet('10.0.0.5/24')).toThrow(/host bits set; did you mean 10\.0\.0\.0\/24/);
    await expect(createNetwork({ name: 'Bad Name' })).rejects.toThrow(/Invalid `name` "Bad Name".*lowercase letter/);
    expect(memberMac('n', 'i')).toBe(memberMac('n', 'i'));
    expect(memberMac('n', 'i', 1)).not.toBe(memberMac('n', 'i'));
  });
});

describe('what a guest on a network is given', () => {
  test('spec networks: names or { name, address }, validated', () => {
    expect(resolveSpec({ image: 'debian-12', networks: ['lan', { name: 'db', address: '10.77.2.5' }] }).networks).toEqual([
      { name: 'lan', address: undefined },
      { name: 'db', address: '10.77.2.5' },
    ]);
    expect(() => resolveSpec({ image: 'debian-12', networks: 'lan' as never })).toThrow(/`networks` to be a list/);
    expect(() => resolveSpec({ image: 'debian-12', networks: ['lan', 'lan'] })).toThrow(/names lan twice/);
    expect(() => resolveSpec({ image: 'debian-12', networks: [{ name: 'lan', ip: 'x' } as never] })).toThrow(/Unknown option `networks\[0\]\.ip`/);
  });

  test('QEMU gets a stream netdev that connects to the switch\'s unix socket, and a NIC with the member MAC', () => {
    const argv = buildQemuArgv({
      name: 'a', tag: 't', accel: 'tcg', machine: 'pc-q35-7.2', cpus: 1, memoryMiB: 512, disk: '/d', seed: '/s', qmpSocket: '/q', serialLog: '/l', sshHostPort: 0,
      extraNics: [{ id: 'lan0', mac: '52:54:00:aa:bb:cc', socketPath: '/inst/a,b/nic0.sock' }],
    });
    expect(argv.join(' ')).toContain(`virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`);
    expect(argv.join(' ')).toContain(
      '-netdev stream,id=lan0,server=off,addr.type=unix,addr.path=/inst/a,,b/nic0.sock -device virtio-net-pci,netdev=lan0,mac=52:54:00:aa:bb:cc',
    );
  });

  test('network-config keeps DHCP on eth0 and sets static addresses on the private NICs', () => {
    expect(renderNetworkConfig({}, USER_NIC_MAC)).toBeUndefined();
    expect(renderNetworkConfig({ privateNics: [{ interfaceName: 'eth1', mac: '52:54:00:aa:bb:cc', address: '10.77.1.10', prefixLength: 24 }] }, USER_NIC_MAC)).toBe(
      'version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: "52:54:00:12:34:56"\n    dhcp4: true\n  eth1:\n    match:\n      macaddress: 52:54:00:aa:bb:cc\n    addresses:\n      - 10.77.1.10/24\n',
    );
  });
});
