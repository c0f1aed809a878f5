// GuestSpec: what a test asks for. Validated once, here, with messages naming option and value.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { checkCloudConfig } from '../cloud-init/user-data.ts';
import { UnknownFixtureError } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { exists } from '../util/fs.ts';
import { describeValue, expectOneOf, expectPositiveInteger, expectString, isPlainObject } from '../util/validate.ts';
import { loadYamlFile } from '../util/yaml-file.ts';
import type { MountSpec, ResolvedMount } from '../mounts/mount-spec.ts';

export interface GuestSpec {
  /** Catalog name, e.g. 'debian-12'. */
  image: string;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Guest memory in MiB (default 1024). */
  memoryMiB?: number;
  /** Merged into the generated #cloud-config (packages, write_files, runcmd, bootcmd, users...). */
  cloudConfig?: Record<string, unknown>;
  /** Guest hostname (default: image name plus a random suffix). */
  name?: string;
  /** Accelerator (default 'auto': KVM where usable, TCG otherwise). */
  accel?: 'auto' | 'kvm' | 'tcg';
  /** From QEMU start to cloud-init done (default 120 s under KVM, 600 s under TCG). */
  bootTimeoutMs?: number;
  /** Login user created by cloud-init (default 'guestlab'), with passwordless sudo. */
  user?: string;
  /**
   * Private networks to join (by name; see createNetwork): one extra NIC each, eth1 onwards, with a
   * static address from the network's subnet (or the one given), and every other member in /etc/hosts.
   */
  networks?: (string | { name: string; address?: string })[];
  /**
   * The firmware QEMU boots with: 'bios' (SeaBIOS) or 'uefi' (OVMF). Default: the image's (bios
   * for recipes; a download entry may say uefi). An image that boots its kernel directly boots it
   * under either; one with its own bootloader needs a bootloader for that firmware.
   */
  firmware?: 'bios' | 'uefi';
  /**
   * Host directories shown read-only in the guest: `[{ host: './dist', guest: '/mnt/dist' }]`. Each
   * is a snapshot of the directory taken when the guest starts (an ext4 image on a read-only disk);
   * vm.mount() adds one at run time, and mounting again shows later changes.
   */
  mounts?: MountSpec[];
  /**
   * false: the guest opens no connection out of its user-mode network, neither to the internet nor
   * to the host (10.0.2.2 reaches the host's 127.0.0.1 otherwise). SSH, vm.forward() and the
   * command channel work as before: they come in from the host. Default true.
   */
  internet?: boolean;
}

export interface ResolvedSpec {
  image: string;
  cpus: number;
  memoryMiB: number;
  cloudConfig: Record<string, unknown> | undefined;
  name: string;
  accel: 'auto' | 'kvm' | 'tcg';
  bootTimeoutMs: number | undefined;
  user: string;
  networks: { name: string; address: string | undefined }[];
  /** Undefined: the image's default firmware. */
  firmware: 'bios' | 'uefi' | undefined;
  /** Host directories checked by specFrom() (they must exist); undefined: none. */
  mounts?: ResolvedMount[] | undefined;
  /** False: QEMU's user-mode network is restricted (restrict=on); left out of JSON when true. */
  internet?: false | undefined;
}

const SPEC_KEYS = ['image', 'cpus', 'memoryMiB', 'cloudConfig', 'name', 'accel', 'bootTimeoutMs', 'user', 'networks', 'firmware', 'mounts', 'internet'] as const;
const NETWORK = /^[a-z][a-z0-9-]{0,30}$/;
const HOSTNAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const USERNAME = /^[a-z_][a-z0-9_-]{0,30}$/;

export { UnknownFixtureError };

/** The name of a spec file, fixtures/NAME.yaml. */
export const FIXTURE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export const DEFAULT_BOOT_TIMEOUT_MS = { kvm: 120_000, tcg: 600_000 } as const;

export function resolveSpec(spec: GuestSpec): ResolvedSpec {
  if (!isPlainObject(spec)) throw new TypeError(`Expected a guest spec object such as { image: 'debian-12' }, got ${describeValue(spec)}`);
  for (const key of Object.keys(spec)) {
    if (!(SPEC_KEYS as readonly string[]).includes(key)) {
      throw new TypeError(`Unknown guest spec option \`${key}\`; known options: ${SPEC_KEYS.join(', ')}`);
    }
  }
  const image = expectString('image', spec.image);
  if (spec.mounts !== undefined && !Array.isArray(spec.mounts)) throw new TypeError(`Expected \`mounts\` to be an array of { host, guest }, got ${describeValue(spec.mounts)}`);
  const name = spec.name === undefined ? defaultName(image) : expectString('name', spec.name, HOSTNAME, 'use lowercase letters, digits and inner hyphens (a hostname), at most 63 characters');
  if (spec.cloudConfig !== undefined && !isPlainObject(spec.cloudConfig)) {
    throw new TypeError(`Expected \`cloudConfig\` to be a plain object of cloud-config keys, got ${describeValue(spec.cloudConfig)}`);
  }
  const user = spec.user === undefined ? 'guestlab' : expectString('user', spec.user, USERNAME, 'use a lowercase Unix user name');
  // Here and not only when the seed is written: after the sweep, an image build and a budget lease.
  if (spec.cloudConfig) checkCloudConfig(spec.cloudConfig, user);
  return {
    image,
    cpus: spec.cpus === undefined ? 1 : expectPositiveInteger('cpus', spec.cpus, 64),
    memoryMiB: spec.memoryMiB === undefined ? 1024 : expectPositiveInteger('memoryMiB', spec.memoryMiB, 1024 * 1024),
    cloudConfig: spec.cloudConfig,
    name,
    accel: spec.accel === undefined ? 'auto' : expectOneOf('accel', spec.accel, ['auto', 'kvm', 'tcg'] as const),
    bootTimeoutMs: spec.bootTimeoutMs === undefined ? undefined : expectPositiveInteger('bootTimeoutMs', spec.bootTimeoutMs),
    user,
    networks: resolveNetworks(spec.networks),
    // Last, and left out of JSON when unset: template keys of specs without it stay as they were.
    firmware: spec.firmware === undefined ? undefined : expectOneOf('firmware', spec.firmware, ['bios', 'uefi'] as const),
    ...(resolveInternet(spec.internet) ? {} : { internet: false as const }),
  };
}

function resolveInternet(value: unknown): boolean {
  if (value === undefined || value === true) return true;
  if (value === false) return false;
  throw new TypeError(`Expected \`internet\` to be true or false, got ${describeValue(value)}`);
}

function resolveNetworks(value: GuestSpec['networks']): ResolvedSpec['networks'] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new TypeError(`Expected \`networks\` to be a list of network names or { name, address } objects, got ${describeValue(value)}`);
  const out = value.map((entry, i) => {
    const hint = 'use a lowercase letter, then letters, digits or hyphens (at most 31)';
    if (typeof entry === 'string') return { name: expectString(`networks[${i}]`, entry, NETWORK, hint), address: undefined };
    if (!isPlainObject(entry)) throw new TypeError(`Expected \`networks[${i}]\` to be a network name or { name, address }, got ${describeValue(entry)}`);
    const unknown = Object.keys(entry).filter((k) => k !== 'name' && k !== 'address');
    if (unknown.length) throw new TypeError(`Unknown option \`networks[${i}].${unknown[0]}\`; known: name, address`);
    return {
      name: expectString(`networks[${i}].name`, entry.name, NETWORK, hint),
      address: entry.address === undefined ? undefined : expectString(`networks[${i}].address`, entry.address, /^\d{1,3}(\.\d{1,3}){3}$/, 'use an IPv4 address such as 10.77.1.20'),
    };
  });
  const names = out.map((n) => n.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new TypeError(`\`networks\` names ${twice} twice; a guest joins a network once`);
  return out;
}

function defaultName(image: string): string {
  const base = image.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 50) || 'guest';
  return `${base}-${randomBytes(3).toString('hex')}`;
}

/** Load fixtures/NAME.yaml as a GuestSpec; errors name the file and line. */
export async function loadFixture(fixture: string, dirs = guestlabPaths().fixtureDirs): Promise<GuestSpec> {
  const candidates = FIXTURE_NAME.test(fixture)
    ? dirs.flatMap((dir) => [path.join(dir, `${fixture}.yaml`), path.join(dir, `${fixture}.yml`)])
    : [];
  for (const file of candidates) {
    if (!(await exists(file))) continue;
    const yaml = await loadYamlFile(file);
    if (!isPlainObject(yaml.data)) throw yaml.error([], 'must be a mapping of guest spec options (image, cpus, memoryMiB, cloudConfig, ...)');
    try {
      resolveSpec(yaml.data as unknown as GuestSpec);
    } catch (error) {
      const key = /`([A-Za-z]+)/.exec((error as Error).message)?.[1];
      throw yaml.error(key && key in yaml.data ? [key] : [], (error as Error).message);
    }
    return yaml.data as unknown as GuestSpec;
  }
  const known = new Set<string>();
  for (const dir of dirs) {
    for (const entry of await fs.readdir(dir).catch(() => [] as string[])) {
      const m = /^(.+)\.ya?ml$/.exec(entry);
      if (m?.[1]) known.add(m[1]);
    }
  }
  throw new UnknownFixtureError(fixture, [...known].sort(), dirs);
}
