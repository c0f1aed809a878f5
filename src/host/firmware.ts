// Firmware and bootloader files on the host: OVMF for UEFI guests, and what the builder needs to
// give a disk its own bootloader (syslinux for BIOS, systemd-boot for UEFI, FAT tools, sfdisk).
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import { readEnv } from '../env.ts';
import { HostRequirementError } from '../errors.ts';
import { findExecutable } from './probe.ts';

export interface OvmfFiles {
  /** Read-only firmware code (pflash unit 0). */
  code: string;
  /** The variable store template; each guest gets a writable copy (pflash unit 1). */
  vars: string;
}

/**
 * Code/vars pairs as distributions install them, newest layout first: Debian and Ubuntu (ovmf),
 * Fedora and RHEL (edk2-ovmf), Arch (edk2-ovmf). Secure-boot builds are left out: they need SMM,
 * which makes TCG guests slower and needs a different machine setup.
 */
const OVMF_CANDIDATES: OvmfFiles[] = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/ovmf/OVMF_CODE.fd', vars: '/usr/share/edk2/ovmf/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/x64/OVMF_CODE.4m.fd', vars: '/usr/share/edk2/x64/OVMF_VARS.4m.fd' },
];

const readable = (file: string) => fs.access(file, fsConstants.R_OK).then(() => true, () => false);

/**
 * The OVMF files for UEFI guests: GUESTLAB_OVMF_CODE and GUESTLAB_OVMF_VARS when set (both), else
 * the first installed pair. A missing firmware is an error that says what to install.
 */
export async function findOvmf(env: NodeJS.ProcessEnv = process.env): Promise<OvmfFiles> {
  const code = readEnv('GUESTLAB_OVMF_CODE', env);
  const vars = readEnv('GUESTLAB_OVMF_VARS', env);
  if (code || vars) {
    if (!code || !vars) throw new HostRequirementError('Set both GUESTLAB_OVMF_CODE and GUESTLAB_OVMF_VARS (the firmware code and its variable store), or neither.');
    for (const file of [code, vars]) if (!(await readable(file))) throw new HostRequirementError(`OVMF file ${file} (from GUESTLAB_OVMF_CODE/VARS) cannot be read.`);
    return { code, vars };
  }
  for (const pair of OVMF_CANDIDATES) {
    if ((await readable(pair.code)) && (await readable(pair.vars))) return pair;
  }
  throw new HostRequirementError(
    `UEFI guests need OVMF, and none was found (looked for ${OVMF_CANDIDATES.map((p) => p.code).join(', ')}). ` +
      'Install it with: apt-get install ovmf (Fedora: dnf install edk2-ovmf), or set GUESTLAB_OVMF_CODE and GUESTLAB_OVMF_VARS.',
  );
}

export interface BootloaderTools {
  sfdisk: string;
  mkfsVfat: string;
  mcopy: string;
  mmd: string;
  syslinux: string;
  /** syslinux's MBR code for GPT disks: it boots the partition marked "legacy BIOS bootable". */
  gptMbr: string;
  /** systemd-boot, installed as the removable-media loader EFI/BOOT/BOOTX64.EFI. */
  systemdBoot: string;
}

const TOOL_PACKAGES: [keyof BootloaderTools, string, string][] = [
  ['sfdisk', 'sfdisk', 'fdisk'],
  ['mkfsVfat', 'mkfs.vfat', 'dosfstools'],
  ['mcopy', 'mcopy', 'mtools'],
  ['mmd', 'mmd', 'mtools'],
  ['syslinux', 'syslinux', 'syslinux'],
];
const FILE_PACKAGES: [keyof BootloaderTools, string[], string][] = [
  ['gptMbr', ['/usr/lib/syslinux/mbr/gptmbr.bin', '/usr/share/syslinux/gptmbr.bin', '/usr/lib/syslinux/bios/gptmbr.bin'], 'syslinux-common'],
  ['systemdBoot', ['/usr/lib/systemd/boot/efi/systemd-bootx64.efi'], 'systemd-boot-efi'],
];

/** The host tools that give a built image its own bootloader; all missing ones are named at once. */
export async function findBootloaderTools(): Promise<BootloaderTools> {
  const found: Partial<BootloaderTools> = {};
  const missing: string[] = [];
  for (const [key, name, pkg] of TOOL_PACKAGES) {
    const file = await findExecutable(name);
    if (file) found[key] = file;
    else missing.push(`${name} (${pkg})`);
  }
  for (const [key, candidates, pkg] of FILE_PACKAGES) {
    let hit: string | undefined;
    for (const file of candidates) if (!hit && (await readable(file))) hit = file;
    if (hit) found[key] = hit;
    else missing.push(`${candidates[0]} (${pkg})`);
  }
  if (missing.length) {
    const packages = [...new Set(missing.map((m) => /\((.+)\)$/.exec(m)![1]))];
    throw new HostRequirementError(`Building an image with its own bootloader (recipe boot: firmware) needs ${missing.join(', ')}; install with: apt-get install ${packages.join(' ')}`);
  }
  return found as BootloaderTools;
}
