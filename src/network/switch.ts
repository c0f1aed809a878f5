// A learning Ethernet switch in this process, for private networks between guests without root on
// the host. Each guest's extra NIC is a QEMU `stream` netdev that connects to a unix socket the
// switch listens on in the guest's instance directory (0700: only this user's processes reach it,
// and no guest can, since a guest reaches the host only through TCP and UDP). The switch takes one
// connection per port, QEMU's, and stops listening: nobody else can join the port later. Frames go
// both ways as QEMU's stream framing (a 4-byte big-endian length, then the frame), to the port that
// last sent from the destination MAC, or to every other port for broadcast, multicast and unknown
// destinations. A disconnected port neither sends nor receives: a partition, with the link still
// up in the guest.
import fs from 'node:fs/promises';
import net from 'node:net';
import { GuestlabError } from '../errors.ts';

/** Smallest valid Ethernet frame without FCS: two MACs and an EtherType. */
const MIN_FRAME = 14;
/** Largest frame QEMU sends on a stream netdev (its NET_BUFSIZE); a longer length is a broken peer. */
const MAX_FRAME = 4096 + 65536;
/** Frames queued to a port whose QEMU does not read beyond this are dropped, as a full NIC queue would. */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;

interface Port {
  id: string;
  server: net.Server;
  path: string;
  /** QEMU's connection, once it made it. */
  peer: net.Socket | undefined;
  connected: boolean;
}

export interface SwitchStats {
  forwarded: number;
  flooded: number;
  /** Frames dropped because a port was disconnected or its QEMU did not keep up. */
  dropped: number;
  /** Malformed input: a frame too short to be Ethernet, or a length no QEMU sends (that connection is closed). */
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

  /**
   * Adds a port listening on the unix socket `socketPath` (in a directory only this user can enter)
   * for its QEMU to connect to. The first connection is the port's; the socket is then removed.
   */
  async addPort(id: string, socketPath: string): Promise<void> {
    if (this.#closed) throw new GuestlabError(`Network ${this.name} is closed`);
    if (this.#ports.has(id)) throw new GuestlabError(`Network ${this.name} already has a port for ${id}`);
    const server = net.createServer({ pauseOnConnect: false });
    const port: Port = { id, server, path: socketPath, peer: undefined, connected: true };
    server.maxConnections = 1;
    server.on('connection', (socket) => this.#accept(port, socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await fs.chmod(socketPath, 0o600);
    server.on('error', () => undefined);
    this.#ports.set(id, port);
  }

  removePort(id: string): void {
    const port = this.#ports.get(id);
    if (!port) return;
    this.#ports.delete(id);
    for (const [mac, owner] of this.#macs) if (owner === port) this.#macs.delete(mac);
    port.server.close();
    port.peer?.destroy();
    void fs.rm(port.path, { force: true });
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

  #accept(port: Port, socket: net.Socket): void {
    if (port.peer || !this.#ports.has(port.id)) {
      socket.destroy();
      return;
    }
    port.peer = socket;
    // One peer per port: nobody connects after QEMU.
    port.server.close();
    void fs.rm(port.path, { force: true });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (port.peer === socket) port.peer = undefined;
    });
    let pending: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      while (pending.length >= 4) {
        const length = pending.readUInt32BE(0);
        if (length > MAX_FRAME) {
          this.stats.rejected++;
          socket.destroy();
          return;
        }
        if (pending.length < 4 + length) break;
        this.#receive(port, pending.subarray(4, 4 + length));
        pending = pending.subarray(4 + length);
      }
    });
  }

  #receive(from: Port, frame: Buffer): void {
    if (frame.length < MIN_FRAME) {
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
    const peer = port.peer;
    if (!peer || peer.destroyed || peer.writableLength > MAX_QUEUED_BYTES) {
      this.stats.dropped++;
      return;
    }
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(frame.length, 0);
    peer.write(Buffer.concat([header, frame]));
  }
}
