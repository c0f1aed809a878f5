// Private networks between guests: one learning switch (switch.ts) per network in this process,
// addresses handed out from the network's subnet, a static address per guest through cloud-init
// network-config, and every member's /etc/hosts kept listing every other member by name. The
// address arithmetic is address.ts's.
//
// Networks are shared by name within a process and counted: createNetwork() and each guest that
// joins hold a reference, and the switch closes when the last one lets go. So a network fixture and
// the guest fixtures that name it can start in any order.
import { GuestlabError } from '../errors.ts';
import { expectString } from '../util/validate.ts';
import { formatIp, memberMac, parseIp, parseSubnet, type Subnet } from './address.ts';
import { EthernetSwitch } from './switch.ts';

export { formatIp, memberMac, parseSubnet } from './address.ts';

export interface NetworkOptions {
  /** Name guests use to join it (spec `networks: ['lan']`); default net-1, net-2, ... */
  name?: string;
  /** IPv4 subnet in CIDR notation, prefix /16 to /29; default 10.77.N.0/24. */
  subnet?: string;
}

/** What a guest's spec says about one network: its name, and optionally a fixed address. */
export interface NetworkAttachmentSpec {
  name: string;
  address?: string | undefined;
}

/** The guest a network talks to for /etc/hosts updates. */
export interface NetworkMemberGuest {
  readonly name: string;
  readonly instanceId: string;
  readonly stopped: boolean;
  exec(argv: string[], options?: { stdin?: string; sudo?: boolean; timeoutMs?: number }): Promise<{ exitCode: number; stderr: string }>;
}

export interface NetworkMember {
  guestName: string;
  instanceId: string;
  address: string;
  mac: string;
  /** Interface name inside the guest (eth1, eth2, ...). */
  interfaceName: string;
  connected: boolean;
}

/** What startGuest needs to give a guest its NIC on this network. */
export interface NetworkAttachment extends NetworkMember {
  network: string;
  prefixLength: number;
  /** The unix socket the switch listens on for this guest's QEMU (a stream netdev connects to it). */
  socketPath: string;
}

export const NETWORK_NAME = /^[a-z][a-z0-9-]{0,30}$/;
const FIRST_HOST = 10;

export class GuestNetwork {
  readonly name: string;
  readonly subnet: string;
  readonly #subnet: Subnet;
  readonly #switch: EthernetSwitch;
  readonly #members = new Map<string, NetworkMember>();
  readonly #guests = new Map<string, NetworkMemberGuest>();
  #refs = 0;
  #closed = false;

  constructor(name: string, subnet: string) {
    this.name = name;
    this.subnet = subnet;
    this.#subnet = parseSubnet(subnet);
    this.#switch = new EthernetSwitch(name);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Guests on this network now, in the order they joined. */
  get members(): NetworkMember[] {
    return [...this.#members.values()].map((m) => ({ ...m, connected: this.#switch.isConnected(m.instanceId) }));
  }

  /** Frames forwarded, flooded, dropped by a disconnect, rejected (not from the port's QEMU). */
  get stats() {
    return { ...this.#switch.stats };
  }

  /** The guest's address on this network. */
  addressOf(guest: { name: string } | string): string {
    const name = typeof guest === 'string' ? guest : guest.name;
    const member = [...this.#members.values()].find((m) => m.guestName === name);
    if (!member) throw new GuestlabError(`Guest ${name} is not on network ${this.name} (members: ${this.#memberNames()})`);
    return member.address;
  }

  /** Cuts the guest off this network (its link stays up, frames are dropped both ways), e.g. to test a partition. */
  disconnect(guest: { name: string } | string): void {
    this.#switch.setConnected(this.#member(guest).instanceId, false);
  }

  reconnect(guest: { name: string } | string): void {
    this.#switch.setConnected(this.#member(guest).instanceId, true);
  }

  /** Takes a reference; close() gives it back. */
  retain(): this {
    if (this.#closed) throw new GuestlabError(`Network ${this.name} is closed; create it again with createNetwork({ name: '${this.name}' })`);
    this.#refs++;
    return this;
  }

  /** Gives back a reference taken by createNetwork(); the network ends when the last holder lets go. */
  close(): void {
    if (this.#closed) return;
    this.#refs = Math.max(0, this.#refs - 1);
    if (this.#refs > 0) return;
    this.#closed = true;
    this.#switch.close();
    registry.delete(this.name);
  }

  /**
   * Called by startGuest before the guest's NIC exists: an address, and a port on the switch that
   * listens on `socketPath` (in the guest's 0700 instance directory) for its QEMU (holds a reference).
   */
  async attach(guestName: string, instanceId: string, interfaceName: string, socketPath: string, requested?: string): Promise<NetworkAttachment> {
    this.retain();
    try {
      const address = this.#allocate(guestName, requested);
      let mac = memberMac(this.name, instanceId);
      for (let attempt = 1; [...this.#members.values()].some((m) => m.mac === mac); attempt++) mac = memberMac(this.name, instanceId, attempt);
      await this.#switch.addPort(instanceId, socketPath);
      const member: NetworkMember = { guestName, instanceId, address, mac, interfaceName, connected: true };
      this.#members.set(instanceId, member);
      return { ...member, network: this.name, prefixLength: this.#subnet.prefixLength, socketPath };
    } catch (error) {
      this.close();
      throw error;
    }
  }

  /** Called once the guest is up: every member's /etc/hosts then lists every member. */
  async joined(guest: NetworkMemberGuest): Promise<void> {
    this.#guests.set(guest.instanceId, guest);
    await this.#syncHosts();
  }

  /** Called when the guest stops: its port goes, and its reference. */
  detach(instanceId: string): void {
    if (!this.#members.delete(instanceId)) return;
    this.#guests.delete(instanceId);
    this.#switch.removePort(instanceId);
    this.close();
  }

  /** The /etc/hosts block of this network. */
  hostsBlock(): string {
    const lines = [...this.#members.values()].map((m) => `${m.address}\t${m.guestName}.${this.name} ${m.guestName}`);
    return `# guestlab-network ${this.name} begin\n${lines.join('\n')}\n# guestlab-network ${this.name} end\n`;
  }

  async #syncHosts(): Promise<void> {
    const block = this.hostsBlock();
    const running = [...this.#guests.values()].filter((g) => !g.stopped);
    const results = await Promise.all(running.map((g) => g.exec(['sh', '-c', HOSTS_SCRIPT, 'sh', this.name], { stdin: block, sudo: true, timeoutMs: 60_000 })));
    results.forEach((result, i) => {
      if (result.exitCode !== 0) throw new GuestlabError(`Updating /etc/hosts of ${running[i]!.name} for network ${this.name} failed: ${result.stderr.trim()}`);
    });
  }

  #allocate(guestName: string, requested: string | undefined): string {
    const taken = new Set([...this.#members.values()].map((m) => m.address));
    if ([...this.#members.values()].some((m) => m.guestName === guestName)) {
      throw new GuestlabError(`Network ${this.name} already has a guest named ${guestName}; names must be unique on a network, since they resolve to addresses`);
    }
    const { base, size, prefixLength } = this.#subnet;
    if (requested !== undefined) {
      const value = parseIp(requested);
      if (value === undefined || value <= base || value >= base + size - 1) {
        throw new TypeError(`Address ${JSON.stringify(requested)} for ${guestName} is not a host address in ${this.name}'s subnet ${formatIp(base)}/${prefixLength}`);
      }
      if (taken.has(requested)) throw new GuestlabError(`Address ${requested} on network ${this.name} is taken by another guest`);
      return requested;
    }
    for (let host = Math.min(FIRST_HOST, size - 2); host < size - 1; host++) {
      const address = formatIp(base + host);
      if (!taken.has(address)) return address;
    }
    throw new GuestlabError(`Network ${this.name} (${this.subnet}) has no free address left; use a larger subnet`);
  }

  #member(guest: { name: string } | string): NetworkMember {
    const name = typeof guest === 'string' ? guest : guest.name;
    const member = [...this.#members.values()].find((m) => m.guestName === name);
    if (!member) throw new GuestlabError(`Guest ${name} is not on network ${this.name} (members: ${this.#memberNames()})`);
    return member;
  }

  #memberNames(): string {
    return [...this.#members.values()].map((m) => m.guestName).join(', ') || 'none';
  }
}

// Replace this network's block in /etc/hosts (between its markers) with stdin, in place so that
// the file keeps its inode, owner and mode. "$1" is the network name (validated: [a-z0-9-]).
const HOSTS_SCRIPT =
  'set -e; t=$(mktemp); trap \'rm -f "$t"\' EXIT; ' +
  'sed "/^# guestlab-network $1 begin\\$/,/^# guestlab-network $1 end\\$/d" /etc/hosts > "$t"; cat >> "$t"; cat "$t" > /etc/hosts';

const registry = new Map<string, GuestNetwork>();
let counter = 0;

/**
 * Creates the private network `name`, or returns the one this process already has by that name
 * (then `subnet`, if given, must match). Call close() when done; guests on it keep it alive.
 */
export async function createNetwork(options: NetworkOptions = {}): Promise<GuestNetwork> {
  const name = options.name === undefined ? `net-${++counter}` : expectString('name', options.name, NETWORK_NAME, 'use a lowercase letter, then letters, digits or hyphens (at most 31)');
  const existing = registry.get(name);
  if (existing) {
    if (options.subnet !== undefined && options.subnet !== existing.subnet) {
      throw new GuestlabError(`Network ${name} exists with subnet ${existing.subnet}, not ${options.subnet}; give the new one another name`);
    }
    return existing.retain();
  }
  const subnet = options.subnet ?? freeSubnet();
  parseSubnet(subnet);
  const network = new GuestNetwork(name, subnet).retain();
  registry.set(name, network);
  return network;
}

/**
 * The network a guest spec names, created with defaults if this process has none by that name yet.
 * Takes no reference: the guest's attach() does.
 */
export function networkForGuest(name: string): GuestNetwork {
  const existing = registry.get(name);
  if (existing) return existing;
  const network = new GuestNetwork(expectString('networks[].name', name, NETWORK_NAME, 'use a lowercase letter, then letters, digits or hyphens (at most 31)'), freeSubnet());
  registry.set(name, network);
  return network;
}

/** A default subnet no network of this process uses, so that a guest on two networks can route both. */
function freeSubnet(): string {
  const used = new Set([...registry.values()].map((n) => n.subnet));
  for (let n = 1; n < 255; n++) {
    const subnet = `10.77.${n}.0/24`;
    if (!used.has(subnet)) return subnet;
  }
  throw new GuestlabError('Every default subnet 10.77.1-254.0/24 is in use by this process; pass `subnet` to createNetwork');
}
