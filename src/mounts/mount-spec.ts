// The `mounts` of a guest spec and the argument of vm.mount(), checked once at the boundary, before
// any image is built: the host side must be a readable directory (made absolute), the guest side a
// clean absolute path where a read-only filesystem can go. Messages name the entry and the fix.
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describeValue, isPlainObject } from '../util/validate.ts';

/** A host directory to show read-only in the guest, as written in a spec. */
export interface MountSpec {
  /** Host directory; relative paths are taken from `cwd` (default: the current directory). */
  host: string;
  /** Absolute path in the guest where it appears. */
  guest: string;
  /** Mounts are read-only; `true` may be written out, `false` is refused. */
  readOnly?: boolean;
}

/** A checked mount: `host` absolute, `guest` normalized. */
export interface ResolvedMount {
  host: string;
  guest: string;
  readOnly: true;
}

export interface ResolveMountsOptions {
  /** Directory that relative host paths start from (a fixture file's directory); default process.cwd(). */
  cwd?: string | undefined;
  /** Guest paths already mounted (vm.mount() at run time): a new mount may not repeat or nest with them. */
  mounted?: readonly string[] | undefined;
}

const KEYS = ['host', 'guest', 'readOnly'];
/** Kernel and runtime filesystems that a mount would hide. */
const RESERVED = ['/proc', '/sys', '/dev', '/run'];

const within = (inner: string, outer: string) => inner === outer || inner.startsWith(outer === '/' ? '/' : `${outer}/`);

/** Checks a guest mount point (pure): absolute, normalized, not `/`, not under /proc, /sys, /dev, /run. */
export function checkGuestMountPath(value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '') throw new TypeError(`Expected \`${name}\` to be an absolute guest path like '/mnt/data', got ${describeValue(value)}`);
  if (/[\0-\x1f\x7f]/.test(value)) throw new TypeError(`\`${name}\` ${JSON.stringify(value)} contains a control character: use a plain path like '/mnt/data'`);
  if (!value.startsWith('/')) throw new TypeError(`\`${name}\` ${describeValue(value)} is not absolute: write it from the root, e.g. '/${value.replace(/^\.?\/*/, '')}'`);
  const clean = path.posix.normalize(value).replace(/(.)\/+$/, '$1');
  if (clean !== value) throw new TypeError(`\`${name}\` ${describeValue(value)} is not normalized: write it as '${clean}'`);
  if (value === '/') throw new TypeError(`\`${name}\` cannot be '/': the guest's root filesystem stays; mount under a directory such as '/mnt/data'`);
  const reserved = RESERVED.find((dir) => within(value, dir));
  if (reserved) throw new TypeError(`\`${name}\` ${describeValue(value)} is under ${reserved}, which belongs to the kernel and systemd: mount somewhere else, e.g. '/mnt/data'`);
  return value;
}

/** Checks the host side: an existing, readable directory; returns its absolute path. */
async function checkHostDir(value: unknown, name: string, cwd: string): Promise<string> {
  if (typeof value !== 'string' || value === '') throw new TypeError(`Expected \`${name}\` to be the path of a host directory, got ${describeValue(value)}`);
  if (value.includes('\0')) throw new TypeError(`\`${name}\` contains a NUL character: give the directory's path`);
  const absolute = path.resolve(cwd, value);
  const shown = absolute === value ? `"${value}"` : `"${value}" (${absolute})`;
  let stats;
  try {
    stats = await fs.stat(absolute);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new TypeError(`\`${name}\` ${shown} does not exist: create the directory first or correct the path`);
    throw new TypeError(`\`${name}\` ${shown} cannot be examined (${code ?? (error as Error).message}): make it readable by this user`);
  }
  if (!stats.isDirectory()) throw new TypeError(`\`${name}\` ${shown} is not a directory: mount the directory that holds it`);
  try {
    await fs.access(absolute, fsConstants.R_OK | fsConstants.X_OK);
  } catch {
    throw new TypeError(`\`${name}\` ${shown} cannot be read by this user: make it readable (chmod u+rx) or mount another directory`);
  }
  return absolute;
}

/** Checks one entry; `name` is how messages call it (`mounts[2]`, `mount()`). */
export async function resolveMount(value: unknown, name: string, options: ResolveMountsOptions = {}): Promise<ResolvedMount> {
  if (!isPlainObject(value)) throw new TypeError(`Expected \`${name}\` to be an object like { host: './dist', guest: '/mnt/dist' }, got ${describeValue(value)}`);
  const unknown = Object.keys(value).find((key) => !KEYS.includes(key));
  if (unknown !== undefined) throw new TypeError(`Unknown key \`${name}.${unknown}\`: a mount has ${KEYS.join(', ')}`);
  if (value.readOnly !== undefined && value.readOnly !== true) {
    throw new TypeError(`\`${name}.readOnly\` is ${describeValue(value.readOnly)}, but a mount is a read-only snapshot of the host directory: leave readOnly out (copy files that the guest must change with vm.copyTo())`);
  }
  const guest = checkGuestMountPath(value.guest, `${name}.guest`);
  const clash = (options.mounted ?? []).find((other) => within(guest, other) || within(other, guest));
  if (clash !== undefined) throw new TypeError(conflict(`\`${name}.guest\` ${describeValue(guest)}`, `the mounted ${describeValue(clash)}`, guest, clash));
  const host = await checkHostDir(value.host, `${name}.host`, options.cwd ?? process.cwd());
  return { host, guest, readOnly: true };
}

/** Checks a spec's `mounts` list: every entry, and no guest path twice or inside another. */
export async function resolveMounts(value: unknown, options: ResolveMountsOptions = {}): Promise<ResolvedMount[]> {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new TypeError(`Expected \`mounts\` to be an array of { host, guest }, got ${describeValue(value)}`);
  // The guest paths first: they are pure, and a clash is reported before the host is looked at.
  const guests = value.map((entry, i) => (isPlainObject(entry) ? checkGuestMountPath(entry.guest, `mounts[${i}].guest`) : undefined));
  for (const [j, b] of guests.entries()) {
    for (const [i, a] of guests.slice(0, j).entries()) {
      if (a !== undefined && b !== undefined && (within(a, b) || within(b, a))) {
        throw new TypeError(conflict(`\`mounts[${j}].guest\` ${describeValue(b)}`, `\`mounts[${i}].guest\` ${describeValue(a)}`, b, a));
      }
    }
  }
  const resolved: ResolvedMount[] = [];
  for (const [i, entry] of value.entries()) resolved.push(await resolveMount(entry, `mounts[${i}]`, options));
  return resolved;
}

function conflict(subject: string, other: string, a: string, b: string): string {
  if (a === b) return `${subject} repeats ${other}: mount each guest path once`;
  const [outer, inner] = a.length < b.length ? [a, b] : [b, a];
  return `${subject} and ${other} nest (${inner} is inside ${outer}, which is read-only): use paths side by side, such as '/mnt/one' and '/mnt/two'`;
}
