// Building a recipe's image from Debian packages: mmdebstrap -> ext4 -> read-only qcow2, plus the
// image's own kernel and initrd for direct kernel boot, or (recipe boot: firmware) a partitioned
// disk that carries its own bootloader (firmware-disk.ts). Needs root and the host's build tools.
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { HostRequirementError, ImageBuildError } from '../errors.ts';
import { findBootloaderTools } from '../host/firmware.ts';
import { DEBIAN_PACKAGES, probeHost, requireTool } from '../host/probe.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { convertDisk } from '../disk/qemu-img.ts';
import { makePrivateDir } from '../util/fs.ts';
import { run } from '../util/run.ts';
import { quoteArg } from '../util/shell-quote.ts';
import { cachedOrMade, imageDirName, type EnsureImageOptions } from './cache.ts';
import { buildAgent } from '../agent/build.ts';
import { writeInitramfs } from './initramfs.ts';
import { AGENT_FILE, customizeScript, DIVERT_INITRAMFS_HOOK, FSTAB } from './customize.ts';
import { digestFiles, ensureVerified } from './digest.ts';
import { assembleFirmwareDisk } from './firmware-disk.ts';
import { builtImageOf, IMAGE_FILES, imageFilesOf, readManifest, sealImage, type BuiltImage, type ImageManifest } from './image-dir.ts';
import { recipeHash, type ImageRecipe } from './recipe.ts';

/** mmdebstrap's hook directory that runs dpkg under eatmydata (Debian's mmdebstrap package ships it). */
const EATMYDATA_HOOK = '/usr/share/mmdebstrap/hooks/eatmydata';

/** Returns the cached image of a recipe, building it first when it is missing. */
export async function ensureImageFromRecipe(recipe: ImageRecipe, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const log = (options.log ?? rootLog).child(`image:${recipe.name}`);
  const finalDir = path.join(guestlabPaths().imagesDir, imageDirName(recipe));
  return cachedOrMade(finalDir, options, log, {
    making: 'building',
    read: () => readBuiltImage(recipe, finalDir, log),
    make: () => buildInto(recipe, finalDir, log, options.signal),
  });
}

async function readBuiltImage(recipe: ImageRecipe, dir: string, log: Logger): Promise<BuiltImage | undefined> {
  const manifest = await readManifest(dir);
  if (!manifest) return undefined;
  // Images built before digests were recorded were built on this host and are trusted as they are.
  if (manifest.files) await ensureVerified(recipe.name, dir, imageFilesOf(manifest), manifest.files, log);
  return builtImageOf(recipe.name, dir, manifest, 'recipe', kernelCmdline(recipe));
}

export function kernelCmdline(recipe: ImageRecipe): string {
  return `root=LABEL=root ro ${recipe.cmdline}`;
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
    // The guest agent, compiled here (static: one binary serves every Debian release).
    if (recipe.features.includes('agent')) await fs.copyFile(await buildAgent(guestlabPaths().agentDir), path.join(filesDir, AGENT_FILE));
    const hook = path.join(work, 'customize.sh');
    await fs.writeFile(hook, customizeScript(recipe, filesDir), { mode: 0o700 });
    const bootDir = path.join(work, 'boot');
    const tarball = path.join(work, 'rootfs.tar');

    step(1, `bootstrapping ${recipe.suite} from ${recipe.mirror} with mmdebstrap`);
    // dpkg syncs every file it unpacks; the tree is thrown away once it is an image, so mmdebstrap's
    // own eatmydata hook (where the host's mmdebstrap has it) lets those syncs return at once.
    const eatmydata = (await fs.access(path.join(EATMYDATA_HOOK, 'extract.sh')).then(() => true, () => false)) ? [`--hook-dir=${EATMYDATA_HOOK}`] : [];
    await run(
      mmdebstrap,
      [
        '--variant=apt',
        ...eatmydata,
        ...(firmware ? [] : [`--essential-hook=${DIVERT_INITRAMFS_HOOK}`]),
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
    const bootFiles = await fs.readdir(bootDir);
    const kernelFile = bootFiles.filter((f) => f.startsWith('vmlinuz-')).sort().at(-1);
    // Only an image that boots through firmware has Debian's initrd (see DIVERT_INITRAMFS_HOOK).
    const initrdFile = bootFiles.filter((f) => f.startsWith('initrd.img-')).sort().at(-1);
    if (!kernelFile || (firmware && !initrdFile)) {
      throw new ImageBuildError(`The image has no kernel${firmware ? ' or initrd' : ''} in /boot (found: ${bootFiles.join(', ') || 'nothing'}); does the recipe's \`kernel\` package "${recipe.kernel}" install one?`);
    }
    // A kernel booted directly gets guestlab's initramfs, made from this tree's modules; one that
    // boots through firmware keeps Debian's (its bootloader may face other disks).
    const ownInitrd = path.join(work, 'guestlab-initrd.img');
    if (!firmware) {
      const modules = await writeInitramfs({ rootfs, kernelVersion: kernelFile.replace(/^vmlinuz-/, ''), output: ownInitrd, initDir: guestlabPaths().agentDir, scratch: work });
      log.debug(`initramfs: guestlab-init and ${modules.join(', ') || 'no modules (all built in)'}`);
    }
    await fs.rm(rootfs, { recursive: true, force: true });

    step(3, 'extracting kernel and initrd');
    await fs.rename(path.join(bootDir, kernelFile), path.join(work, IMAGE_FILES.kernel));
    await fs.rename(firmware ? path.join(bootDir, initrdFile!) : ownInitrd, path.join(work, IMAGE_FILES.initrd));
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
      ...(recipe.features.length ? { features: recipe.features } : {}),
    };
    await sealImage(work, finalDir, manifest, files);
    log.info(`built ${recipe.name} in ${(manifest.buildMs / 1000).toFixed(1)}s: ${finalDir}`);
  } catch (error) {
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
    if (error instanceof ImageBuildError || error instanceof HostRequirementError) throw error;
    throw new ImageBuildError(`Building image ${recipe.name} failed: ${(error as Error).message}`, { cause: error });
  }
}
