// The partitioned disk of an image that boots through firmware (recipe boot: firmware): an EFI
// system partition with the kernel and both bootloaders, then the root filesystem.
import fs from 'node:fs/promises';
import path from 'node:path';
import { ImageBuildError } from '../errors.ts';
import type { BootloaderTools } from '../host/firmware.ts';
import { run } from '../util/run.ts';

const MiB = 1024 * 1024;
/** The EFI system partition: the kernel and initrd (about 40 MiB for Debian's cloud kernel) and the loaders. */
const ESP_MIB = 128;
const GPT_ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const GPT_LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';

export interface FirmwareDiskParts {
  /** The root ext4 filesystem (LABEL=root), as a raw file. */
  root: string;
  kernel: string;
  initrd: string;
  /** The kernel command line both loaders pass (root= included). */
  cmdline: string;
  output: string;
  /** Where temporary files go. */
  scratch: string;
}

/** The loader configurations written into the EFI system partition: boot at once, on the serial console. */
export function bootloaderConfigs(cmdline: string): Record<string, string> {
  if (/[\n\r]/.test(cmdline)) throw new TypeError(`A kernel command line cannot contain a line break: ${JSON.stringify(cmdline)}`);
  return {
    '/syslinux/syslinux.cfg': ['SERIAL 0 115200', 'PROMPT 0', 'TIMEOUT 0', 'DEFAULT guestlab', 'LABEL guestlab', '  LINUX /vmlinuz', '  INITRD /initrd.img', `  APPEND ${cmdline}`, ''].join('\n'),
    '/loader/loader.conf': ['timeout 0', 'default guestlab.conf', ''].join('\n'),
    '/loader/entries/guestlab.conf': ['title guestlab', 'linux /vmlinuz', 'initrd /initrd.img', `options ${cmdline}`, ''].join('\n'),
  };
}

/**
 * A GPT disk that boots through either firmware: partition 1 is a FAT EFI system partition marked
 * legacy-BIOS-bootable, holding the kernel, syslinux (started by syslinux's GPT MBR code under
 * SeaBIOS) and systemd-boot as EFI/BOOT/BOOTX64.EFI (found by OVMF on a disk without boot entries);
 * partition 2 is the root filesystem. Made from files alone, no loop devices or mounts: mkfs.vfat
 * and mtools fill the FAT image, sfdisk writes the table, dd places the partitions.
 */
export async function assembleFirmwareDisk(parts: FirmwareDiskParts, tools: BootloaderTools, signal?: AbortSignal): Promise<void> {
  const esp = path.join(parts.scratch, 'esp.img');
  const configDir = path.join(parts.scratch, 'loader-configs');
  await fs.rm(esp, { force: true });
  await run(tools.mkfsVfat, ['-C', '-n', 'ESP', esp, String(ESP_MIB * 1024)], { signal });
  await run(tools.mmd, ['-i', esp, '::/EFI', '::/EFI/BOOT', '::/loader', '::/loader/entries', '::/syslinux'], { signal });
  await fs.mkdir(configDir, { recursive: true });
  const copies: [string, string][] = [
    [parts.kernel, '::/vmlinuz'],
    [parts.initrd, '::/initrd.img'],
    [tools.systemdBoot, '::/EFI/BOOT/BOOTX64.EFI'],
  ];
  for (const [target, content] of Object.entries(bootloaderConfigs(parts.cmdline))) {
    const local = path.join(configDir, target.replaceAll('/', '_'));
    await fs.writeFile(local, content);
    copies.push([local, `::${target}`]);
  }
  for (const [from, to] of copies) await run(tools.mcopy, ['-i', esp, from, to], { signal });
  await run(tools.syslinux, ['--install', '--directory', '/syslinux', esp], { signal });
  await fs.rm(configDir, { recursive: true, force: true });

  const rootBytes = (await fs.stat(parts.root)).size;
  if (rootBytes % MiB) throw new ImageBuildError(`The root filesystem ${parts.root} is ${rootBytes} bytes, not a whole number of MiB`);
  const espStart = 1; // MiB: the GPT header and table before it
  const rootStart = espStart + ESP_MIB;
  const totalMiB = rootStart + rootBytes / MiB + 1; // and the backup GPT after the root
  await fs.rm(parts.output, { force: true });
  const handle = await fs.open(parts.output, 'wx', 0o600);
  await handle.truncate(totalMiB * MiB);
  await handle.close();
  const sectors = (mib: number) => (mib * MiB) / 512;
  const table = [
    'label: gpt',
    `start=${sectors(espStart)}, size=${sectors(ESP_MIB)}, type=${GPT_ESP}, name="ESP", attrs="LegacyBIOSBootable"`,
    `start=${sectors(rootStart)}, size=${sectors(rootBytes / MiB)}, type=${GPT_LINUX}, name="root"`,
    '',
  ].join('\n');
  await run(tools.sfdisk, ['--quiet', '--no-reread', '--no-tell-kernel', parts.output], { signal, input: table });
  const place = (file: string, startMiB: number, bytes: number) =>
    run('dd', [`if=${file}`, `of=${parts.output}`, `bs=${bytes}`, 'count=1', `seek=${startMiB * MiB}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none'], { signal });
  await place(esp, espStart, ESP_MIB * MiB);
  await fs.rm(esp);
  await run('dd', [`if=${parts.root}`, `of=${parts.output}`, 'bs=4M', `seek=${rootStart * MiB}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none'], { signal });
  // The MBR's boot code (its first 440 bytes) becomes syslinux's; the protective partition table stays.
  await place(tools.gptMbr, 0, 440);
}
