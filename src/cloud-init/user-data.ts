// Pure rendering of the NoCloud seed files. The generated #cloud-config sets up one user with a
// per-guest client key, pins a per-guest host key, installs the guest agent on an image without
// one, and merges in the spec's cloudConfig.
import { stringify } from 'yaml';
import { AGENT_PATH, AGENT_UNIT, AGENT_UNIT_NAME, AGENT_UNIT_PATH } from '../agent/unit.ts';
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
  /**
   * The guest agent's binary, for an image that has no agent of its own: cloud-init installs and
   * starts it (agentCloudConfig). It is built for the host, so only for a guest of its architecture.
   */
  agent?: { binary: Buffer } | undefined;
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
    ...(input.agent ? agentCloudConfig() : {}),
  };
}

/**
 * The agent binary's name on the seed ISO, beside user-data (writeSeedIso puts it there; NoCloud
 * reads only its own files). Not in user-data: cloud-init parses user-data with a pure-Python YAML
 * parser, and half a megabyte of base64 in it cost about 12 s of a TCG boot.
 */
export const AGENT_SEED_FILE = 'guestlab-agent';

/**
 * Installs and starts the agent, as root from runcmd: the seed volume (label cidata, which
 * cloud-init has unmounted again by now) mounted read-only in a temporary directory, the binary
 * copied from it with install(1), which unlinks the old file before it writes the new one, so it
 * replaces a running agent's binary too (a disk made from one of guestlab's images runs one), and
 * `restart` (rather than `enable --now`) replaces such a running agent with this one, the version
 * this host's guestlab speaks. No daemon-reload unless systemd holds an older copy of the unit
 * (NeedDaemonReload: a disk that had an agent already): a reload takes 5 to 7 s under TCG, and
 * `enable` does one unless told not to; a unit systemd has not loaded yet is read from disk when it
 * is started.
 *
 * Only under systemd, the agent's supervisor (the unit restarts it, and starts it early in later
 * boots): without it (Alpine's OpenRC) nothing is started. A failure is written to cloud-init's
 * output but does not fail cloud-init: guestlab then runs commands over SSH, as it does when an
 * image's own agent does not answer.
 */
const AGENT_START = [
  'if [ -d /run/systemd/system ]; then',
  '  seed=$(mktemp -d)',
  '  dev=$(blkid -t LABEL=cidata -o device 2>/dev/null | head -n 1)',
  '  [ -n "$dev" ] || dev=$(blkid -t LABEL=CIDATA -o device 2>/dev/null | head -n 1)',
  '  if [ -n "$dev" ] && mount -o ro "$dev" "$seed"; then',
  `    install -D -m 0755 "$seed/${AGENT_SEED_FILE}" ${AGENT_PATH}; installed=$?`,
  '    umount "$seed"',
  '  else installed=1; fi',
  '  rmdir "$seed"',
  `  { [ "$installed" = 0 ] &&`,
  `    { [ "$(systemctl show -p NeedDaemonReload --value ${AGENT_UNIT_NAME})" != yes ] || systemctl daemon-reload; } &&`,
  `    systemctl --no-reload enable ${AGENT_UNIT_NAME} && systemctl restart ${AGENT_UNIT_NAME}; } ||`,
  '    echo "guestlab: the guest agent was not started; guestlab runs commands over SSH" >&2',
  'fi',
].join('\n');

/**
 * The guest agent on an image that lacks it: guestlab's unit, then AGENT_START (the binary itself
 * travels on the seed ISO as AGENT_SEED_FILE).
 *
 * Started from runcmd rather than bootcmd. bootcmd would be earlier, but it runs before write_files
 * in the same stage (so on the first boot there would be no unit yet to start) and at every boot
 * (where the enabled unit starts it anyway). runcmd runs once per instance, in cloud-init's last
 * stage, after write_files: it is done before `cloud-init status --wait` returns, and guestlab
 * connects to this agent only then (commands go over SSH until cloud-init has run). runcmd lists
 * are merged with the spec's (mergeCloudConfig), guestlab's entry first.
 */
export function agentCloudConfig(): { write_files: Record<string, unknown>[]; runcmd: string[] } {
  return {
    write_files: [{ path: AGENT_UNIT_PATH, owner: 'root:root', permissions: '0644', content: AGENT_UNIT }],
    runcmd: [AGENT_START],
  };
}

/** Checks the agent binary a seed carries. */
export function checkAgentBinary(agent: SeedInput['agent']): void {
  if (agent !== undefined && (!Buffer.isBuffer(agent.binary) || agent.binary.length === 0)) {
    throw new TypeError('Expected `agent.binary` to be the guest agent\'s binary, a non-empty Buffer');
  }
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
  checkAgentBinary(input.agent);
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
