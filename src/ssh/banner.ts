// Wait for sshd's identification line. With user-mode networking the forwarded port accepts TCP
// long before sshd listens, so an open port means nothing; the "SSH-2.0-" banner does. The socket
// that saw the banner is handed on (banner pushed back), so no handshake is wasted on polling.
import net from 'node:net';
import { retryUntil } from '../util/retry.ts';

export interface BannerOptions {
  host: string;
  port: number;
  /** Overall deadline (epoch ms). */
  deadline: number;
  /** Per-attempt limit: slirp may hold a connection open while the guest's network is down. */
  attemptMs?: number;
  /** The first attempts' limit, growing to attemptMs (see waitForSshBanner). */
  firstAttemptMs?: number;
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

/** One connection that waits attemptMs for the banner; `closed`: the other end closed it first. */
function attempt(host: string, port: number, attemptMs: number): Promise<{ result?: { socket: net.Socket; banner: string }; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, noDelay: true });
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (result: { socket: net.Socket; banner: string } | undefined, closed = false) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.removeListener('data', onData);
      if (!result) socket.destroy();
      resolve(result ? { result, closed } : { closed });
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
        finish(undefined, true);
      }
    };
    socket.on('data', onData);
    socket.once('error', () => finish(undefined, true));
    socket.once('close', () => finish(undefined, true));
  });
}

/**
 * Resolves with a connected socket positioned before the banner, or undefined at the deadline.
 *
 * One attempt at a time (a guest's sshd under load must not get a pile of connections to fork
 * for). While the guest's network is down, slirp holds a connection open and resends its SYN to
 * the guest with TCP's backoff (1 s, then 2 s, ...), so a long attempt can sit there for seconds
 * after sshd listens: attempts start short (firstAttemptMs) and grow by half each time one ends in
 * silence, up to attemptMs. Once an attempt was closed by the other end (the guest answered: its
 * network is up), attempts get the whole attemptMs, for an sshd that is slow to send its banner.
 */
export async function waitForSshBanner(options: BannerOptions): Promise<BannerResult | { stopped: string } | undefined> {
  const longest = options.attemptMs ?? 5000;
  let next = Math.min(longest, options.firstAttemptMs ?? 1000);
  let attempts = 0;
  try {
    const result = await retryUntil(async () => {
      attempts++;
      const remaining = options.deadline - Date.now();
      const seen = await attempt(options.host, options.port, Math.max(100, Math.min(next, remaining)));
      if (seen.result) return seen.result;
      next = seen.closed ? longest : Math.min(longest, Math.round(next * 1.5));
      throw new Error('no SSH banner yet');
    }, {
      deadline: options.deadline,
      minDelayMs: options.retryDelayMs ?? 250,
      maxDelayMs: options.retryDelayMs ?? 250,
      stopWhen: () => {
        const reason = options.shouldStop?.() ?? (options.signal?.aborted ? 'aborted' : undefined);
        return reason === undefined ? undefined : new Stopped(reason);
      },
    });
    return { ...result, attempts };
  } catch (error) {
    if (error instanceof Stopped) return { stopped: error.message };
    return undefined;
  }
}

/** Why the wait ended before the deadline (shouldStop's reason, or "aborted"). */
class Stopped extends Error {}
