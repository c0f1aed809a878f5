// What mmdebstrap's customize hook does to a recipe's root filesystem: the recipe's files and
// commands, per-guest identity removed, and the offline apt repository. Pure: the script as text.
import path from 'node:path';
import { AGENT_PATH } from '../agent/unit.ts';
import { quoteArg } from '../util/shell-quote.ts';
import type { ImageRecipe } from './recipe.ts';

export const FSTAB = 'LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n';

/** The agent binary's name in the build's files directory. */
export const AGENT_FILE = 'guestlab-agent';

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

/**
 * An image booted directly (guestlab's own kernel command line and initramfs) never uses Debian's
 * initramfs, and making one costs each build tens of seconds of mkinitramfs. mmdebstrap's essential
 * hook (with the root directory as $1, before the kernel and initramfs-tools are installed) diverts
 * update-initramfs to a no-op; the customize hook puts the real one back (UNDIVERT_INITRAMFS), so
 * that a kernel installed later in a guest gets its initramfs as usual.
 */
const UPDATE_INITRAMFS = '/usr/sbin/update-initramfs';
export const DIVERT_INITRAMFS_HOOK = [
  `chroot "$1" dpkg-divert --quiet --local --rename --divert ${UPDATE_INITRAMFS}.guestlab-build --add ${UPDATE_INITRAMFS}`,
  `mkdir -p "$1"/usr/sbin && printf '#!/bin/sh\\nexit 0\\n' > "$1"${UPDATE_INITRAMFS} && chmod 0755 "$1"${UPDATE_INITRAMFS}`,
].join(' && ');
const UNDIVERT_INITRAMFS = [`rm -f "$root"${UPDATE_INITRAMFS}`, `chroot "$root" dpkg-divert --quiet --local --rename --remove ${UPDATE_INITRAMFS}`];

/** The customize hook mmdebstrap runs with the root directory as $1. */
export function customizeScript(recipe: ImageRecipe, filesDir: string): string {
  const lines = ['#!/bin/sh', 'set -eu', 'root="$1"'];
  if (recipe.boot !== 'firmware') lines.push(...UNDIVERT_INITRAMFS);
  const put = (source: string, target: string, mode: number) =>
    lines.push(`install -D -m ${mode.toString(8).padStart(4, '0')} ${quoteArg(source)} "$root"${quoteArg(target)}`);
  put(path.join(filesDir, 'fstab'), '/etc/fstab', 0o644);
  recipe.files.forEach((file, i) => put(path.join(filesDir, String(i)), file.path, file.mode));
  if (recipe.features.includes('agent')) put(path.join(filesDir, AGENT_FILE), AGENT_PATH, 0o755);
  // Every guest gets its own host key from cloud-init, and its own machine-id at first boot.
  lines.push('rm -f "$root"/etc/ssh/ssh_host_*', ': > "$root/etc/machine-id"', 'rm -f "$root/var/lib/dbus/machine-id"');
  for (const command of recipe.commands) lines.push(`chroot "$root" /bin/sh -ec ${quoteArg(command)}`);
  // Last, so that it sees what the commands installed or removed.
  if (recipe.offlinePackages.length) {
    lines.push(`chroot "$root" /bin/sh -ec ${quoteArg(OFFLINE_REPO_SCRIPT)} guestlab-offline-apt ${recipe.offlinePackages.map(quoteArg).join(' ')}`);
  }
  return lines.join('\n') + '\n';
}
