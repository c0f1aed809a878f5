// Whether KVM is usable. /dev/kvm alone is not enough: a paravirtual KVM module (kvm_pvm) serves
// /dev/kvm on hosts without VT-x/AMD-V, and a stock kernel hangs under it. Usable means the device
// is readable and writable AND the CPU advertises vmx or svm.

export type DevKvmState = 'missing' | 'no-access' | 'ok';

export interface KvmFacts {
  devKvm: DevKvmState;
  cpuFlags: ReadonlySet<string>;
  /** Names of loaded kernel modules whose name starts with kvm. */
  kvmModules: readonly string[];
}

export interface KvmAssessment {
  usable: boolean;
  /** Why KVM is (not) used, one sentence that ends with what to do. */
  reason: string;
}

export function assessKvm(facts: KvmFacts): KvmAssessment {
  const virt = facts.cpuFlags.has('vmx') ? 'vmx' : facts.cpuFlags.has('svm') ? 'svm' : undefined;
  const pvm = facts.kvmModules.includes('kvm_pvm');
  if (!virt) {
    return {
      usable: false,
      reason:
        'the CPU advertises no hardware virtualization (no vmx/svm in /proc/cpuinfo)' +
        (pvm ? '; /dev/kvm is served by the paravirtual kvm_pvm module, which cannot boot a stock guest kernel' : '') +
        '; guests run under TCG (software emulation), which is slower but works. Enable nested virtualization on this host for KVM.',
    };
  }
  if (facts.devKvm === 'missing') {
    return {
      usable: false,
      reason: `the CPU supports ${virt} but /dev/kvm does not exist; load the module (modprobe kvm_intel or kvm_amd) to use KVM.`,
    };
  }
  if (facts.devKvm === 'no-access') {
    return {
      usable: false,
      reason: `/dev/kvm exists but this user cannot open it read-write; add the user to the kvm group or install a udev rule (KERNEL=="kvm", MODE="0666").`,
    };
  }
  return { usable: true, reason: `/dev/kvm is read-write and the CPU advertises ${virt}.` };
}

export function parseCpuFlags(cpuinfo: string): Set<string> {
  const line = cpuinfo.split('\n').find((l) => /^flags\s*:/.test(l));
  return new Set(line ? line.replace(/^flags\s*:\s*/, '').split(/\s+/).filter(Boolean) : []);
}

export function parseKvmModules(procModules: string): string[] {
  return procModules
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((m) => m.startsWith('kvm'));
}
