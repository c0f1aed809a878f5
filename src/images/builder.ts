// Base images in the cache, by catalog name. A recipe is built here from Debian packages:
// mmdebstrap -> ext4 -> read-only qcow2, plus the image's own kernel and initrd for direct kernel
// boot, or (recipe boot: firmware) a partitioned disk that carries its own bootloader. A download
// entry is pulled once (download.ts), checked, and linked or converted into a qcow2. Either way the
// image is written under a temporary name and renamed when complete, under a host-wide lock, so
// that two processes never race and readers never see half.
import fs from 'node:fs/promises';
import path from 'node:path';
import { ImageBuildError, HostRequirementError } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { DEBIAN_PACKAGES, probeHost, requireTool } from '../host/probe.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { exists, makePrivateDir } from '../util/fs.ts';
import { acquireLock } from '../util/lock.ts';
import { run } from '../util/run.ts';
import { quoteArg } from '../util/shell-quote.ts';
import { findBootloaderTools, type BootloaderTools } from '../host/firmware.ts';
import { downloadHash, resolveImage, type CatalogEntry, type DownloadEntry, type Firmware } from './catalog.ts';
import { digestFiles, ensureVerified, writeStamp, type FileDigests } from './digest.ts';
import { formatDigest, formatProgress, pullFile, type DownloadProgress } from './download.ts';
import { recipeHash, type ImageRecipe } from './recipe.ts';
import { convertDisk, diskInfo } from '../disk/qemu-img.ts';

/** Files of a built image directory. */
export const IMAGE_FILES = {
  disk: 'disk.qcow2',
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  manifest: 'manifest.json',
} as const;

/** The files whose digests the manifest records (everything but the manifest). */
export const DIGESTED_FILES = { disk: IMAGE_FILES.disk, kernel: IMAGE_FILES.kernel, initrd: IMAGE_FILES.initrd };
/** What an image that boots through firmware holds: its disk, whose bootloader finds the kernel. */
export const FIRMWARE_FILES = { disk: IMAGE_FILES.disk };

/** The files of an image directory (role -> file name), from its manifest. */
export function imageFilesOf(image: { boot?: 'kernel' | 'firmware' | undefined }): Record<string, string> {
  return image.boot === 'firmware' ? FIRMWARE_FILES : DIGESTED_FILES;
}

export interface BuiltImage {
  name: string;
  hash: string;
  dir: string;
  disk: string;
  /** `kernel`: QEMU loads kernel and initrd directly; `firmware`: the disk has its own bootloader. */
  boot: 'kernel' | 'firmware';
  /** The firmware the image boots with unless the guest spec asks for another (bios = SeaBIOS, uefi = OVMF). */
  firmware: Firmware;
  /** For direct kernel boot; undefined when the image boots through firmware. */
  kernel: string | undefined;
  initrd: string | undefined;
  /** Kernel command line for direct kernel boot (root= included); undefined when the bootloader holds it. */
  cmdline: string | undefined;
  /** Where it came from: built from a recipe, or downloaded (a download entry). */
  source: 'recipe' | 'download';
  /** True when this call built (or downloaded) it, false when it came from the cache. */
  built: boolean;
  buildMs: number;
}

export interface ImageManifest {
  name: string;
  /** The recipe hash, or for a download entry its downloadHash(). */
  recipeHash: string;
  /** The Debian suite; for a downloaded image, the entry's release. */
  suite: string;
  /** Empty when not known (a downloaded image). */
  kernelVersion: string;
  /** The kernel command line, given to QEMU or written into the bootloader; empty when not known. */
  cmdline: string;
  /** Absent: `kernel` (manifests written before firmware boot existed). */
  boot?: 'kernel' | 'firmware';
  /** The firmware it boots with by default; absent: bios. */
  firmware?: Firmware;
  /** For a downloaded image: where from, the verified digest, and the file in the download cache. */
  download?: { url: string; digest: string; file: string };
  builtAt: string;
  buildMs: number;
  diskBytes: number;
  /** sha256 and size of disk, kernel and initrd; absent in manifests written before guestlab 0.1.0 recorded them. */
  files?: FileDigests;
}

export interface EnsureImageOptions {
  log?: Logger;
  signal?: AbortSignal | undefined;
  /** Rebuild even when a cached image exists. */
  force?: boolean;
}

/** What the cache keys an entry by: its recipe hash, or for a download entry its downloadHash(). */
export function entryHash(entry: CatalogEntry | ImageRecipe): string {
  if ('kind' in entry) return entry.kind === 'recipe' ? recipeHash(entry.recipe) : downloadHash(entry.download);
  return recipeHash(entry);
}

/** The directory of an image in the cache: its name, then 16 hex digits of its hash. */
export function imageDirName(entry: CatalogEntry | ImageRecipe): string {
  return `${entry.name}-${entryHash(entry).slice(0, 16)}`;
}

const announced = new Set<string>();

/** Returns the cached image for `name`, building (or downloading) it first when it is missing. */
export async function ensureImage(name: string, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const entry = await resolveImage(name);
  return entry.kind === 'recipe' ? ensureImageFromRecipe(entry.recipe, options) : ensureDownloadedImage(entry.download, options);
}

export async function ensureImageFromRecipe(recipe: ImageRecipe, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const log = (options.log ?? rootLog).child(`image:${recipe.name}`);
  const finalDir = path.join(guestlabPaths().imagesDir, imageDirName(recipe));
  return cachedOrMade(finalDir, options, log, {
    making: 'building',
    read: () => readBuiltImage(recipe, finalDir, log),
    make: () => buildInto(recipe, finalDir, log, options.signal),
  });
}

/**
 * The image in `dir` from the cache, or made first by `make` (which writes it under a temporary
 * name and renames it into place) under the image's host-wide lock. `read` returns the image when
 * `dir` holds a complete one, verified.
 */
async function cachedOrMade(
  dir: string,
  options: EnsureImageOptions,
  log: Logger,
  how: { making: string; read: () => Promise<BuiltImage | undefined>; make: () => Promise<void> },
): Promise<BuiltImage> {
  const cached = !options.force && (await how.read());
  if (cached) {
    // Once per process: CI logs show that a restored cache spared the build.
    if (!announced.has(cached.dir)) log.info(`cached build ${path.basename(cached.dir)}: no build needed`);
    announced.add(cached.dir);
    return cached;
  }

  await fs.mkdir(path.dirname(dir), { recursive: true });
  const lock = await acquireLock(dir, {
    signal: options.signal,
    onWait: () => log.info(`another process is ${how.making} this image; waiting for it`),
  });
  try {
    // The holder we waited for may have finished the job.
    const afterWait = !options.force && (await how.read());
    if (afterWait) return afterWait;
    await how.make();
    const made = await how.read();
    if (!made) throw new ImageBuildError(`${how.making} ${path.basename(dir)} finished but ${dir} is incomplete`);
    return { ...made, built: true };
  } finally {
    await lock.release();
  }
}

export async function readManifest(dir: string): Promise<ImageManifest | undefined> {
  const manifestPath = path.join(dir, IMAGE_FILES.manifest);
  if (!(await exists(manifestPath))) return undefined;
  return JSON.parse(await fs.readFile(manifestPath, 'utf8')) as ImageManifest;
}

async function readBuiltImage(recipe: ImageRecipe, dir: string, log: Logger): Promise<BuiltImage | undefined> {
  const manifest = await readManifest(dir);
  if (!manifest) return undefined;
  // Images built before digests were recorded were built on this host and are trusted as they are.
  if (manifest.files) await ensureVerified(recipe.name, dir, imageFilesOf(manifest), manifest.files, log);
  return builtImageOf(recipe.name, dir, manifest, 'recipe', kernelCmdline(recipe));
}

/** The image a manifest describes; `cmdline` is used only for direct kernel boot. */
function builtImageOf(name: string, dir: string, manifest: ImageManifest, source: BuiltImage['source'], cmdline: string | undefined): BuiltImage {
  const direct = manifest.boot !== 'firmware';
  return {
    name,
    hash: manifest.recipeHash,
    dir,
    disk: path.join(dir, IMAGE_FILES.disk),
    boot: direct ? 'kernel' : 'firmware',
    firmware: manifest.firmware ?? 'bios',
    kernel: direct ? path.join(dir, IMAGE_FILES.kernel) : undefined,
    initrd: direct ? path.join(dir, IMAGE_FILES.initrd) : undefined,
    cmdline: direct ? cmdline : undefined,
    source,
    built: false,
    buildMs: manifest.buildMs,
  };
}

export function kernelCmdline(recipe: ImageRecipe): string {
  return `root=LABEL=root ro ${recipe.cmdline}`;
}

const FSTAB = 'LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n';

/** Where a recipe's `offlinePackages` are kept in the image, as a flat apt repository. */
export const OFFLINE_REPO_DIR = '/var/lib/guestlab/offline-apt';
/** The apt source for that repository; the image has it in OFFLINE_SOURCES_FILE. */
export const OFFLINE_APT_SOURCE = `deb [trusted=yes] file:${OFFLINE_REPO_DIR} ./`;
export const OFFLINE_SOURCES_FILE = '/etc/apt/sources.list.d/guestlab-offline.list';

/**
 * Run in the image with the package names as arguments: downloads them and every dependency the
 * image lacks, then indexes them. Apt in the finished image installs Recommends, mmdebstrap's
 * temporary build config does not: ask for them so that the repository has what the guest asks for.
 * Apt's download directory is kept out of /var/cache/apt/archives, which mmdebstrap cleans.
 */
export const OFFLINE_REPO_SCRIPT = `repo=${OFFLINE_REPO_DIR}
mkdir -p "$repo/partial"
apt-get install --download-only --yes --quiet -o APT::Install-Recommends=true -o Dir::Cache::archives="$repo/" "$@"
rm -rf "$repo/partial" "$repo/lock"
cd "$repo"
for deb in *.deb; do
  [ -e "$deb" ] || continue
  # apt writes an epoch as %3a in a file name; the archive pool leaves it out.
  name=$(printf '%s\\n' "$deb" | sed 's/_[0-9]*%3a/_/')
  [ "$name" = "$deb" ] || mv "$deb" "$name"
  dpkg-deb -f "$name"
  printf 'Filename: ./%s\\nSize: %s\\nSHA256: %s\\n\\n' "$name" "$(stat -c %s "$name")" "$(sha256sum "$name" | cut -d ' ' -f 1)"
done > Packages
echo '${OFFLINE_APT_SOURCE}' > ${OFFLINE_SOURCES_FILE}
echo "I: offline apt repository $repo: $(grep -c '^Package:' Packages) packages ($(du -sh . | cut -f 1)) for $*"
`;

/** The customize hook mmdebstrap runs with the root directory as $1. */
export function customizeScript(recipe: ImageRecipe, filesDir: string): string {
  const lines = ['#!/bin/sh', 'set -eu', 'root="$1"'];
  const put = (source: string, target: string, mode: number) =>
    lines.push(`install -D -m ${mode.toString(8).padStart(4, '0')} ${quoteArg(source)} "$root"${quoteArg(target)}`);
  put(path.join(filesDir, 'fstab'), '/etc/fstab', 0o644);
  recipe.files.forEach((file, i) => put(path.join(filesDir, String(i)), file.path, file.mode));
  // Every guest gets its own host key from cloud-init, and its own machine-id at first boot.
  lines.push('rm -f "$root"/etc/ssh/ssh_host_*', ': > "$root/etc/machine-id"', 'rm -f "$root/var/lib/dbus/machine-id"');
  for (const command of recipe.commands) lines.push(`chroot "$root" /bin/sh -ec ${quoteArg(command)}`);
  // Last, so that it sees what the commands installed or removed.
  if (recipe.offlinePackages.length) {
    lines.push(`chroot "$root" /bin/sh -ec ${quoteArg(OFFLINE_REPO_SCRIPT)} guestlab-offline-apt ${recipe.offlinePackages.map(quoteArg).join(' ')}`);
  }
  return lines.join('\n') + '\n';
}

async function buildInto(recipe: ImageRecipe, finalDir: string, log: Logger, signal: AbortSignal | undefined): Promise<void> {
  const host = await probeHost();
  const mmdebstrap = requireTool(host.mmdebstrap, DEBIAN_PACKAGES.mmdebstrap, 'to build images from Debian packages');
  const mkfs = requireTool(host.mkfsExt4, DEBIAN_PACKAGES.mkfsExt4, 'to build images');
  if (!host.isRoot) {
    throw new HostRequirementError(
      `Building image ${recipe.name} needs root (mmdebstrap installs packages as root and mkfs.ext4 keeps their ownership). ` +
        `Build it once with: sudo npx guestlab image build ${recipe.name}`,
    );
  }
  const started = Date.now();
  const work = `${finalDir}.tmp-${process.pid}`;
  await fs.rm(work, { recursive: true, force: true });
  await makePrivateDir(work);
  const firmware = recipe.boot === 'firmware';
  // Checked before the long bootstrap, so that a missing tool fails in a second, not after minutes.
  const bootloader = firmware ? await findBootloaderTools() : undefined;
  const steps = firmware ? 5 : 4;
  const step = (n: number, text: string) => log.info(`[${n}/${steps}] ${text} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
  try {
    const filesDir = path.join(work, 'files');
    await fs.mkdir(filesDir);
    await fs.writeFile(path.join(filesDir, 'fstab'), FSTAB);
    await Promise.all(recipe.files.map((file, i) => fs.writeFile(path.join(filesDir, String(i)), file.content)));
    const hook = path.join(work, 'customize.sh');
    await fs.writeFile(hook, customizeScript(recipe, filesDir), { mode: 0o700 });
    const bootDir = path.join(work, 'boot');
    const tarball = path.join(work, 'rootfs.tar');

    step(1, `bootstrapping ${recipe.suite} from ${recipe.mirror} with mmdebstrap`);
    await run(
      mmdebstrap,
      [
        '--variant=apt',
        `--components=${recipe.components.join(',')}`,
        `--include=${[recipe.kernel, ...recipe.packages].join(',')}`,
        `--customize-hook=${quoteArg(hook)} "$1"`,
        `--customize-hook=sync-out /boot ${quoteArg(bootDir)}`,
        recipe.suite,
        tarball,
        recipe.mirror,
      ],
      { signal, onLine: (line) => (/^[IWE]: /.test(line) ? log.info(`  ${line}`) : log.debug(line)) },
    );

    step(2, `making a ${recipe.diskSizeGiB} GiB ext4 filesystem`);
    const rootfs = path.join(work, 'rootfs');
    await fs.mkdir(rootfs);
    await run('tar', ['-C', rootfs, '--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', tarball], { signal });
    await fs.rm(tarball);
    const raw = path.join(work, 'disk.raw');
    await run(mkfs, ['-q', '-t', 'ext4', '-L', 'root', '-d', rootfs, raw, `${recipe.diskSizeGiB}G`], { signal });
    await fs.rm(rootfs, { recursive: true, force: true });

    step(3, 'extracting kernel and initrd');
    const bootFiles = await fs.readdir(bootDir);
    const kernelFile = bootFiles.filter((f) => f.startsWith('vmlinuz-')).sort().at(-1);
    const initrdFile = bootFiles.filter((f) => f.startsWith('initrd.img-')).sort().at(-1);
    if (!kernelFile || !initrdFile) {
      throw new ImageBuildError(`The image has no kernel or initrd in /boot (found: ${bootFiles.join(', ') || 'nothing'}); does the recipe's \`kernel\` package "${recipe.kernel}" install one?`);
    }
    await fs.rename(path.join(bootDir, kernelFile), path.join(work, IMAGE_FILES.kernel));
    await fs.rename(path.join(bootDir, initrdFile), path.join(work, IMAGE_FILES.initrd));
    await fs.rm(bootDir, { recursive: true, force: true });
    await fs.rm(filesDir, { recursive: true, force: true });
    await fs.rm(hook);

    let diskRaw = raw;
    if (bootloader) {
      step(4, 'partitioning: EFI system partition with the kernel, syslinux (BIOS) and systemd-boot (UEFI), then the root filesystem');
      diskRaw = path.join(work, 'firmware-disk.raw');
      await assembleFirmwareDisk(
        { root: raw, kernel: path.join(work, IMAGE_FILES.kernel), initrd: path.join(work, IMAGE_FILES.initrd), cmdline: kernelCmdline(recipe), output: diskRaw, scratch: work },
        bootloader,
        signal,
      );
      await fs.rm(raw);
      await fs.rm(path.join(work, IMAGE_FILES.kernel));
      await fs.rm(path.join(work, IMAGE_FILES.initrd));
    }
    step(steps, 'converting to qcow2');
    await convertDisk({ file: diskRaw, format: 'raw' }, { file: path.join(work, IMAGE_FILES.disk), format: 'qcow2' }, signal);
    await fs.rm(diskRaw);

    const disk = path.join(work, IMAGE_FILES.disk);
    const files = imageFilesOf(recipe);
    const manifest: ImageManifest = {
      name: recipe.name,
      recipeHash: recipeHash(recipe),
      suite: recipe.suite,
      kernelVersion: kernelFile.replace(/^vmlinuz-/, ''),
      cmdline: kernelCmdline(recipe),
      ...(firmware ? { boot: 'firmware' as const, firmware: 'bios' as const } : {}),
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - started,
      diskBytes: (await fs.stat(disk)).size,
      files: await digestFiles(work, files),
    };
    await seal(work, finalDir, manifest, files);
    log.info(`built ${recipe.name} in ${(manifest.buildMs / 1000).toFixed(1)}s: ${finalDir}`);
  } catch (error) {
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
    if (error instanceof ImageBuildError || error instanceof HostRequirementError) throw error;
    throw new ImageBuildError(`Building image ${recipe.name} failed: ${(error as Error).message}`, { cause: error });
  }
}

/** Writes the manifest, makes the files read-only and moves the finished directory into place. */
async function seal(work: string, finalDir: string, manifest: ImageManifest, files: Record<string, string>): Promise<void> {
  await fs.writeFile(path.join(work, IMAGE_FILES.manifest), JSON.stringify(manifest, null, 2) + '\n');
  // Base images are shared by every guest: nobody writes to them, overlays take the writes.
  for (const file of [...Object.values(files), IMAGE_FILES.manifest]) await fs.chmod(path.join(work, file), 0o444);
  await fs.chmod(work, 0o755);
  await fs.rm(finalDir, { recursive: true, force: true });
  await fs.rename(work, finalDir);
  await writeStamp(finalDir, files);
}

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

/** Returns the cached image of a download entry, pulling and importing it first when it is missing. */
export async function ensureDownloadedImage(entry: DownloadEntry, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const log = (options.log ?? rootLog).child(`image:${entry.name}`);
  const finalDir = path.join(guestlabPaths().imagesDir, imageDirName({ kind: 'download', name: entry.name, download: entry }));
  return cachedOrMade(finalDir, options, log, {
    making: 'importing',
    read: async () => {
      const manifest = await readManifest(finalDir);
      if (!manifest) return undefined;
      if (manifest.files) await ensureVerified(entry.name, finalDir, imageFilesOf(manifest), manifest.files, log);
      return builtImageOf(entry.name, finalDir, manifest, 'download', undefined);
    },
    make: () => importInto(entry, finalDir, log, options.signal),
  });
}

/** Pulls the entry's disk (once, verified) and seals it as an image in `finalDir`. */
async function importInto(entry: DownloadEntry, finalDir: string, log: Logger, signal: AbortSignal | undefined): Promise<void> {
  const started = Date.now();
  const pulled = await pullFile(
    { name: entry.name, url: entry.url, digest: entry.digest, checksums: entry.checksums },
    { cacheDir: guestlabPaths().cacheDir, signal, onProgress: progressReporter(log, entry.name) },
  );
  log.info(`${pulled.downloaded ? 'downloaded' : 'found'} ${entry.url} (${(pulled.bytes / MiB).toFixed(0)} MiB, ${formatDigest(pulled.digest)})`);
  const work = `${finalDir}.tmp-${process.pid}`;
  await fs.rm(work, { recursive: true, force: true });
  await makePrivateDir(work);
  try {
    const disk = path.join(work, IMAGE_FILES.disk);
    await importDisk(entry, pulled.path, disk, signal);
    const manifest: ImageManifest = {
      name: entry.name,
      recipeHash: downloadHash(entry),
      suite: entry.release,
      kernelVersion: '',
      cmdline: '',
      boot: 'firmware',
      firmware: entry.firmware,
      download: { url: entry.url, digest: formatDigest(pulled.digest), file: pulled.path },
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - started,
      diskBytes: (await fs.stat(disk)).size,
      files: await digestFiles(work, FIRMWARE_FILES),
    };
    await seal(work, finalDir, manifest, FIRMWARE_FILES);
    log.info(`imported ${entry.name} in ${(manifest.buildMs / 1000).toFixed(1)}s: ${finalDir}`);
  } catch (error) {
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
}


/**
 * Checks a downloaded disk and puts it in the image directory as qcow2: a qcow2 is hard-linked (or
 * copied across file systems), a raw disk converted. A qcow2 that names a backing or data file is
 * refused: opened as a guest's base, it would hand the guest a host file of the image's choosing.
 */
async function importDisk(entry: DownloadEntry, downloaded: string, disk: string, signal: AbortSignal | undefined): Promise<void> {
  // Probing the format is safe here: qemu-img only reads the header, and the result is checked.
  const info = await diskInfo(downloaded, signal);
  const where = `image ${entry.name} (${entry.source})`;
  if (info.format !== entry.format) {
    throw new ImageBuildError(`The download of ${where} is a ${info.format ?? 'unknown'} disk, but its entry says format: ${entry.format}. Set format: ${info.format === 'qcow2' || info.format === 'raw' ? info.format : 'to what the file is'} (or convert it with qemu-img convert -O qcow2).`);
  }
  if (entry.format === 'raw') {
    await convertDisk({ file: downloaded, format: 'raw' }, { file: disk, format: 'qcow2' }, signal);
    return;
  }
  const external = info.externalFile;
  if (external !== undefined) {
    throw new ImageBuildError(`The download of ${where} is a qcow2 that refers to another file (${external}); guestlab refuses it, since the guest would read that host file. Flatten it with qemu-img convert -O qcow2 and point the entry at the result.`);
  }
  await fs.link(downloaded, disk).catch(async (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EXDEV' && error.code !== 'EPERM') throw error;
    await fs.copyFile(downloaded, disk);
  });
}

/** Progress of a download: a bar redrawn on a terminal, a log line every 10 s otherwise. */
function progressReporter(log: Logger, name: string): (progress: DownloadProgress) => void {
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
