import { describe, expect, test } from 'vitest';
import { assessKvm, parseCpuFlags, parseKvmModules } from '../../src/host/kvm.ts';
import { chooseAccel } from '../../src/guest/accel.ts';

const flags = (...f: string[]) => new Set(['fpu', 'sse2', ...f]);

describe('assessKvm', () => {
  test('usable with a read-write /dev/kvm and vmx', () => {
    expect(assessKvm({ devKvm: 'ok', cpuFlags: flags('vmx'), kvmModules: ['kvm_intel', 'kvm'] }).usable).toBe(true);
  });

  test('usable with svm (AMD)', () => {
    expect(assessKvm({ devKvm: 'ok', cpuFlags: flags('svm'), kvmModules: ['kvm_amd'] }).usable).toBe(true);
  });

  test('not usable when /dev/kvm is served by kvm_pvm on a CPU without vmx/svm', () => {
    const result = assessKvm({ devKvm: 'ok', cpuFlags: flags(), kvmModules: ['kvm_pvm', 'kvm'] });
    expect(result.usable).toBe(false);
    expect(result.reason).toMatch(/no vmx\/svm/);
    expect(result.reason).toMatch(/kvm_pvm/);
  });

  test('not usable without /dev/kvm, saying which module to load', () => {
    const result = assessKvm({ devKvm: 'missing', cpuFlags: flags('vmx'), kvmModules: [] });
    expect(result).toEqual({ usable: false, reason: expect.stringMatching(/modprobe kvm_intel/) });
  });

  test('not usable without access, saying how to get it', () => {
    expect(assessKvm({ devKvm: 'no-access', cpuFlags: flags('vmx'), kvmModules: ['kvm_intel'] }).reason).toMatch(/kvm group|udev/);
  });
});

describe('chooseAccel', () => {
  const usable = { usable: true, reason: 'ok' };
  const unusable = { usable: false, reason: 'no vmx' };
  test('auto picks KVM where usable, TCG otherwise', () => {
    expect(chooseAccel('auto', usable)).toBe('kvm');
    expect(chooseAccel('auto', unusable)).toBe('tcg');
  });
  test('tcg is always possible', () => {
    expect(chooseAccel('tcg', usable)).toBe('tcg');
  });
  test('kvm on a host without it is an error with the reason', () => {
    expect(() => chooseAccel('kvm', unusable)).toThrow(/KVM is not usable: no vmx/);
  });
});

describe('parsers', () => {
  test('cpu flags from /proc/cpuinfo', () => {
    expect(parseCpuFlags('processor\t: 0\nflags\t\t: fpu vme vmx\nbugs\t: x\n')).toEqual(new Set(['fpu', 'vme', 'vmx']));
  });
  test('kvm modules from /proc/modules', () => {
    expect(parseKvmModules('kvm_pvm 123 0 - Live 0x0\nkvm 1 1 kvm_pvm, Live 0x0\nfuse 1 1 - Live\n')).toEqual(['kvm_pvm', 'kvm']);
  });
});
