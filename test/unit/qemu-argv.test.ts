import { describe, expect, test } from 'vitest';
import { buildQemuArgv, HOTPLUG_PORTS, type QemuConfig } from '../../src/qemu/argv.ts';
import { parseUsernetForward } from '../../src/qemu/hmp.ts';

const base: QemuConfig = {
  name: 'web-1',
  tag: 'guestlab:instance=web-1-abcd:owner=123.456',
  accel: 'tcg', machine: 'pc-q35-7.2',
  cpus: 2,
  memoryMiB: 1024,
  disk: '/inst/disk.qcow2',
  seed: '/inst/cidata.iso',
  kernel: { kernel: '/img/vmlinuz', initrd: '/img/initrd.img', cmdline: 'root=LABEL=root ro console=ttyS0' },
  qmpSocket: '/inst/qmp.sock',
  serialLog: '/inst/serial.log',
  sshHostPort: 0,
};

function option(argv: string[], flag: string): string[] {
  return argv.flatMap((arg, i) => (arg === flag ? [argv[i + 1]!] : []));
}

describe('buildQemuArgv', () => {
  test('TCG: multi-threaded TCG and an emulated CPU, no KVM', () => {
    const argv = buildQemuArgv(base);
    expect(option(argv, '-accel')).toEqual(['tcg,thread=multi,tb-size=256']);
    expect(option(argv, '-cpu')).toEqual(['Westmere-v1']);
    // Versioned names only: an alias (q35, max) changes meaning with the QEMU version.
    expect(option(argv, '-machine')).toEqual(['pc-q35-7.2']);
    expect(argv.join(' ')).not.toMatch(/kvm/);
  });

  test('KVM: the host CPU', () => {
    const argv = buildQemuArgv({ ...base, accel: 'kvm' });
    expect(option(argv, '-accel')).toEqual(['kvm']);
    expect(option(argv, '-cpu')).toEqual(['host']);
  });

  test('no default devices, no display, sizes from the config', () => {
    const argv = buildQemuArgv(base);
    expect(argv).toContain('-nodefaults');
    expect(option(argv, '-display')).toEqual(['none']);
    expect(option(argv, '-smp')).toEqual(['2']);
    expect(option(argv, '-m')).toEqual(['1024M']);
  });

  test('virtio disk, seed, net and rng; seed read-only; overlay as qcow2', () => {
    const argv = buildQemuArgv(base);
    const devices = option(argv, '-device');
    expect(devices).toEqual(expect.arrayContaining(['virtio-blk-pci,drive=disk0', 'virtio-blk-pci,drive=seed0', 'virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56', 'virtio-rng-pci,rng=rng0']));
    const drives = option(argv, '-drive');
    expect(drives[0]).toMatch(/^if=none,id=disk0,file=\/inst\/disk\.qcow2,format=qcow2/);
    expect(drives[1]).toMatch(/file=\/inst\/cidata\.iso,format=raw,readonly=on/);
  });

  test('SSH is forwarded from 127.0.0.1 only', () => {
    const [netdev] = option(buildQemuArgv({ ...base, sshHostPort: 2222 }), '-netdev');
    expect(netdev).toBe('user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22');
    // internet: false: the guest opens nothing, forwards from the host still come in.
    expect(option(buildQemuArgv({ ...base, sshHostPort: 2222, restrictUserNet: true }), '-netdev')[0]).toBe('user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22');
  });

  test('QMP on a unix socket, serial console to a file, direct kernel boot', () => {
    const argv = buildQemuArgv(base);
    expect(option(argv, '-chardev')).toEqual([
      'socket,id=qmp0,path=/inst/qmp.sock,server=on,wait=off',
      'file,id=serial0,path=/inst/serial.log',
    ]);
    expect(option(argv, '-mon')).toEqual(['chardev=qmp0,mode=control']);
    expect(option(argv, '-kernel')).toEqual(['/img/vmlinuz']);
    expect(option(argv, '-append')).toEqual(['root=LABEL=root ro console=ttyS0']);
  });

  test('commas in paths are escaped so they cannot inject QEMU sub-options', () => {
    const argv = buildQemuArgv({ ...base, disk: '/a,format=raw/disk.qcow2' });
    expect(option(argv, '-drive')[0]).toContain('file=/a,,format=raw/disk.qcow2,format=qcow2');
  });

  test('refuses newlines in values', () => {
    expect(() => buildQemuArgv({ ...base, name: 'a\nb' })).toThrow(/newline/);
  });

  test('the guestlab tag is in the command line, for the reaper', () => {
    expect(option(buildQemuArgv(base), '-smbios')).toEqual(['type=11,value=guestlab:instance=web-1-abcd:owner=123.456']);
  });

  test('a full host disk pauses the guest with an event rather than corrupting it', () => {
    expect(option(buildQemuArgv(base), '-drive')[0]).toContain('werror=enospc');
  });

  test('firmware boot when no kernel is given', () => {
    expect(buildQemuArgv({ ...base, kernel: undefined })).not.toContain('-kernel');
  });
});

describe('buildQemuArgv: SCSI disks for mounts', () => {
  test('every guest has the virtio-scsi controller, then its empty hot-plug ports, as the last PCI devices: the devices before them keep their slots', () => {
    const ports = ['pcie-root-port,id=hp0,bus=pcie.0,chassis=1', 'pcie-root-port,id=hp1,bus=pcie.0,chassis=2', 'pcie-root-port,id=hp2,bus=pcie.0,chassis=3', 'pcie-root-port,id=hp3,bus=pcie.0,chassis=4'];
    expect(ports).toHaveLength(HOTPLUG_PORTS);
    const devices = option(buildQemuArgv(base), '-device');
    expect(devices).toEqual([
      'virtio-blk-pci,drive=disk0',
      'virtio-blk-pci,drive=seed0',
      'virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56',
      'virtio-rng-pci,rng=rng0',
      'vmgenid,guid=auto',
      'virtio-scsi-pci,id=scsi0',
      ...ports,
    ]);
    expect(option(buildQemuArgv({ ...base, extraNics: [{ id: 'lan0', mac: '52:54:00:aa:00:01', socketPath: '/inst/nic0.sock' }] }), '-device').slice(-5)).toEqual(['virtio-scsi-pci,id=scsi0', ...ports]);
    expect(option(buildQemuArgv(base), '-blockdev')).toEqual([]);
  });

  test('a SCSI disk is a read-only raw node and a scsi-hd with its serial on the controller', () => {
    const argv = buildQemuArgv({ ...base, scsiDisks: [{ id: 'glmnt0', file: '/inst/glmnt0.img', serial: 'glmnt0' }, { id: 'glmnt1', file: '/inst/a,b.img', serial: 'glmnt1' }] });
    expect(option(argv, '-blockdev')).toEqual([
      'driver=raw,node-name=glmnt0,read-only=on,file.driver=file,file.filename=/inst/glmnt0.img,file.read-only=on',
      'driver=raw,node-name=glmnt1,read-only=on,file.driver=file,file.filename=/inst/a,,b.img,file.read-only=on',
    ]);
    expect(option(argv, '-device').slice(-3 - HOTPLUG_PORTS, -HOTPLUG_PORTS)).toEqual([
      'virtio-scsi-pci,id=scsi0',
      'scsi-hd,bus=scsi0.0,drive=glmnt0,id=glmnt0,serial=glmnt0',
      'scsi-hd,bus=scsi0.0,drive=glmnt1,id=glmnt1,serial=glmnt1',
    ]);
  });

  test('ids, serials and files QEMU would refuse, or two disks with one id, are refused before QEMU runs', () => {
    const disk = { id: 'glmnt0', file: '/inst/x.img', serial: 'glmnt0' };
    const build = (...scsiDisks: (typeof disk)[]) => () => buildQemuArgv({ ...base, scsiDisks });
    expect(build({ ...disk, id: '0disk' })).toThrow(/Invalid SCSI disk id "0disk": use a letter followed by/);
    expect(build({ ...disk, id: 'a,b' })).toThrow(/Invalid SCSI disk id/);
    expect(build({ ...disk, id: 'x'.repeat(32) })).toThrow(/Invalid SCSI disk id/);
    expect(build({ ...disk, serial: 'has space' })).toThrow(/Invalid serial "has space" of SCSI disk glmnt0/);
    expect(build({ ...disk, serial: 's'.repeat(21) })).toThrow(/1 to 20 letters/);
    expect(build({ ...disk, file: 'relative.img' })).toThrow(/The image of SCSI disk glmnt0 must be an absolute path/);
    expect(build(disk, { ...disk, file: '/inst/y.img' })).toThrow('SCSI disks 0 and 1 share the id or serial "glmnt0": give each disk its own');
    expect(build(disk, { ...disk, id: 'glmnt1' })).toThrow(/SCSI disks 0 and 1 share the id or serial "glmnt0"/);
  });
});

describe('buildQemuArgv for a clone', () => {
  test('a clone resumes from the saved state and appends to its console log; a boot does neither', () => {
    const clone = buildQemuArgv({ ...base, incoming: "exec:cat '/inst/tmpl 1/vmstate'", serialAppend: true });
    expect(option(clone, '-incoming')).toEqual(["exec:cat '/inst/tmpl 1/vmstate'"]);
    expect(option(clone, '-chardev').find((c) => c.startsWith('file,'))).toBe('file,id=serial0,path=/inst/serial.log,append=on');
    const boot = buildQemuArgv(base);
    expect(option(boot, '-incoming')).toEqual([]);
    expect(option(boot, '-chardev').find((c) => c.startsWith('file,'))).toBe('file,id=serial0,path=/inst/serial.log');
  });

  test('template RAM is a file the template shares and a clone maps copy-on-write', () => {
    const template = buildQemuArgv({ ...base, memoryMiB: 768, memoryFile: { path: '/inst/tmpl,1/ram', shared: true } });
    expect(option(template, '-machine')).toEqual(['pc-q35-7.2,memory-backend=ram0']);
    expect(option(template, '-object')).toContain('memory-backend-file,id=ram0,size=768M,mem-path=/inst/tmpl,,1/ram,share=on');
    const clone = buildQemuArgv({ ...base, memoryMiB: 768, memoryFile: { path: '/inst/tmpl,1/ram', shared: false }, incoming: 'defer' });
    expect(option(clone, '-object')).toContain('memory-backend-file,id=ram0,size=768M,mem-path=/inst/tmpl,,1/ram,share=off');
    expect(option(clone, '-incoming')).toEqual(['defer']);
    // A plain guest keeps anonymous memory.
    expect(option(buildQemuArgv(base), '-object').some((o) => o.startsWith('memory-backend'))).toBe(false);
    expect(option(buildQemuArgv(base), '-machine')).toEqual(['pc-q35-7.2']);
  });

  test('a clone has exactly the devices of its template: only paths, tag and the state differ', () => {
    const template = buildQemuArgv({ ...base, memoryFile: { path: '/t/ram', shared: true } });
    const clone = buildQemuArgv({ ...base, memoryFile: { path: '/t/ram', shared: false }, tag: 'guestlab:instance=web-1-ffff:owner=1.2', disk: '/clone/disk.qcow2', qmpSocket: '/clone/qmp.sock', serialLog: '/clone/serial.log', serialAppend: true, incoming: 'defer' });
    const devices = (argv: string[]) => option(argv, '-device');
    expect(devices(clone)).toEqual(devices(template));
    expect(option(clone, '-m')).toEqual(option(template, '-m'));
    expect(option(clone, '-smp')).toEqual(option(template, '-smp'));
    expect(option(clone, '-machine')).toEqual(option(template, '-machine'));
  });
});

describe('parseUsernetForward', () => {
  // Captured from QEMU 7.2 `info usernet` with hostfwd=tcp:127.0.0.1:0-:22.
  const info = 'Hub -1 (n):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   3       127.0.0.1 33841       10.0.2.15    22     0     0\r\n';

  test('finds the host port the kernel chose', () => {
    expect(parseUsernetForward(info, 22)).toBe(33841);
  });

  test('undefined for a guest port that is not forwarded', () => {
    expect(parseUsernetForward(info, 80)).toBeUndefined();
  });
});

test('the q35 alias resolves to the versioned machine type QEMU names for it', async () => {
  const { parseMachineAlias } = await import('../../src/host/probe.ts');
  const help = 'Supported machines are:\nmicrovm              microvm (i386)\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\npc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n';
  expect(parseMachineAlias(help, 'q35')).toBe('pc-q35-7.2');
  expect(parseMachineAlias(help, 'pc')).toBeUndefined();
});
