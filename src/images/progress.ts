// Showing a download's progress: a bar redrawn on a terminal, a log line now and then otherwise.
import type { Logger } from '../log.ts';

export interface DownloadProgress {
  bytes: number;
  /** From Content-Length; undefined when the server does not say. */
  total: number | undefined;
  bytesPerSecond: number;
}

/** One line of progress: bytes, percentage when the total is known, and the rate. */
export function formatProgress({ bytes, total, bytesPerSecond }: DownloadProgress): string {
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  const rate = `${mib(bytesPerSecond)}/s`;
  if (total === undefined) return `${mib(bytes)} ${rate}`;
  const width = 24;
  const filled = Math.min(width, Math.round((bytes / total) * width));
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${((bytes / total) * 100).toFixed(0).padStart(3)}% ${mib(bytes)} of ${mib(total)} ${rate}`;
}

/** Progress of a download: a bar redrawn on a terminal, a log line every 10 s otherwise. */
export function progressReporter(log: Logger, name: string): (progress: DownloadProgress) => void {
  const tty = process.stderr.isTTY === true;
  let lastLine = 0;
  return (progress) => {
    const done = progress.total !== undefined && progress.bytes >= progress.total;
    if (tty) {
      process.stderr.write(`\r${name}: ${formatProgress(progress)}\x1b[K${done ? '\n' : ''}`);
      return;
    }
    if (done || Date.now() - lastLine >= 10_000) {
      lastLine = Date.now();
      log.info(`downloading: ${formatProgress(progress)}`);
    }
  };
}
