// guestlab's own initramfs for images that boot their kernel directly: a static init
// (images/initramfs/guestlab-init.c) and the few modules the root file system needs, in place of
// Debian's initramfs-tools image, whose udev coldplug and settle cost about 5 s of a TCG boot
// (measured here: systemd started 9.3 s into the boot with Debian's, 3.9 s with this one).
import fs from 'node:fs/promises';
import path from 'node:path';
import { ImageBuildError } from '../errors.ts';
import { buildStatic, sourceDigestSync, type StaticProgram } from '../host/static-c.ts';
import { run } from '../util/run.ts';

export const INIT_SOURCE = path.resolve(import.meta.dirname, '../../images/initramfs/guestlab-init.c');
const INIT: StaticProgram = { name: 'guestlab-init', what: 'the initramfs init', source: INIT_SOURCE, cflags: ['-static', '-Os', '-Wall', '-Wextra', '-Werror'] };

/**
 * What mounting guestlab's root needs: the disk is virtio-blk on PCI (src/qemu/argv.ts), the file
 * system ext4 with metadata checksums (crc32c, which ext4 asks the crypto API for by name, so no
 * modules.dep line leads to it). A name the kernel has built in drops out.
 */
export const ROOT_MODULES: readonly string[] = ['virtio_pci', 'virtio_blk', 'ext4', 'crc32c_generic'];

/** The digest of the init's source and flags, part of an image recipe's hash. */
export function initSourceDigestSync(): string {
  return sourceDigestSync(INIT);
}

export function buildInit(outDir: string): Promise<string> {
  return buildStatic(INIT, outDir);
}

const moduleName = (file: string) => path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');

/**
 * Pure: the module files (as modules.dep names them) that `wanted` needs, each after the modules it
 * depends on. Names built into the kernel (modules.builtin) drop out; a name in neither is an error.
 */
export function resolveModules(modulesDep: string, modulesBuiltin: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, { file: string; needs: string[] }>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const file = line.slice(0, colon).trim();
    deps.set(moduleName(file), { file, needs: line.slice(colon + 1).trim().split(/\s+/).filter(Boolean) });
  }
  const builtin = new Set(modulesBuiltin.split('\n').filter(Boolean).map(moduleName));
  const order: string[] = [];
  const visit = (name: string, chain: string[]) => {
    const entry = deps.get(name);
    if (!entry) {
      if (builtin.has(name)) return;
      throw new ImageBuildError(`The image's kernel has no module ${name} (not in modules.dep, not built in), which mounting the root file system needs${chain.length ? ` (through ${chain.join(' -> ')})` : ''}`);
    }
    if (order.includes(entry.file) || chain.includes(name)) return;
    for (const need of entry.needs) visit(moduleName(need), [...chain, name]);
    order.push(entry.file);
  };
  for (const name of wanted) visit(name.replace(/-/g, '_'), []);
  return order;
}

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  /** File type and permission bits (fs.constants.S_IFREG | 0o644, ...). */
  mode: number;
  data?: Buffer;
  /** Device number of a character or block device. */
  rdev?: [major: number, minor: number];
}

/** Pure: a cpio archive in the "newc" format the kernel unpacks, entries in order, owned by root. */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (length: number) => Buffer.alloc((4 - (length % 4)) % 4);
  const all = [...entries, { name: 'TRAILER!!!', mode: 0 }];
  all.forEach((entry, i) => {
    const name = Buffer.from(`${entry.name}\0`);
    const data = entry.data ?? Buffer.alloc(0);
    const fields = [i + 1, entry.mode, 0, 0, 1, 0, data.length, 0, 0, entry.rdev?.[0] ?? 0, entry.rdev?.[1] ?? 0, name.length, 0];
    const header = Buffer.from(`070701${fields.map((v) => v.toString(16).padStart(8, '0')).join('')}`, 'ascii');
    parts.push(header, name, pad(header.length + name.length), data, pad(data.length));
  });
  return Buffer.concat(parts);
}

/** Decompressors by suffix: Debian 12 ships its modules uncompressed, Debian 13 as .ko.xz. */
const DECOMPRESS: Record<string, string[]> = { '.xz': ['xz', '-d'], '.zst': ['zstd', '-d', '-q', '--rm'], '.gz': ['gzip', '-d'] };

/** A module file's bytes, uncompressed (a copy in `scratch` is decompressed): the init loads them with finit_module and no flags. */
async function moduleBytes(file: string, scratch: string): Promise<Buffer> {
  const suffix = path.extname(file);
  const tool = DECOMPRESS[suffix];
  if (!tool) return fs.readFile(file);
  const copy = path.join(scratch, path.basename(file));
  await fs.copyFile(file, copy);
  try {
    await run(tool[0]!, [...tool.slice(1), '--', copy]);
  } catch (error) {
    throw new ImageBuildError(`Decompressing the module ${file} needs ${tool[0]} on the host: ${(error as Error).message}`, { cause: error });
  }
  const plain = copy.slice(0, -suffix.length);
  const bytes = await fs.readFile(plain);
  await fs.rm(plain, { force: true });
  return bytes;
}

/**
 * Writes the initramfs for kernel `kernelVersion` of the root file system tree `rootfs` to
 * `output`: /init, /dev/console, the mount points, and the modules ROOT_MODULES needs (listed in
 * /modules in load order). Returns the module names it holds.
 */
export async function writeInitramfs(options: { rootfs: string; kernelVersion: string; output: string; initDir: string; scratch: string }): Promise<string[]> {
  const modulesDir = path.join(options.rootfs, 'lib/modules', options.kernelVersion);
  const read = (name: string) => fs.readFile(path.join(modulesDir, name), 'utf8').catch(() => '');
  const files = resolveModules(await read('modules.dep'), await read('modules.builtin'), ROOT_MODULES);
  const S = fs.constants;
  const entries: CpioEntry[] = [
    { name: 'dev', mode: S.S_IFDIR | 0o755 },
    { name: 'dev/console', mode: S.S_IFCHR | 0o600, rdev: [5, 1] },
    { name: 'proc', mode: S.S_IFDIR | 0o755 },
    { name: 'root', mode: S.S_IFDIR | 0o755 },
    { name: 'init', mode: S.S_IFREG | 0o755, data: await fs.readFile(await buildInit(options.initDir)) },
  ];
  const inArchive = files.map((file) => `lib/modules/${options.kernelVersion}/${file.replace(/\.(xz|zst|gz)$/, '')}`);
  const dirs = new Set<string>();
  for (const file of inArchive) for (let dir = path.posix.dirname(file); dir !== '.'; dir = path.posix.dirname(dir)) dirs.add(dir);
  for (const dir of [...dirs].sort()) entries.push({ name: dir, mode: S.S_IFDIR | 0o755 });
  for (const [i, file] of files.entries()) entries.push({ name: inArchive[i]!, mode: S.S_IFREG | 0o644, data: await moduleBytes(path.join(modulesDir, file), options.scratch) });
  entries.push({ name: 'modules', mode: S.S_IFREG | 0o644, data: Buffer.from(inArchive.map((f) => `/${f}\n`).join('')) });
  await fs.writeFile(options.output, cpioNewc(entries));
  return files.map(moduleName);
}
