// What a template's manifest may point a restored guest at. A manifest names files that QEMU opens
// for the guest (its overlay's backing image, the kernel and initrd, the cloud-init seed, fw_cfg
// entries, the UEFI firmware and variable store): one from a restored or imported cache could name
// any host file, and the guest would read it. So before a manifest not seen before is used, every
// such file must be the template's own (inside its entry), its image's (inside the image directory
// its key names), or the host's OVMF; and its overlay must stand on that image's disk and nothing
// else. A stamp then remembers the files that passed, so that a restore does not check again.
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { diskInfo } from '../disk/qemu-img.ts';
import { findOvmf } from '../host/firmware.ts';
import { IMAGE_FILES } from '../images/image-dir.ts';
import { INSTANCE_FILES } from './instance.ts';
import type { TemplateManifest } from './template-cache.ts';

/** The entry's record of the files that passed (never exported: another cache checks for itself). */
export const TRUST_STAMP = '.verified';

/** The files whose identity the stamp records: the manifest and the overlay. */
const STAMPED = ['manifest.json', INSTANCE_FILES.overlay];

async function identity(dir: string): Promise<string | undefined> {
  const parts: string[] = [];
  for (const name of STAMPED) {
    const stat = await fs.stat(path.join(dir, name)).catch(() => undefined);
    if (!stat) return undefined;
    parts.push(`${name}:${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}`);
  }
  return parts.join('\n');
}

/** The image directory a template's key names: the only one its overlay and kernel may stand on. */
export function templateImageDir(manifest: Pick<TemplateManifest, 'inputs'>): string {
  const { name, hash } = manifest.inputs.image;
  return path.join(guestlabPaths().imagesDir, `${name}-${hash.slice(0, 16)}`);
}

/** `file` (relative to `dir`, or absolute) lies inside `dir`. */
function within(dir: string, file: string): boolean {
  const relative = path.relative(dir, path.resolve(dir, file));
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}

/** Why the entry in `dir` may not be used as it is, or undefined when every file it names is its own, its image's or the firmware's. */
export async function untrustedFile(dir: string, manifest: TemplateManifest): Promise<string | undefined> {
  const stamp = await fs.readFile(path.join(dir, TRUST_STAMP), 'utf8').catch(() => undefined);
  const now = await identity(dir);
  if (stamp !== undefined && stamp === now) return undefined;

  const imageDir = templateImageDir(manifest);
  if (path.resolve(manifest.imageDir) !== imageDir) return `its manifest places its image in ${manifest.imageDir}, not ${imageDir}`;
  const { base } = manifest;
  const own = [
    ...(base.seed === undefined ? [] : [['seed', base.seed]]),
    ...(base.fwCfg ?? []).map((entry) => [`fw_cfg entry ${entry.name}`, entry.file]),
    ...(base.uefi ? [['UEFI variable store', base.uefi.vars]] : []),
  ] as [string, string][];
  for (const [what, file] of own) if (!within(dir, file)) return `its ${what} is ${file}, outside the template`;
  if (base.kernel) {
    for (const file of [base.kernel.kernel, base.kernel.initrd]) if (!within(imageDir, file)) return `its kernel or initrd is ${file}, outside its image ${imageDir}`;
  }
  if (base.uefi) {
    const ovmf = await findOvmf().catch(() => undefined);
    if (!ovmf || path.resolve(base.uefi.code) !== path.resolve(ovmf.code)) return `its UEFI firmware is ${base.uefi.code}, not this host's OVMF (${ovmf?.code ?? 'none found'})`;
  }
  const overlay = path.join(dir, INSTANCE_FILES.overlay);
  const info = await diskInfo(overlay, undefined, 'qcow2').catch((error: Error) => error);
  if (info instanceof Error) return `its disk is not a readable qcow2 (${info.message.split('\n')[0]})`;
  const disk = path.join(imageDir, IMAGE_FILES.disk);
  if (info.dataFile !== undefined) return `its disk keeps its data in another file (${info.dataFile})`;
  if (info.backingFile === undefined || path.resolve(dir, info.backingFile) !== disk) return `its disk stands on ${info.backingFile ?? 'nothing'}, not its image's disk ${disk}`;

  if (now !== undefined) await fs.writeFile(path.join(dir, TRUST_STAMP), now, { mode: 0o600 }).catch(() => undefined);
  return undefined;
}
