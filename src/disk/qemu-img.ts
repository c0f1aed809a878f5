// Disk files, through qemu-img: the only place that runs it. Overlays for guests, conversions for
// image builds and imports, UEFI variable stores, and the header facts of an untrusted disk.
import fs from 'node:fs/promises';
import path from 'node:path';
import { DEBIAN_PACKAGES, probeQemuImg, requireTool } from '../host/probe.ts';
import { run } from '../util/run.ts';

export type DiskFormat = 'qcow2' | 'raw';

async function qemuImg(args: string[], why: string, signal: AbortSignal | undefined): Promise<string> {
  const tool = requireTool(await probeQemuImg(), DEBIAN_PACKAGES.qemuImg, why);
  return run(tool, args, { signal });
}

/**
 * Points a qcow2 overlay at `base` without reading either (rebase -u): for an overlay whose base
 * moved (a template imported into another cache), the same image at another path.
 */
export async function setBackingFile(overlay: string, base: string, signal?: AbortSignal): Promise<void> {
  await qemuImg(['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', path.resolve(base), overlay], 'to move templates between caches', signal);
}

/** A copy-on-write qcow2 overlay on a read-only qcow2 base. */
export async function createOverlay(base: string, overlay: string, signal?: AbortSignal): Promise<void> {
  // -F names the backing format explicitly: QEMU refuses to probe it, and probing a raw
  // backing file would be a security hole.
  await qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', path.resolve(base), overlay], 'to create guest disks', signal);
}

/** Converts a disk between formats (the source format is named, never probed). */
export async function convertDisk(from: { file: string; format: DiskFormat }, to: { file: string; format: DiskFormat }, signal?: AbortSignal): Promise<void> {
  await qemuImg(['convert', '-q', '-f', from.format, '-O', to.format, from.file, to.file], 'to convert disk images', signal);
}

/** A guest's own UEFI variable store: OVMF's template as qcow2 (savevm snapshots only formats that can hold them), 0600. */
export async function createVarStore(template: string, target: string, signal?: AbortSignal): Promise<void> {
  await convertDisk({ file: template, format: 'raw' }, { file: target, format: 'qcow2' }, signal);
  await fs.chmod(target, 0o600);
}

/** What qemu-img reads from a disk's header. */
export interface DiskInfo {
  format: string | undefined;
  virtualSize: number | undefined;
  /** A file the disk refers to (backing file or external data file): never trust such a disk as a base. */
  externalFile: string | undefined;
  backingFile: string | undefined;
  dataFile: string | undefined;
}

/**
 * The header facts of a disk; `format` reads it as that format (qemu-img fails when it is not),
 * without it the format is probed (probing only reads the header).
 */
export async function diskInfo(file: string, signal?: AbortSignal, format?: DiskFormat): Promise<DiskInfo> {
  const args = ['info', '--output=json', ...(format ? ['-f', format] : []), file];
  const info = JSON.parse(await qemuImg(args, 'to inspect disk images', signal)) as {
    format?: string;
    'virtual-size'?: number;
    'backing-filename'?: string;
    'format-specific'?: { data?: { 'data-file'?: string } };
  };
  const backingFile = info['backing-filename'];
  const dataFile = info['format-specific']?.data?.['data-file'];
  return { format: info.format, virtualSize: info['virtual-size'], externalFile: backingFile ?? dataFile, backingFile, dataFile };
}
