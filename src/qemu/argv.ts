// Pure QEMU command line for one guest. Everything that varies between guests comes in the
// config; nothing is read from the environment here, so the argv is unit-testable.

export type Accel = 'kvm' | 'tcg';

export interface QemuConfig {
  name: string;
  /** Tags the process (as an SMBIOS OEM string) so that a sweep can tell guestlab's QEMUs and their owners. */
  tag: string;
  accel: Accel;
  /** A versioned machine type (pc-q35-7.2), never an alias whose meaning moves with QEMU's version. */
  machine: string;
  cpus: number;
  memoryMiB: number;
  /** The guest's qcow2 overlay. */
  disk: string;
  /** NoCloud seed ISO; omitted on a boot that leaves cloud-init off. */
  seed?: string | undefined;
  /** fw_cfg entries from files (guestlab's setup without cloud-init; see cloud-init/fw-cfg-setup.ts). */
  fwCfg?: { name: string; file: string }[] | undefined;
  /** Direct kernel boot; omitted for images that carry their own bootloader. */
  kernel?: { kernel: string; initrd: string; cmdline: string } | undefined;
  /**
   * UEFI: OVMF's code (read-only, raw) and the guest's own copy of its variable store (qcow2, so
   * that savevm can snapshot it), as the two pflash units. Omitted: SeaBIOS, QEMU's built-in BIOS.
   */
  uefi?: { code: string; vars: string } | undefined;
  qmpSocket: string;
  /**
   * The host end of the guest agent's port (AGENT_PORT_NAME on a virtio-serial bus), a unix socket
   * QEMU listens on. The device is there whether or not the image has an agent, so that every
   * guest (and every saved state) has the same devices.
   */
  agentSocket?: string | undefined;
  serialLog: string;
  /** Append to the serial log instead of truncating it (a clone continues its template's console). */
  serialAppend?: boolean | undefined;
  /**
   * Resume from a saved state (QEMU -incoming URI) instead of booting. `defer` waits for QMP
   * migrate-incoming, so that migration capabilities can be set first.
   */
  incoming?: string | undefined;
  /**
   * Guest RAM in a file instead of anonymous memory. `shared`: the guest writes into the file (a
   * template); otherwise the file is mapped copy-on-write (MAP_PRIVATE) and stays untouched (a clone).
   */
  memoryFile?: { path: string; shared: boolean } | undefined;
  /** Host port forwarded to the guest's port 22; 0 lets the kernel choose (read back through QMP). */
  sshHostPort: number;
  /** NICs on private networks: QEMU dgram netdevs between two UDP ports on 127.0.0.1. */
  extraNics?: { id: string; mac: string; localPort: number; remotePort: number }[];
}

/**
 * The CPU under TCG: a named, versioned model (not `max`, whose features change with QEMU's
 * version), so that a saved state restores on another QEMU build. Westmere is x86-64-v2 (SSE4.2,
 * POPCNT: what RHEL 9 and its rebuilds require) plus AES-NI, all of which TCG emulates.
 */
export const TCG_CPU_MODEL = 'Westmere-v1';

/** The guest agent's virtio-serial port: the guest sees it as /dev/virtio-ports/org.guestlab.agent.0. */
export const AGENT_PORT_NAME = 'org.guestlab.agent.0';

/** The MAC of the user-mode NIC (eth0), QEMU's default for a first NIC, set explicitly so network-config can rely on it. */
export const USER_NIC_MAC = '52:54:00:12:34:56';

/** Characters QEMU's option parser treats specially inside a value. */
function optValue(value: string): string {
  if (/[\n\0]/.test(value)) throw new TypeError(`QEMU option value cannot contain a newline or NUL: ${JSON.stringify(value)}`);
  return value.replaceAll(',', ',,');
}

export function buildQemuArgv(config: QemuConfig): string[] {
  const argv = [
    '-name', `guest=${optValue(config.name)},debug-threads=on`,
    '-smbios', `type=11,value=${optValue(config.tag)}`,
    '-nodefaults', '-no-user-config',
    '-display', 'none', '-vga', 'none',
    '-machine', config.memoryFile ? `${optValue(config.machine)},memory-backend=ram0` : optValue(config.machine),
    ...(config.uefi
      ? [
          '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${optValue(config.uefi.code)}`,
          '-drive', `if=pflash,format=qcow2,unit=1,file=${optValue(config.uefi.vars)}`,
        ]
      : []),
    ...(config.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi,tb-size=256', '-cpu', TCG_CPU_MODEL]),
    '-smp', String(config.cpus),
    '-m', `${config.memoryMiB}M`,
    ...(config.memoryFile
      ? ['-object', `memory-backend-file,id=ram0,size=${config.memoryMiB}M,mem-path=${optValue(config.memoryFile.path)},share=${config.memoryFile.shared ? 'on' : 'off'}`]
      : []),
    // Throwaway overlays: never wait for the host to flush them.
    // A full host disk pauses the guest (werror=enospc) and raises BLOCK_IO_ERROR, which guestlab
    // turns into an error instead of a guest that hangs.
    '-drive', `if=none,id=disk0,file=${optValue(config.disk)},format=qcow2,cache=unsafe,discard=unmap,werror=enospc,rerror=report`,
    '-device', 'virtio-blk-pci,drive=disk0',
    ...(config.seed ? ['-drive', `if=none,id=seed0,file=${optValue(config.seed)},format=raw,readonly=on`, '-device', 'virtio-blk-pci,drive=seed0'] : []),
    ...(config.fwCfg ?? []).flatMap((entry) => ['-fw_cfg', `name=${optValue(entry.name)},file=${optValue(entry.file)}`]),
    '-netdev', `user,id=net0,hostfwd=tcp:127.0.0.1:${config.sshHostPort}-:22`,
    '-device', `virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`,
    ...(config.extraNics ?? []).flatMap((nic) => [
      '-netdev', `dgram,id=${optValue(nic.id)},local.type=inet,local.host=127.0.0.1,local.port=${nic.localPort},remote.type=inet,remote.host=127.0.0.1,remote.port=${nic.remotePort}`,
      '-device', `virtio-net-pci,netdev=${optValue(nic.id)},mac=${optValue(nic.mac)}`,
    ]),
    '-object', 'rng-random,id=rng0,filename=/dev/urandom',
    '-device', 'virtio-rng-pci,rng=rng0',
    ...(config.agentSocket
      ? [
          '-device', 'virtio-serial-pci,id=vser0,max_ports=2',
          '-chardev', `socket,id=agent0,path=${optValue(config.agentSocket)},server=on,wait=off`,
          '-device', `virtserialport,bus=vser0.0,chardev=agent0,name=${AGENT_PORT_NAME}`,
        ]
      : []),
    '-chardev', `socket,id=qmp0,path=${optValue(config.qmpSocket)},server=on,wait=off`,
    '-mon', 'chardev=qmp0,mode=control',
    '-chardev', `file,id=serial0,path=${optValue(config.serialLog)}${config.serialAppend ? ',append=on' : ''}`,
    '-serial', 'chardev:serial0',
  ];
  if (config.kernel) {
    argv.push('-kernel', config.kernel.kernel, '-initrd', config.kernel.initrd, '-append', config.kernel.cmdline);
  }
  if (config.incoming) argv.push('-incoming', config.incoming);
  return argv;
}
