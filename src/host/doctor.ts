// `guestlab doctor`: what this host can do, and one actionable line per missing requirement.
import { guestlabPaths } from '../config.ts';
import { findBootloaderTools, findOvmf } from './firmware.ts';
import { DEBIAN_PACKAGES, freeDiskBytes, probeHost, type HostFacts, type ToolInfo } from './probe.ts';

export interface DoctorLine {
  status: 'ok' | 'info' | 'warn' | 'missing';
  text: string;
}

export interface DoctorReport {
  lines: DoctorLine[];
  /** One line per missing requirement, each saying how to fix it. */
  problems: string[];
  facts: HostFacts;
  accel: 'kvm' | 'tcg';
}

const MIN_MEMORY_MIB = 1536;
const MIN_DISK_BYTES = 5 * 1024 ** 3;
const GiB = 1024 ** 3;

export async function runDoctor(): Promise<DoctorReport> {
  const facts = await probeHost();
  const paths = guestlabPaths();
  const [imagesFree, instancesFree] = await Promise.all([freeDiskBytes(paths.imagesDir), freeDiskBytes(paths.instancesDir)]);
  const settle = (p: Promise<string>) => p.then((text) => ({ ok: true, text }), (error: Error) => ({ ok: false, text: error.message }));
  const firmware = {
    ovmf: await settle(findOvmf().then((ovmf) => ovmf.code)),
    bootloader: await settle(findBootloaderTools().then(() => '')),
  };
  return assessHost(facts, { imagesDir: paths.imagesDir, instancesDir: paths.instancesDir, imagesFree, instancesFree }, firmware);
}

/** Whether the optional firmware pieces are there: the path found, or what is missing and how to install it. */
export interface FirmwareFacts {
  ovmf: { ok: boolean; text: string };
  bootloader: { ok: boolean; text: string };
}

export interface DiskFacts {
  imagesDir: string;
  instancesDir: string;
  imagesFree: number;
  instancesFree: number;
}

/** Pure: turns probed facts into the report. */
export function assessHost(facts: HostFacts, disk: DiskFacts, firmware?: FirmwareFacts): DoctorReport {
  const lines: DoctorLine[] = [];
  const problems: string[] = [];
  const need = (info: ToolInfo, pkg: string, purpose: string) => {
    if (info.path) {
      lines.push({ status: 'ok', text: `${info.name} ${info.version ?? '(version unknown)'} at ${info.path} (${purpose})` });
    } else {
      const fix = `${info.name} not found (needed ${purpose}); install it with: apt-get install ${pkg}`;
      lines.push({ status: 'missing', text: fix });
      problems.push(fix);
    }
  };
  need(facts.qemu, DEBIAN_PACKAGES.qemu, 'to run guests');
  need(facts.qemuImg, DEBIAN_PACKAGES.qemuImg, 'for guest disks');
  need(facts.isoTool, DEBIAN_PACKAGES.isoTool, 'for cloud-init seed ISOs');
  need(facts.mmdebstrap, DEBIAN_PACKAGES.mmdebstrap, 'to build images from Debian packages');
  need(facts.mkfsExt4, DEBIAN_PACKAGES.mkfsExt4, 'to build images');
  need(facts.gcc, DEBIAN_PACKAGES.gcc, 'to compile the guest agent into images');
  if (facts.setpriv.path) {
    lines.push({ status: 'ok', text: `setpriv ${facts.setpriv.version ?? ''} at ${facts.setpriv.path} (QEMU dies with the process that started it)` });
  } else {
    lines.push({ status: 'warn', text: `setpriv not found: QEMU will not die with a killed test runner; install it with: apt-get install ${DEBIAN_PACKAGES.setpriv}` });
  }
  // Optional: only UEFI guests and recipes with `boot: firmware` need these.
  if (firmware) {
    lines.push(firmware.ovmf.ok ? { status: 'ok', text: `OVMF at ${firmware.ovmf.text} (UEFI guests)` } : { status: 'warn', text: `UEFI guests cannot start: ${firmware.ovmf.text}` });
    lines.push(firmware.bootloader.ok ? { status: 'ok', text: 'syslinux, systemd-boot, mtools, mkfs.vfat, sfdisk (images with their own bootloader)' } : { status: 'warn', text: firmware.bootloader.text });
  }
  if (facts.isRoot) lines.push({ status: 'ok', text: 'running as root: images can be built here' });
  else lines.push({ status: 'warn', text: 'not root: building an image needs root once (sudo npx guestlab image build NAME); running guests does not' });

  const accel = facts.kvm.usable ? 'kvm' : 'tcg';
  lines.push({
    status: facts.kvm.usable ? 'ok' : 'info',
    text: facts.kvm.usable ? `accelerator: KVM (${facts.kvm.reason})` : `accelerator: TCG; KVM is not used because ${facts.kvm.reason}`,
  });
  lines.push({ status: 'ok', text: `cores: ${facts.cores}` });
  if (facts.memAvailableMiB < MIN_MEMORY_MIB) {
    const fix = `only ${facts.memAvailableMiB} MiB of memory available; a guest needs at least ${MIN_MEMORY_MIB} MiB with QEMU's overhead: free memory or use a larger host`;
    lines.push({ status: 'missing', text: fix });
    problems.push(fix);
  } else {
    lines.push({ status: 'ok', text: `memory available: ${facts.memAvailableMiB} MiB` });
  }
  const places: { dir: string; free: number; what: 'images' | 'instances' }[] = [
    { dir: disk.imagesDir, free: disk.imagesFree, what: 'images' },
    { dir: disk.instancesDir, free: disk.instancesFree, what: 'instances' },
  ];
  for (const { dir, free, what } of places) {
    const text = `disk free for ${what}: ${(free / GiB).toFixed(1)} GiB at ${dir}`;
    if (free < MIN_DISK_BYTES) {
      const fix = `${text}, below ${MIN_DISK_BYTES / GiB} GiB: free space there or point ${what === 'images' ? 'GUESTLAB_CACHE_DIR' : 'GUESTLAB_INSTANCES_DIR'} elsewhere`;
      lines.push({ status: 'missing', text: fix });
      problems.push(fix);
    } else {
      lines.push({ status: 'ok', text });
    }
  }
  return { lines, problems, facts, accel };
}

export function formatDoctor(report: DoctorReport): string {
  const mark = { ok: ' ok ', info: 'info', warn: 'warn', missing: 'FAIL' } as const;
  const out = report.lines.map((line) => `[${mark[line.status]}] ${line.text}`);
  out.push(report.problems.length ? `\n${report.problems.length} requirement(s) missing:\n${report.problems.map((p) => `  - ${p}`).join('\n')}` : '\nAll requirements met.');
  return out.join('\n');
}

export interface CiImageState {
  name: string;
  hash: string;
  built: boolean;
  diskBytes?: number;
  /** Whether the manifest records digests, so that a restored copy can be verified before use. */
  digests?: boolean;
}

export interface CiFacts {
  limits: { cpus: number; memoryMiB: number; source: { cpus: string; memory: string } };
  imagesDir: string;
  images: CiImageState[];
}

export interface CiOptions {
  /** TCG is a failure, not a note: for runners that are supposed to have KVM. */
  requireKvm?: boolean;
  /** Images that must already be in the cache (restored or imported), or the run would build them. */
  requireImages?: string[];
  /** Emit GitHub Actions workflow commands (::error::, ::warning::) beside the summary. */
  github?: boolean;
}

/** Pure: the `guestlab doctor --ci` summary and its problems, from the host report and CI facts. */
export function assessCi(report: DoctorReport, facts: CiFacts, options: CiOptions = {}): { text: string; problems: string[] } {
  const problems = [...report.problems];
  const notes: string[] = [];
  const { kvm } = report.facts;
  if (!kvm.usable) {
    const why = `KVM is not usable: ${kvm.reason}`;
    if (options.requireKvm) problems.push(`${why}. On GitHub-hosted runners add the udev rule for /dev/kvm (see examples/ci/github-actions.yml); elsewhere give the job /dev/kvm`);
    else notes.push(why);
  }
  for (const name of options.requireImages ?? []) {
    const image = facts.images.find((i) => i.name === name);
    if (!image) problems.push(`image ${name} is unknown: no recipe images/${name}.yaml`);
    else if (!image.built) problems.push(`image ${name} (hash ${image.hash}) is not in ${facts.imagesDir}: restore the CI cache or run guestlab image import FILE / guestlab image build ${name}`);
  }
  const mib = (bytes: number) => `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
  const lines = [
    `guestlab doctor --ci`,
    `  accelerator : ${kvm.usable ? `KVM (${kvm.reason})` : 'TCG (software emulation; see the note below)'}`,
    `  host        : ${report.facts.cores} cores, ${report.facts.memAvailableMiB} MiB available, ${report.facts.isRoot ? 'root' : 'not root'}`,
    `  qemu        : ${report.facts.qemu.version ?? 'missing'}`,
    `  budget      : ${facts.limits.cpus} CPU (${facts.limits.source.cpus}), ${facts.limits.memoryMiB} MiB (${facts.limits.source.memory})`,
    `  image cache : ${facts.imagesDir}`,
    ...facts.images.map(
      (i) => `    ${i.name.padEnd(20)} ${i.hash}  ${i.built ? `cached, ${mib(i.diskBytes ?? 0)}${i.digests ? '' : ', no digests recorded'}` : 'not built'}`,
    ),
    ...notes.map((n) => `  note        : ${n}`),
    problems.length ? `FAIL: ${problems.length} requirement(s) missing:\n${problems.map((p) => `  - ${p}`).join('\n')}` : 'OK: all requirements met',
  ];
  if (options.github) {
    lines.push(...problems.map((p) => `::error title=guestlab doctor::${escapeWorkflowCommand(p)}`));
    lines.push(...notes.map((n) => `::warning title=guestlab doctor::${escapeWorkflowCommand(n)}`));
  }
  return { text: lines.join('\n'), problems };
}

/** GitHub workflow commands end at a newline; %, CR and LF are escaped as the runner expects. */
function escapeWorkflowCommand(text: string): string {
  return text.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}
