// Wait for sshd's identification line. With user-mode networking the forwarded port accepts TCP
// long before sshd listens, so an open port means nothing; the "SSH-2.0-" banner does. The socket
// that saw the banner is handed on (banner pushed back), so no handshake is wasted on polling.
import net from 'node:net';

export interface BannerOptions {
  host: string;
  port: number;
  /** Overall deadline (epoch ms). */
  deadline: number;
  /** Per-attempt limit: slirp may hold a connection open while the guest's network is down. */
  attemptMs?: number;
  retryDelayMs?: number;
  /** Checked between attempts: return a reason to give up at once (e.g. QEMU exited). */
  shouldStop?: () => string | undefined;
  signal?: AbortSignal | undefined;
}

export interface BannerResult {
  socket: net.Socket;
  banner: string;
  attempts: number;
}

/** Attempts waiting for a banner at once, at most. */
const MAX_OPEN = 8;

/** One connection that waits attemptMs for the banner; `sockets` holds it while it is open. */
function attempt(host: string, port: number, attemptMs: number, sockets: Set<net.Socket>): Promise<{ socket: net.Socket; banner: string } | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, noDelay: true });
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (result: { socket: net.Socket; banner: string } | undefined) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.removeListener('data', onData);
      if (!result) socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish(undefined), attemptMs);
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      const received = Buffer.concat(chunks);
      const text = received.toString('latin1');
      const line = text.split('\n').find((l) => l.startsWith('SSH-'));
      if (line && text.includes('\n')) {
        socket.pause();
        socket.unshift(received);
        finish({ socket, banner: line.trim() });
      } else if (received.length > 8192) {
        finish(undefined);
      }
    };
    socket.on('data', onData);
    socket.once('error', () => finish(undefined));
    socket.once('close', () => finish(undefined));
  });
}

/**
 * Resolves with a connected socket positioned before the banner, or undefined at the deadline.
 *
 * Attempts overlap: a new one starts every retryDelayMs while older ones still wait (up to
 * MAX_OPEN at once), and the first banner wins. A connection made while the guest's network is
 * still down sits in slirp, which resends its SYN to the guest with TCP's backoff (1 s, then 2 s,
 * ...): waiting that one out cost up to 5 s of a boot here, while a fresh connection reaches sshd
 * as soon as it listens.
 */
export async function waitForSshBanner(options: BannerOptions): Promise<BannerResult | { stopped: string } | undefined> {
  const attemptMs = options.attemptMs ?? 5000;
  const every = options.retryDelayMs ?? 250;
  const open = new Set<Promise<{ socket: net.Socket; banner: string } | undefined>>();
  const sockets = new Set<net.Socket>();
  let attempts = 0;
  let won: { socket: net.Socket; banner: string } | undefined;
  const stopped = () => options.shouldStop?.() ?? (options.signal?.aborted ? 'aborted' : undefined);
  try {
    while (!won) {
      const reason = stopped();
      if (reason !== undefined) return { stopped: reason };
      const remaining = options.deadline - Date.now();
      if (remaining <= 0 && open.size === 0) return undefined;
      if (remaining > 0 && open.size < MAX_OPEN) {
        attempts++;
        const pending = attempt(options.host, options.port, Math.max(100, Math.min(attemptMs, remaining)), sockets);
        open.add(pending);
        void pending.then((seen) => {
          open.delete(pending);
          if (seen && !won) won = seen;
          else if (seen) seen.socket.destroy();
        });
      }
      // Until the next attempt is due, or until an open one ends (it may have seen the banner).
      await Promise.race([new Promise((resolve) => setTimeout(resolve, every)), ...open]);
    }
    return { ...won, attempts };
  } finally {
    for (const socket of sockets) if (socket !== won?.socket) socket.destroy();
  }
}
