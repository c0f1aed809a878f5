// Which accelerator a guest runs on: KVM where the host has it usable, TCG otherwise.
import { HostRequirementError } from '../errors.ts';
import type { Accel } from '../qemu/argv.ts';

export function chooseAccel(requested: 'auto' | 'kvm' | 'tcg', kvm: { usable: boolean; reason: string }): Accel {
  if (requested === 'tcg') return 'tcg';
  if (kvm.usable) return 'kvm';
  if (requested === 'kvm') throw new HostRequirementError(`accel: 'kvm' was requested but KVM is not usable: ${kvm.reason}`);
  return 'tcg';
}
