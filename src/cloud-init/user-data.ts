// Pure rendering of the NoCloud seed files. The generated #cloud-config sets up one user with a
// per-guest client key, pins a per-guest host key, and merges in the spec's cloudConfig.
import { stringify } from 'yaml';
import { isPlainObject } from '../util/validate.ts';

export interface SeedInput {
  instanceId: string;
  hostname: string;
  user: string;
  /** OpenSSH public key line of the per-guest client key. */
  authorizedKey: string;
  /** The per-guest ed25519 host key, OpenSSH format. */
  hostKey: { privateKey: string; publicKey: string };
  cloudConfig?: Record<string, unknown> | undefined;
  /** Static addresses on private networks; eth0 (user-mode networking) keeps DHCP. */
  privateNics?: { interfaceName: string; mac: string; address: string; prefixLength: number }[] | undefined;
}

/** Keys guestlab owns: a cloudConfig that sets them would break the host-key pin. */
export const RESERVED_CLOUD_CONFIG_KEYS = ['ssh_keys', 'ssh_deletekeys', 'ssh_genkeytypes'] as const;

export function baseCloudConfig(input: SeedInput): Record<string, unknown> {
  return {
    hostname: input.hostname,
    fqdn: `${input.hostname}.guestlab.internal`,
    prefer_fqdn_over_hostname: false,
    // Writes the hostname into /etc/hosts, so sudo and friends can resolve it.
    manage_etc_hosts: true,
    locale: 'C.UTF-8',
    users: [
      {
        name: input.user,
        gecos: 'guestlab test user',
        shell: '/bin/bash',
        sudo: 'ALL=(ALL) NOPASSWD:ALL',
        lock_passwd: true,
        ssh_authorized_keys: [input.authorizedKey],
      },
    ],
    disable_root: true,
    ssh_deletekeys: true,
    // Only the key type injected below, so nothing is generated: the served key is the pinned one.
    ssh_genkeytypes: ['ed25519'],
    ssh_keys: {
      ed25519_private: input.hostKey.privateKey,
      ed25519_public: input.hostKey.publicKey,
    },
    // Work a throwaway test guest does not need, each up to 1.5 s of Python under TCG. A cloudConfig
    // that sets these keys wins: the disk never grows (the overlay is the image's size), the host key
    // is pinned on the host rather than read off the console, and grub-dpkg only records where GRUB
    // would be reinstalled on a package upgrade.
    growpart: { mode: 'off' },
    resize_rootfs: false,
    ssh: { emit_keys_to_console: false },
    grub_dpkg: { enabled: false },
  };
}

/**
 * What a spec's cloudConfig may not do, checked by resolveSpec() before anything starts and again
 * when the seed is rendered: set a key guestlab owns, or give `users` a form that would drop or
 * redefine guestlab's login user `user` (the boot would then wait for a login that never works).
 */
export function checkCloudConfig(cloudConfig: Record<string, unknown>, user: string): void {
  for (const key of RESERVED_CLOUD_CONFIG_KEYS) {
    if (key in cloudConfig) {
      throw new TypeError(
        `\`cloudConfig.${key}\` cannot be set: guestlab injects a per-guest host key and pins it. ` +
          'Remove it from cloudConfig; read the pinned key from guest.ssh.hostKey.',
      );
    }
  }
  if (cloudConfig.users === undefined) return;
  const entries = userEntries(cloudConfig.users);
  entries.forEach((entry, i) => {
    const where = typeof cloudConfig.users === 'string' ? '`cloudConfig.users`' : `\`cloudConfig.users[${i}]\``;
    const name = typeof entry === 'string' ? entry : isPlainObject(entry) ? entry.name : undefined;
    if (typeof name !== 'string' || name === '') {
      throw new TypeError(`${where} must be 'default', a user name or a mapping with a \`name\` (cloud-init's users format), got ${JSON.stringify(entry)}`);
    }
    if (name === user) {
      throw new TypeError(
        `${where} redefines "${user}", guestlab's login user, which guestlab creates with its per-guest key and passwordless sudo. ` +
          'Give your user another name, or pick the login user\'s name with the spec\'s `user` option.',
      );
    }
  });
}

/** cloud-init's `users`: a comma-separated string of names, or a list of names and mappings. */
function userEntries(users: unknown): unknown[] {
  if (typeof users === 'string') return users.split(',').map((name) => name.trim()).filter(Boolean);
  if (Array.isArray(users)) return users;
  throw new TypeError(
    `\`cloudConfig.users\` must be a list (or a comma-separated string) of 'default', user names and { name, ... } mappings, got ${JSON.stringify(users)}; ` +
      "cloud-init's mapping form is deprecated. Write e.g. users: ['default', { name: 'alice' }].",
  );
}

/**
 * guestlab's users and the spec's in one list. A `default` entry (the image's default user) goes
 * first, once, where cloud-init's documentation puts it; then guestlab's own user, so that neither
 * `users: default` nor a list of other users can leave the guest without it; then the spec's users.
 */
function mergeUsers(base: unknown, extra: unknown): unknown[] {
  const all = [...userEntries(base ?? []), ...userEntries(extra)];
  const rest = all.filter((entry) => entry !== 'default');
  return rest.length < all.length ? ['default', ...rest] : rest;
}

/**
 * Merge a user's cloud-config into the base one: mappings merge key by key, lists are appended
 * (so `write_files`, `runcmd` add to what guestlab sets), other values replace. `users` always
 * keeps guestlab's own user (mergeUsers).
 */
export function mergeCloudConfig(base: Record<string, unknown>, extra: Record<string, unknown>, at = ''): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const here = at ? `${at}.${key}` : key;
    const current = merged[key];
    if (!at && key === 'users') merged[key] = mergeUsers(current, value);
    else if (Array.isArray(current) && Array.isArray(value)) merged[key] = [...current, ...value];
    else if (isPlainObject(current) && isPlainObject(value)) merged[key] = mergeCloudConfig(current, value, here);
    else merged[key] = value;
  }
  return merged;
}

/**
 * cloud-init reads its files with PyYAML, a YAML 1.1 parser: written as YAML 1.2, the string
 * "52:54:00:12:34:56" would reach it as a base-60 integer and "on" or "yes" as booleans. Written
 * as YAML 1.1, such strings are quoted.
 */
const YAML_11 = { version: '1.1', lineWidth: 0 } as const;

export function renderUserData(input: SeedInput): string {
  if (input.cloudConfig !== undefined && !isPlainObject(input.cloudConfig)) {
    throw new TypeError('Expected `cloudConfig` to be a plain object of cloud-config keys (packages, write_files, runcmd, ...)');
  }
  if (input.cloudConfig) checkCloudConfig(input.cloudConfig, input.user);
  const config = mergeCloudConfig(baseCloudConfig(input), input.cloudConfig ?? {});
  return '#cloud-config\n' + stringify(config, { ...YAML_11, aliasDuplicateObjects: false });
}

/**
 * NoCloud network-config (version 2) when the guest has private NICs: eth0 on DHCP as cloud-init's
 * fallback would do, and each private NIC with its static address and no gateway (the default route
 * stays on eth0). Undefined without private NICs, so that cloud-init keeps its fallback.
 */
export function renderNetworkConfig(input: Pick<SeedInput, 'privateNics'>, userNicMac: string): string | undefined {
  if (!input.privateNics?.length) return undefined;
  const ethernets: Record<string, unknown> = { eth0: { match: { macaddress: userNicMac }, dhcp4: true } };
  for (const nic of input.privateNics) ethernets[nic.interfaceName] = { match: { macaddress: nic.mac }, addresses: [`${nic.address}/${nic.prefixLength}`] };
  return stringify({ version: 2, ethernets }, YAML_11);
}

export function renderMetaData(input: Pick<SeedInput, 'instanceId' | 'hostname'>): string {
  return stringify({ 'instance-id': input.instanceId, 'local-hostname': input.hostname }, YAML_11);
}
