// Boots that can no longer succeed, told apart from boots that are only slow. Readiness waits for
// SSH; when the guest itself says that what it waits on is gone for good (a unit that failed past
// its restarts, emergency mode, a kernel panic, a halt), the wait ends at once with the guest's
// own evidence instead of lasting out the boot timeout.
//
// Two sources, both on the serial console (no SSH needed):
// - guestlab's images report a unit that failed for good: guestlab-dead-end@UNIT.service runs
//   from the unit's OnFailure= and, when the unit is really `failed` (not waiting to be restarted),
//   writes its status and journal between the REPORT_START and REPORT_END lines below;
// - lines that any Linux guest prints on its way to a dead end (panic, emergency mode, halt, a CPU
//   stuck in the kernel for good).
import fs from 'node:fs/promises';
import type { DeadEnd, DeadEndKind } from '../errors.ts';

export type { DeadEnd, DeadEndKind };

/** The report protocol of the image's dead-end reporter (images/debian-12.yaml). */
export const REPORT_START = 'guestlab-dead-end: failed: ';
export const REPORT_LINE = 'guestlab-dead-end| ';
export const REPORT_END = 'guestlab-dead-end: end';

/** A console line that means a dead end; with `atLeast`, only when its first number is that large. */
const CONSOLE_SIGNS: { kind: Exclude<DeadEndKind, 'unit-failed'>; pattern: RegExp; atLeast?: number }[] = [
  { kind: 'panic', pattern: /Kernel panic - not syncing/ },
  { kind: 'emergency', pattern: /You are in (?:emergency|rescue) mode|Cannot open access to console, the root account is locked|Gave up waiting for root (?:file system )?device/ },
  { kind: 'halted', pattern: /reboot: System halted/ },
  // The kernel's watchdog repeats this every ~28 s while a CPU stays stuck. A vCPU thread starved by
  // a busy host can show a short one that then ends; one past STUCK_SECONDS does not end. Seen under
  // TCG (QEMU 7.2, 2 vCPUs): a CPU spinning on a static branch that the other CPU was patching.
  { kind: 'cpu-stuck', pattern: /watchdog: BUG: soft lockup - CPU#\d+ stuck for (\d+)s!/, atLeast: 60 },
];

const CONTEXT_LINES = 15;
const INCOMPLETE_REPORT_GRACE_MS = 5000;

/**
 * The first dead end in a stretch of serial console output, or undefined. A unit report counts once
 * its end line is there (or `complete` says no more output is coming).
 */
export function findDeadEnd(consoleText: string, options: { complete?: boolean } = {}): DeadEnd | undefined {
  const lines = consoleText.replace(/\r/g, '').split('\n');
  for (const [i, line] of lines.entries()) {
    const start = line.indexOf(REPORT_START);
    if (start >= 0) {
      const unit = line.slice(start + REPORT_START.length).trim();
      const body: string[] = [];
      let ended = false;
      for (const next of lines.slice(i + 1)) {
        if (next.includes(REPORT_END)) {
          ended = true;
          break;
        }
        const at = next.indexOf(REPORT_LINE);
        if (at >= 0) body.push(next.slice(at + REPORT_LINE.length));
      }
      if (!ended && !options.complete) return undefined;
      return { kind: 'unit-failed', unit, evidence: body.join('\n') };
    }
    for (const { kind, pattern, atLeast } of CONSOLE_SIGNS) {
      const match = pattern.exec(line);
      if (match && (atLeast === undefined || Number(match[1]) >= atLeast)) return { kind, evidence: lines.slice(Math.max(0, i - CONTEXT_LINES), i + CONTEXT_LINES).join('\n').trim() };
    }
  }
  return undefined;
}

/** Console text without the report's own lines, which a dead-end error carries separately. */
export function withoutReport(consoleText: string): string {
  return consoleText.split('\n').filter((line) => !line.includes(REPORT_LINE) && !line.includes(REPORT_END) && !line.includes(REPORT_START)).join('\n');
}

/**
 * Follows a serial log from a byte offset (so a clone's log, which holds its template's boot,
 * is read from where this QEMU started) and keeps the first dead end found.
 */
export class ConsoleWatch {
  #offset: number;
  #text = '';
  #found: DeadEnd | undefined;
  #reading: Promise<void> | undefined;
  /** When a report's start line was first seen without its end line. */
  #reportSeenAt: number | undefined;
  readonly #file: string;

  private constructor(file: string, offset: number) {
    this.#file = file;
    this.#offset = offset;
  }

  /** Starts after what the file already holds. */
  static async from(file: string): Promise<ConsoleWatch> {
    const size = await fs.stat(file).then((s) => s.size, () => 0);
    return new ConsoleWatch(file, size);
  }

  #timer: NodeJS.Timeout | undefined;
  #resolveFound: ((deadEnd: DeadEnd) => void) | undefined;
  /** Settles with the first dead end found while polling (start()); stays pending otherwise. */
  readonly found = new Promise<DeadEnd>((resolve) => {
    this.#resolveFound = resolve;
  });

  /** Polls the console every `intervalMs` until stop(). */
  start(intervalMs = 500): void {
    this.#timer ??= setInterval(() => void this.poll().catch(() => undefined), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The dead end seen so far, without waiting. */
  get deadEnd(): DeadEnd | undefined {
    return this.#found;
  }

  /** Reads what the console wrote since the last call; resolves with the dead end, if any. */
  async poll(): Promise<DeadEnd | undefined> {
    if (this.#found) return this.#found;
    this.#reading ??= this.#read().finally(() => {
      this.#reading = undefined;
    });
    await this.#reading;
    return this.#found;
  }

  async #read(): Promise<void> {
    const handle = await fs.open(this.#file, 'r').catch(() => undefined);
    if (!handle) return;
    try {
      const buffer = Buffer.alloc(256 * 1024);
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.#offset);
        if (bytesRead === 0) break;
        this.#offset += bytesRead;
        this.#text += buffer.subarray(0, bytesRead).toString('utf8');
      }
    } finally {
      await handle.close();
    }
    // Only the tail can still hold a report's start: keep enough of it, not the whole boot.
    if (this.#text.length > 1 << 20) this.#text = this.#text.slice(-(1 << 19));
    this.#found = findDeadEnd(this.#text);
    // A report whose end never comes (the reporter was killed mid-way) still counts, a little later.
    if (!this.#found && this.#text.includes(REPORT_START)) {
      this.#reportSeenAt ??= Date.now();
      if (Date.now() - this.#reportSeenAt > INCOMPLETE_REPORT_GRACE_MS) this.#found = findDeadEnd(this.#text, { complete: true });
    }
    if (this.#found) this.#resolveFound?.(this.#found);
  }
}
