// Listening TCP and UDP sockets: iproute2 `ss`, or `netstat` (busybox on Alpine, net-tools).
import { detectTools, required, type SocketTool } from './detect.ts';
import { lines, query, type ExecOutput, type GuestExecutor } from './executor.ts';

export interface ListeningSocket {
  protocol: 'tcp' | 'udp';
  /** As the tool prints it, without IPv6 brackets and "%interface": "0.0.0.0", "::", "*", "127.0.0.53". */
  address: string;
  port: number;
}

export function socketsArgv(tool: SocketTool, path: string): string[] {
  // Numeric, listening (unconnected for UDP), TCP and UDP; ss without its header line.
  return tool === 'ss' ? [path, '-Hlntu'] : [path, '-lntu'];
}

/** Splits "0.0.0.0:22", "[::]:22", "*:80", "127.0.0.53%lo:53", "[fe80::1]%eth0:546", ":::22". */
export function parseEndpoint(text: string): { address: string; port: number } | undefined {
  const colon = text.lastIndexOf(':');
  const port = text.slice(colon + 1);
  if (colon < 1 || !/^\d+$/.test(port)) return undefined;
  // The interface ("%lo") sits inside or after the brackets, depending on the ss version.
  const address = text.slice(0, colon).replace(/%[^\]]*/, '').replace(/^\[(.*)\]$/, '$1');
  return { address, port: Number(port) };
}

function socket(protocol: string, local: string | undefined): ListeningSocket | undefined {
  const endpoint = local === undefined ? undefined : parseEndpoint(local);
  const proto = protocol.replace(/6$/, '');
  return endpoint && (proto === 'tcp' || proto === 'udp') ? { protocol: proto, ...endpoint } : undefined;
}

/** `ss -Hlntu`: "Netid State Recv-Q Send-Q Local:Port Peer:Port". */
export function parseSs(output: ExecOutput): ListeningSocket[] | undefined {
  if (output.exitCode !== 0) return undefined;
  const sockets = lines(output.stdout).map((line) => {
    const fields = line.trim().split(/\s+/);
    return socket(fields[0]!, fields[4]);
  });
  return sockets.every((s) => s !== undefined) ? sockets : undefined;
}

/** `netstat -lntu`: two header lines, then "Proto Recv-Q Send-Q Local Foreign [State]"; Proto may be tcp6/udp6. */
export function parseNetstat(output: ExecOutput): ListeningSocket[] | undefined {
  if (output.exitCode !== 0) return undefined;
  const rows = lines(output.stdout).map((line) => line.trim().split(/\s+/)).filter((fields) => /^(tcp|udp)6?$/.test(fields[0]!));
  const sockets = rows.map((fields) => socket(fields[0]!, fields[3]));
  return sockets.every((s) => s !== undefined) ? sockets : undefined;
}

export async function listeningSockets(executor: GuestExecutor): Promise<ListeningSocket[]> {
  const tools = await detectTools(executor);
  const tool = required(executor, tools.socketTool, 'socket listing tool', 'ss, netstat');
  return query(executor, socketsArgv(tool, tools.paths[tool]!), tool === 'ss' ? parseSs : parseNetstat);
}

/** "tcp 0.0.0.0:22", "tcp [::]:22". */
export function formatSocket(socket: ListeningSocket): string {
  const host = socket.address.includes(':') ? `[${socket.address}]` : socket.address;
  return `${socket.protocol} ${host}:${socket.port}`;
}
