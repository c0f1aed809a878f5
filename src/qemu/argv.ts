// Pure QEMU command line for one guest. Everything that varies between guests comes in the
// config; nothing is read from the environment here, so the argv is unit-testable.

export type Accel = 'kvm' | 'tcg';

/**
 * Every guest's architecture, in process.arch's terms: guestlab runs qemu-system-x86_64 (and
 * catalog entries name x86-64 disks). Images record none of their own.
 */
export const GUEST_ARCH = 'x64';

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
  /**
   * The user network lets the guest open no connection (restrict=on): nothing to the internet and
   * nothing to the host's loopback through 10.0.2.2. Forwards from the host keep working.
   */
  restrictUserNet?: boolean | undefined;
  /** NICs on private networks: QEMU stream netdevs that connect to the network switch's unix socket. */
  extraNics?: { id: string; mac: string; socketPath: string }[];
  /**
   * Read-only raw disks on the SCSI controller (host directories mounted into the guest). `id` names
   * both the block node and the device, so that QemuMonitor.detachDisk() removes boot-time disks too.
   */
  scsiDisks?: ScsiDisk[] | undefined;
}

/** A read-only raw disk image on the virtio-scsi controller, seen by the guest as a SCSI disk with this serial. */
export interface ScsiDisk {
  /** QEMU id of the device and node name of its block node: a letter, then letters, digits, `-`, `.`, `_`. */
  id: string;
  /** Absolute path of the raw image. */
  file: string;
  /** The disk's serial (and SCSI device id), which names it in the guest's /dev/disk/by-id/. */
  serial: string;
}

/**
 * The virtio-scsi controller every guest has, mounts or not: disks hot-plug onto its bus without
 * PCIe hotplug slots on q35, and a guest's device set stays the same whatever it mounts (a saved
 * state restores only into the same devices).
 */
export const SCSI_CONTROLLER_ID = 'scsi0';

const QEMU_ID = /^[A-Za-z][A-Za-z0-9._-]*$/;
/** QEMU's limit for block node names (and so for disk ids here). */
const MAX_NODE_NAME = 31;
/** scsi-hd takes the SCSI device id from the serial only up to this length (QEMU 7.2 cuts it there). */
const MAX_SERIAL = 20;

/** Checks a SCSI disk's id, serial and file the way QEMU would, before QEMU sees them; throws a TypeError naming the field. */
export function checkScsiDisk(disk: ScsiDisk): void {
  if (typeof disk.id !== 'string' || !QEMU_ID.test(disk.id) || disk.id.length > MAX_NODE_NAME) {
    throw new TypeError(`Invalid SCSI disk id ${JSON.stringify(disk.id)}: use a letter followed by up to ${MAX_NODE_NAME - 1} letters, digits, '-', '.' or '_'`);
  }
  if (typeof disk.serial !== 'string' || !/^[A-Za-z0-9._-]+$/.test(disk.serial) || disk.serial.length > MAX_SERIAL) {
    throw new TypeError(`Invalid serial ${JSON.stringify(disk.serial)} of SCSI disk ${disk.id}: use 1 to ${MAX_SERIAL} letters, digits, '-', '.' or '_' (the guest's udev names the disk by it)`);
  }
  if (typeof disk.file !== 'string' || !disk.file.startsWith('/')) {
    throw new TypeError(`The image of SCSI disk ${disk.id} must be an absolute path, got ${JSON.stringify(disk.file)}`);
  }
}

/** A -blockdev/-device pair per read-only SCSI disk; ids and serials must differ between disks. */
function scsiDisksArgs(disks: ScsiDisk[]): string[] {
  for (const [i, disk] of disks.entries()) {
    checkScsiDisk(disk);
    const twin = disks.findIndex((other) => other.id === disk.id || other.serial === disk.serial);
    if (twin !== i) throw new TypeError(`SCSI disks ${twin} and ${i} share the id or serial ${JSON.stringify(disk.id === disks[twin]!.id ? disk.id : disk.serial)}: give each disk its own`);
  }
  return disks.flatMap((disk) => [
    '-blockdev', `driver=raw,node-name=${disk.id},read-only=on,file.driver=file,file.filename=${optValue(disk.file)},file.read-only=on`,
    '-device', `scsi-hd,bus=${SCSI_CONTROLLER_ID}.0,drive=${disk.id},id=${disk.id},serial=${disk.serial}`,
  ]);
}

/**
 * The CPU under TCG: a named, versioned model (not `max`, whose features change with QEMU's
 * version), so that a saved state restores on another QEMU build. Westmere is x86-64-v2 (SSE4.2,
 * POPCNT: what RHEL 9 and its rebuilds require) plus AES-NI, all of which TCG emulates.
 */
export const TCG_CPU_MODEL = 'Westmere-v1';

/** The guest agent's virtio-serial port: the guest sees it as /dev/virtio-ports/org.guestlab.agent.0. */
export const AGENT_PORT_NAME = 'org.guestlab.agent.0';

/**
 * Empty PCIe root ports every guest has, for NICs plugged in after a restore: a guest restored from
 * the template cache joins its private networks through them (a saved state restores only into the
 * devices it was saved with, so the slots must be there from the first boot on).
 */
export const HOTPLUG_PORTS = 4;

/** The QEMU id of hot-plug root port `i` (0-based). */
export function hotplugPortId(i: number): string {
  return `hp${i}`;
}

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
    '-netdev', `user,id=net0,${config.restrictUserNet ? 'restrict=on,' : ''}hostfwd=tcp:127.0.0.1:${config.sshHostPort}-:22`,
    '-device', `virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`,
    ...(config.extraNics ?? []).flatMap((nic) => [
      '-netdev', `stream,id=${optValue(nic.id)},server=off,addr.type=unix,addr.path=${optValue(nic.socketPath)}`,
      '-device', `virtio-net-pci,netdev=${optValue(nic.id)},mac=${optValue(nic.mac)}`,
    ]),
    '-object', 'rng-random,id=rng0,filename=/dev/urandom',
    '-device', 'virtio-rng-pci,rng=rng0',
    // A VM generation ID (ACPI, not PCI) that QEMU makes anew at every start, a restore included:
    // the guest kernel's vmgenid driver reseeds its RNG when it changes, so clones of one saved
    // state never share random numbers, even before guestlab's own reseed.
    '-device', 'vmgenid,guid=auto',
    ...(config.agentSocket
      ? [
          '-device', 'virtio-serial-pci,id=vser0,max_ports=2',
          '-chardev', `socket,id=agent0,path=${optValue(config.agentSocket)},server=on,wait=off`,
          '-device', `virtserialport,bus=vser0.0,chardev=agent0,name=${AGENT_PORT_NAME}`,
        ]
      : []),
    // Last of the PCI devices, so that the devices before it keep their slots (and the guest its NIC names).
    '-device', `virtio-scsi-pci,id=${SCSI_CONTROLLER_ID}`,
    ...scsiDisksArgs(config.scsiDisks ?? []),
    // After every other PCI device, for the same reason. Chassis numbers must differ between ports.
    ...Array.from({ length: HOTPLUG_PORTS }, (_, i) => ['-device', `pcie-root-port,id=${hotplugPortId(i)},bus=pcie.0,chassis=${i + 1}`]).flat(),
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
