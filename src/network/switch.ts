// A learning Ethernet switch in this process, for private networks between guests without root on
// the host. Each guest's extra NIC is a QEMU `dgram` netdev: QEMU sends every frame it transmits as
// one UDP datagram from its own port on 127.0.0.1 to the switch port assigned to it, and receives
// the frames the switch forwards the same way back. Frames go to the port that last sent from the
// destination MAC, or to every other port for broadcast, multicast and unknown destinations.
// A disconnected port neither sends nor receives: a partition, with the link still up in the guest.
import dgram from 'node:dgram';
import { GuestlabError } from '../errors.ts';

const LOOPBACK = '127.0.0.1';
/** Smallest valid Ethernet frame without FCS: two MACs and an EtherType. */
const MIN_FRAME = 14;

interface Port {
  id: string;
  socket: dgram.Socket;
  /** The switch side, which QEMU sends to. */
  switchPort: number;
  /** The QEMU side, which the switch sends to; the only source accepted on this port. */
  peerPort: number;
  connected: boolean;
}

export interface SwitchPortInfo {
  switchPort: number;
  peerPort: number;
}

export interface SwitchStats {
  forwarded: number;
  flooded: number;
  /** Frames dropped because a port was disconnected. */
  dropped: number;
  /** Datagrams from anyone but the port's QEMU, or too short to be a frame. */
  rejected: number;
}

export class EthernetSwitch {
  readonly name: string;
  readonly stats: SwitchStats = { forwarded: 0, flooded: 0, dropped: 0, rejected: 0 };
  #ports = new Map<string, Port>();
  #macs = new Map<string, Port>();
  #closed = false;

  constructor(name: string) {
    this.name = name;
  }

  /** Adds a port; `peerPort` is where its QEMU will listen (see reserveUdpPort). */
  async addPort(id: string, peerPort: number): Promise<SwitchPortInfo> {
    if (this.#closed) throw new GuestlabError(`Network ${this.name} is closed`);
    if (this.#ports.has(id)) throw new GuestlabError(`Network ${this.name} already has a port for ${id}`);
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, LOOPBACK, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.on('error', () => undefined); // ICMP unreachable while a guest is not up yet
    const port: Port = { id, socket, switchPort: socket.address().port, peerPort, connected: true };
    socket.on('message', (frame, from) => this.#receive(port, frame, from));
    this.#ports.set(id, port);
    return { switchPort: port.switchPort, peerPort };
  }

  removePort(id: string): void {
    const port = this.#ports.get(id);
    if (!port) return;
    this.#ports.delete(id);
    for (const [mac, owner] of this.#macs) if (owner === port) this.#macs.delete(mac);
    port.socket.close();
  }

  setConnected(id: string, connected: boolean): void {
    const port = this.#ports.get(id);
    if (!port) throw new GuestlabError(`Network ${this.name} has no port for ${id}`);
    port.connected = connected;
  }

  isConnected(id: string): boolean {
    return this.#ports.get(id)?.connected ?? false;
  }

  get portIds(): string[] {
    return [...this.#ports.keys()];
  }

  close(): void {
    this.#closed = true;
    for (const id of [...this.#ports.keys()]) this.removePort(id);
  }

  #receive(from: Port, frame: Buffer, rinfo: dgram.RemoteInfo): void {
    if (rinfo.address !== LOOPBACK || rinfo.port !== from.peerPort || frame.length < MIN_FRAME) {
      this.stats.rejected++;
      return;
    }
    if (!from.connected) {
      this.stats.dropped++;
      return;
    }
    const destination = frame.subarray(0, 6);
    const source = frame.subarray(6, 12).toString('hex');
    // A source MAC with the group bit set is bogus; never learn it.
    if ((frame[6]! & 1) === 0) this.#macs.set(source, from);
    const known = (destination[0]! & 1) === 0 ? this.#macs.get(destination.toString('hex')) : undefined;
    if (known) {
      if (known === from) return;
      if (!known.connected) {
        this.stats.dropped++;
        return;
      }
      this.stats.forwarded++;
      this.#send(known, frame);
      return;
    }
    this.stats.flooded++;
    for (const port of this.#ports.values()) {
      if (port === from) continue;
      if (port.connected) this.#send(port, frame);
      else this.stats.dropped++;
    }
  }

  #send(port: Port, frame: Buffer): void {
    port.socket.send(frame, port.peerPort, LOOPBACK);
  }
}

/**
 * A UDP port on 127.0.0.1 that was free a moment ago, for QEMU's side of a dgram netdev (QEMU
 * binds it itself; should another process take it first, QEMU fails to start and says so).
 */
export async function reserveUdpPort(): Promise<number> {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, LOOPBACK, () => resolve());
  });
  const { port } = socket.address();
  await new Promise<void>((resolve) => socket.close(() => resolve()));
  return port;
}
