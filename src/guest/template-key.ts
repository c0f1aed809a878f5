// A template's key: a digest of everything that changes what a saved template holds (the QEMU build,
// machine, accelerator and CPU, the image, the agent, and the spec without its name), and which
// specs may use the template cache at all (template-cache.ts).
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { agentSourceDigest } from '../agent/build.ts';
import { packageRoot } from '../config.ts';
import { readEnv } from '../env.ts';
import { probeQemu, probeQemuBuild, type HostFacts } from '../host/probe.ts';
import type { BuiltImage } from '../images/image-dir.ts';
import { HOTPLUG_PORTS, TCG_CPU_MODEL, type Accel } from '../qemu/argv.ts';
import type { ResolvedSpec } from './spec.ts';

/** Bumped whenever what a template holds, or how a clone is started from it, changes shape. */
export const TEMPLATE_FORMAT = 3;

/** Everything that changes what a template holds; its digest is the template's key. */
export interface TemplateKeyInputs {
  format: number;
  guestlab: string;
  /** The QEMU binary: its version and the digest of the file (a rebuilt QEMU is another build). */
  qemu: { version: string; digest: string };
  /** The versioned machine type (pc-q35-7.2), never the alias. */
  machine: string;
  accel: Accel;
  /** TCG's pinned model, or under KVM (-cpu host) the host CPU's model and flags. */
  cpu: string;
  image: { name: string; hash: string };
  /** The guest agent's source: downloaded images get it through cloud-init. */
  agent: string;
  /**
   * The spec without its name, its boot timeout, its mounts (a cached spec has none), its networks
   * (joined after the restore) and `internet` (how QEMU's user network treats the guest's outbound
   * connections: host configuration, not the guest's).
   */
  spec: Omit<ResolvedSpec, 'name' | 'bootTimeoutMs' | 'mounts' | 'networks' | 'internet'>;
}
/** Why a spec is not restored from the cache, or undefined when it can be. */
export function notCacheable(spec: ResolvedSpec, option: boolean | undefined): string | undefined {
  if (option === false) return 'template: false';
  if (readEnv('GUESTLAB_TEMPLATES') === false) return 'GUESTLAB_TEMPLATES=0';
  if (spec.networks.length > HOTPLUG_PORTS) return `it joins ${spec.networks.length} private networks, and a restored guest has ${HOTPLUG_PORTS} hot-plug ports for them`;
  if (spec.mounts?.length) return 'it mounts host directories (their contents are read at boot)';
  return undefined;
}

/** JSON with object keys sorted, so that equal values give equal text whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

/** The key: 32 hex digits of sha256 over the canonical inputs. */
export function templateCacheKey(inputs: TemplateKeyInputs): string {
  return createHash('sha256').update(canonicalJson(inputs)).digest('hex').slice(0, 32);
}

let version: Promise<string> | undefined;
function guestlabVersion(): Promise<string> {
  version ??= fs.readFile(path.join(packageRoot, 'package.json'), 'utf8').then((text) => String((JSON.parse(text) as { version?: unknown }).version));
  return version;
}

/** Under KVM (-cpu host) the host CPU is the guest's: its model name and flags, digested. */
async function cpuIdentity(accel: Accel): Promise<string> {
  if (accel === 'tcg') return TCG_CPU_MODEL;
  const cpuinfo = await fs.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const first = cpuinfo.split('\n\n')[0] ?? '';
  const pick = (field: string) => new RegExp(`^${field}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1] ?? '';
  return `host:${createHash('sha256').update(`${pick('vendor_id')}\n${pick('model name')}\n${pick('flags')}`).digest('hex').slice(0, 16)}`;
}

export async function templateKeyInputs(spec: ResolvedSpec, accel: Accel, machine: string, image: BuiltImage, host?: Pick<HostFacts, 'qemu'>): Promise<TemplateKeyInputs> {
  const facts = host ?? (await probeQemu());
  const { name: _name, bootTimeoutMs: _timeout, mounts: _mounts, networks: _networks, internet: _internet, ...rest } = spec;
  return {
    format: TEMPLATE_FORMAT,
    guestlab: await guestlabVersion(),
    qemu: { version: facts.qemu.version ?? 'unknown', digest: await probeQemuBuild() },
    machine,
    accel,
    cpu: await cpuIdentity(accel),
    image: { name: image.name, hash: image.hash },
    agent: await agentSourceDigest(),
    spec: rest,
  };
}

/** The first input that differs between two key input sets, as "qemu.digest" (or undefined). */
export function differingInput(a: unknown, b: unknown, prefix = ''): string | undefined {
  if (canonicalJson(a) === canonicalJson(b)) return undefined;
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const key of keys) {
      const found = differingInput((a as Record<string, unknown>)[key], (b as Record<string, unknown>)[key], `${prefix}${key}.`);
      if (found) return found;
    }
  }
  return prefix.slice(0, -1) || '(all)';
}
