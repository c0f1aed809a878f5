// Parsers for the HMP output guestlab reads (QMP has no equivalent for user-network forwards, and
// `info snapshots` gives the saved state's size). Pure, so that each QEMU release's layout is a
// unit test.

/** A host forward of QEMU's user network (SLIRP). */
export interface UsernetForward {
  protocol: 'tcp' | 'udp';
  hostAddress: string;
  hostPort: number;
  guestPort: number;
}

/** The host forwards in HMP `info usernet` output. */
export function parseUsernetForwards(infoUsernet: string): UsernetForward[] {
  const forwards: UsernetForward[] = [];
  for (const line of infoUsernet.split(/\r?\n/)) {
    const m = /(TCP|UDP)\[HOST_FORWARD\]\s+-?\d+\s+(\S+)\s+(\d+)\s+\S+\s+(\d+)/.exec(line);
    if (m) forwards.push({ protocol: m[1] === 'TCP' ? 'tcp' : 'udp', hostAddress: m[2]!, hostPort: Number(m[3]), guestPort: Number(m[4]) });
  }
  return forwards;
}

/** The host port of the first TCP forward to guestPort. */
export function parseUsernetForward(infoUsernet: string, guestPort: number): number | undefined {
  return parseUsernetForwards(infoUsernet).find((f) => f.protocol === 'tcp' && f.guestPort === guestPort)?.hostPort;
}

export interface SnapshotInfo {
  id: string;
  tag: string;
  /** Size of the saved memory state. */
  vmStateBytes: number | undefined;
}

const UNITS: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

/** The internal snapshots in HMP `info snapshots` output (QEMU 6.0+ layout: ID TAG VM SIZE DATE VM CLOCK ICOUNT). */
export function parseSnapshots(infoSnapshots: string): SnapshotInfo[] {
  const snapshots: SnapshotInfo[] = [];
  for (const line of infoSnapshots.split(/\r?\n/)) {
    const m = /^(\d+|--)\s+(\S+)\s+([\d.]+)\s+(B|KiB|MiB|GiB|TiB)\s+\d{4}-\d{2}-\d{2}/.exec(line.trim());
    if (m) snapshots.push({ id: m[1]!, tag: m[2]!, vmStateBytes: Math.round(Number(m[3]) * UNITS[m[4]!]!) });
  }
  return snapshots;
}
