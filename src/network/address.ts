// IPv4 and MAC arithmetic for private networks: subnets in CIDR notation, dotted addresses, and
// the stable MAC of a guest on a network. Pure functions.
import { createHash } from 'node:crypto';

export interface Subnet {
  base: number;
  prefixLength: number;
  size: number;
}

export function parseSubnet(text: string): Subnet {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(text);
  const octets = m ? m.slice(1, 5).map(Number) : [];
  const prefixLength = m ? Number(m[5]) : NaN;
  if (!m || octets.some((o) => o > 255) || prefixLength < 16 || prefixLength > 29) {
    throw new TypeError(`Expected \`subnet\` to be an IPv4 network like "10.77.1.0/24" with a prefix from /16 to /29, got ${JSON.stringify(text)}`);
  }
  const address = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefixLength);
  if (address % size !== 0) throw new TypeError(`\`subnet\` ${text} has host bits set; did you mean ${formatIp(address - (address % size))}/${prefixLength}?`);
  return { base: address, prefixLength, size };
}

export function formatIp(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

export function parseIp(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const octets = m.slice(1, 5).map(Number);
  return octets.some((o) => o > 255) ? undefined : octets.reduce((acc, o) => acc * 256 + o, 0);
}

/** A locally administered unicast MAC in QEMU's range, stable for (network, instance). */
export function memberMac(network: string, instanceId: string, attempt = 0): string {
  const bytes = createHash('sha256').update(`${network}\0${instanceId}\0${attempt}`).digest().subarray(0, 3);
  return ['52', '54', '00', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
