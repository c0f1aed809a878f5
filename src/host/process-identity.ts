// Process identity that survives pid reuse: a pid plus the kernel's start time of that process.
import { readFileSync } from 'node:fs';

export interface ProcessIdentity {
  pid: number;
  /** Start time in clock ticks since boot (field 22 of /proc/PID/stat). */
  start: number;
}

/** Parse field 22 of /proc/PID/stat; the command name (field 2) may contain spaces and parens. */
export function parseStatStartTime(stat: string): number | undefined {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state), so field 22 is rest[19].
  const value = Number(rest[19]);
  return Number.isFinite(value) && value > 0 ? value : undefined;
}

export function processStartTime(pid: number): number | undefined {
  try {
    return parseStatStartTime(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

let self: ProcessIdentity | undefined;

/** This process's identity; it cannot change, so /proc is read once. */
export function currentIdentity(): ProcessIdentity {
  if (self) return self;
  const start = processStartTime(process.pid);
  if (start === undefined) throw new Error('Cannot read /proc/self/stat: guestlab needs Linux procfs');
  self = { pid: process.pid, start };
  return self;
}

/**
 * True only when the pid runs and is the same process (not a later one that reused the pid). A
 * zombie (exited, not yet reaped by its parent) is dead: it holds nothing any more.
 */
export function isAlive(identity: ProcessIdentity): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${identity.pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && parseStatStartTime(stat) === identity.start;
}

export function processCmdline(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return undefined;
  }
}
