// guestlab's own setup of a guest without cloud-init: the login user, its key, the pinned host key,
// the host name and eth0's address as QEMU fw_cfg entries, which guestlab-setup.service (in images
// with the `fw-cfg-setup` feature, images/debian-12.yaml) applies before sshd starts. A boot that
// gives cloud-init nothing to do then runs with `cloud-init=disabled`: no Python on the critical path.
import path from 'node:path';
import { writePrivateFile } from '../util/fs.ts';

/** The fw_cfg name prefix the guest's setup script reads under /sys/firmware/qemu_fw_cfg/by_name/. */
export const FW_CFG_PREFIX = 'opt/org.guestlab/';
/**
 * Appended to the kernel command line of a boot that leaves cloud-init off: ifupdown goes too
 * (guestlab-net.service sets eth0's fixed address; ifupdown-pre waits for udev to settle first).
 */
export const CLOUD_INIT_OFF = 'cloud-init=disabled systemd.mask=networking.service systemd.mask=ifupdown-pre.service';

/**
 * eth0 on QEMU's user-mode network, as an `ip -batch` file (guestlab-net.service): the address its
 * DHCP server would give, the gateway; DNS is 10.0.2.3.
 */
const USER_NET_ETH0 = 'link set lo up\naddr add 10.0.2.15/24 dev eth0\nlink set eth0 up\nroute add default via 10.0.2.2\n';
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
const HOST_NAME = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

export interface SetupInput {
  hostname: string;
  user: string;
  /** OpenSSH public key line of the per-guest client key. */
  authorizedKey: string;
  hostKey: { privateKey: string; publicKey: string };
}

/** One `-fw_cfg name=...,file=...` entry. Files, never `string=`: the host key must not be in QEMU's argv. */
export interface FwCfgEntry {
  name: string;
  file: string;
}

/**
 * Whether this boot can leave cloud-init off: the image applies guestlab's setup itself and QEMU
 * gives it the kernel command line (direct kernel boot), and the spec gives cloud-init nothing to do
 * (no cloudConfig, not even `{}`, and no private networks, whose addresses come through cloud-init).
 */
export function cloudInitNeeded(image: { boot: 'kernel' | 'firmware'; features: readonly string[] }, spec: { cloudConfig?: unknown; networks: readonly unknown[] }): boolean {
  if (image.boot !== 'kernel' || !image.features.includes('fw-cfg-setup')) return true;
  return spec.cloudConfig !== undefined || spec.networks.length > 0;
}

/** The entries' contents by name (pure); the guest checks user and host name the same way. */
export function setupEntries(input: SetupInput): Record<string, string> {
  if (!USER_NAME.test(input.user)) throw new TypeError(`Expected \`user\` to be a Linux user name (lower case, up to 32 characters), got ${JSON.stringify(input.user)}`);
  if (!HOST_NAME.test(input.hostname)) throw new TypeError(`Expected the guest's name to be a host name (letters, digits and inner dashes), got ${JSON.stringify(input.hostname)}`);
  return {
    user: `${input.user}\n`,
    hostname: `${input.hostname}\n`,
    authorized_keys: `${input.authorizedKey.trim()}\n`,
    ssh_host_ed25519_key: input.hostKey.privateKey,
    'ssh_host_ed25519_key.pub': `${input.hostKey.publicKey.trim()}\n`,
    eth0: USER_NET_ETH0,
  };
}

/** Writes each entry as a 0600 file in `dir` (the instance directory's own, 0700) and returns QEMU's entries. */
export async function writeSetupEntries(dir: string, input: SetupInput): Promise<FwCfgEntry[]> {
  const entries: FwCfgEntry[] = [];
  for (const [name, content] of Object.entries(setupEntries(input))) {
    const file = path.join(dir, `fw_cfg.${name}`);
    await writePrivateFile(file, content);
    entries.push({ name: `${FW_CFG_PREFIX}${name}`, file });
  }
  return entries;
}
