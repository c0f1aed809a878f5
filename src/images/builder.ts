// Builds a bootable base image from Debian packages: mmdebstrap -> ext4 -> read-only qcow2, plus the
// image's own kernel and initrd for direct kernel boot. Written under a temporary name, renamed when
// complete, under a host-wide lock so that two builders never race and readers never see half.
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
import { resolveRecipe } from './catalog.ts';
import { digestFiles, ensureVerified, writeStamp, type FileDigests } from './digest.ts';
import { recipeHash, type ImageRecipe } from './recipe.ts';

/** Files of a built image directory. */
export const IMAGE_FILES = {
  disk: 'disk.qcow2',
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  manifest: 'manifest.json',
} as const;

/** The files whose digests the manifest records (everything but the manifest). */
export const DIGESTED_FILES = { disk: IMAGE_FILES.disk, kernel: IMAGE_FILES.kernel, initrd: IMAGE_FILES.initrd };

export interface BuiltImage {
  name: string;
  hash: string;
  dir: string;
  disk: string;
  kernel: string;
  initrd: string;
  /** Kernel command line for direct kernel boot (root= included). */
  cmdline: string;
  /** True when this call built it, false when it came from the cache. */
  built: boolean;
  buildMs: number;
}

export interface ImageManifest {
  name: string;
  recipeHash: string;
  suite: string;
  kernelVersion: string;
  cmdline: string;
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

export function imageDirName(recipe: ImageRecipe): string {
  return `${recipe.name}-${recipeHash(recipe).slice(0, 16)}`;
}

const announced = new Set<string>();

/** Returns the cached image for `name`, building it first when it is missing. */
export async function ensureImage(name: string, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const recipe = await resolveRecipe(name);
  return ensureImageFromRecipe(recipe, options);
}

export async function ensureImageFromRecipe(recipe: ImageRecipe, options: EnsureImageOptions = {}): Promise<BuiltImage> {
  const log = (options.log ?? rootLog).child(`image:${recipe.name}`);
  const { imagesDir } = guestlabPaths();
  const finalDir = path.join(imagesDir, imageDirName(recipe));
  const cached = !options.force && (await readBuiltImage(recipe, finalDir, log));
  if (cached) {
    // Once per process: CI logs show that a restored cache spared the build.
    if (!announced.has(cached.dir)) log.info(`cached build ${path.basename(cached.dir)}: no build needed`);
    announced.add(cached.dir);
    return cached;
  }

  await fs.mkdir(imagesDir, { recursive: true });
  const lock = await acquireLock(finalDir, {
    signal: options.signal,
    onWait: () => log.info('another process is building this image; waiting for it'),
  });
  try {
    // The holder we waited for may have finished the job.
    const afterWait = !options.force && (await readBuiltImage(recipe, finalDir, log));
    if (afterWait) return afterWait;
    await buildInto(recipe, finalDir, log, options.signal);
    const built = await readBuiltImage(recipe, finalDir, log);
    if (!built) throw new ImageBuildError(`The build of ${recipe.name} finished but ${finalDir} is incomplete`);
    return { ...built, built: true };
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
  if (manifest.files) await ensureVerified(recipe.name, dir, DIGESTED_FILES, manifest.files, log);
  return {
    name: recipe.name,
    hash: manifest.recipeHash,
    dir,
    disk: path.join(dir, IMAGE_FILES.disk),
    kernel: path.join(dir, IMAGE_FILES.kernel),
    initrd: path.join(dir, IMAGE_FILES.initrd),
    cmdline: kernelCmdline(recipe),
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
  const qemuImg = requireTool(host.qemuImg, DEBIAN_PACKAGES.qemuImg, 'to build images');
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
  const step = (n: number, text: string) => log.info(`[${n}/4] ${text} (${((Date.now() - started) / 1000).toFixed(1)}s)`);
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

    step(3, 'converting to qcow2');
    await run(qemuImg, ['convert', '-f', 'raw', '-O', 'qcow2', raw, path.join(work, IMAGE_FILES.disk)], { signal });
    await fs.rm(raw);

    step(4, 'extracting kernel and initrd');
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

    const disk = path.join(work, IMAGE_FILES.disk);
    const manifest: ImageManifest = {
      name: recipe.name,
      recipeHash: recipeHash(recipe),
      suite: recipe.suite,
      kernelVersion: kernelFile.replace(/^vmlinuz-/, ''),
      cmdline: kernelCmdline(recipe),
      builtAt: new Date().toISOString(),
      buildMs: Date.now() - started,
      diskBytes: (await fs.stat(disk)).size,
      files: await digestFiles(work, DIGESTED_FILES),
    };
    await fs.writeFile(path.join(work, IMAGE_FILES.manifest), JSON.stringify(manifest, null, 2) + '\n');
    // Base images are shared by every guest: nobody writes to them, overlays take the writes.
    for (const file of Object.values(IMAGE_FILES)) await fs.chmod(path.join(work, file), 0o444);
    await fs.chmod(work, 0o755);
    await fs.rm(finalDir, { recursive: true, force: true });
    await fs.rename(work, finalDir);
    await writeStamp(finalDir, DIGESTED_FILES);
    log.info(`built ${recipe.name} in ${(manifest.buildMs / 1000).toFixed(1)}s: ${finalDir}`);
  } catch (error) {
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
    if (error instanceof ImageBuildError || error instanceof HostRequirementError) throw error;
    throw new ImageBuildError(`Building image ${recipe.name} failed: ${(error as Error).message}`, { cause: error });
  }
}
