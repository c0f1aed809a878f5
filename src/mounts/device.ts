// How a mount's disk is named on both sides: QEMU id and serial on the host, a udev by-id link in the
// guest. The link is derived from the serial, never from the probe order (sda, sdb, ...), which
// changes with hot-plugging.
//
// The guest's name for the disk, worked out from the sources rather than guessed:
// - QEMU 7.2 scsi-hd (hw/scsi/scsi-disk.c): with `serial=X` and no `device_id`, the device id is X
//   (cut to 20 characters), sent in VPD page 0x83 as one vendor-specific (type 0), ASCII designator;
//   INQUIRY reports vendor "QEMU" and product "QEMU HARDDISK", space-padded to 8 and 16 bytes.
// - systemd's scsi_id (src/udev/scsi_id/scsi_serial.c, check_fill_0x83_id): a vendor-specific
//   designator becomes '0' + vendor + product + id, i.e. "0QEMU    QEMU HARDDISK   X"; scsi_id.c
//   exports it as ID_SERIAL after udev_replace_whitespace() (each run of blanks -> one '_').
// - 60-persistent-storage.rules (the same in Debian 12's systemd 252, read from the debian-12 image):
//   `KERNEL=="sd*[!0-9]|sr*", ENV{ID_SERIAL}!="?*", IMPORT{program}="scsi_id --export --whitelisted
//   -d $devnode", ENV{ID_BUS}="scsi"` and then `SYMLINK+="disk/by-id/$env{ID_BUS}-$env{ID_SERIAL}"`.
// So the link is /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_X. (A guest with sg3-utils' 55-scsi-sg3_id
// rules may set ID_SERIAL first; Debian's cloud images do not have them.)

/** Serials, QEMU ids and block node names of mount disks: glmnt0, glmnt1, ... */
export const MOUNT_SERIAL_PREFIX = 'glmnt';

/** The serial (also QEMU id and node name) of a guest's `index`th mount disk, counting from 0. */
export function mountSerial(index: number): string {
  if (!Number.isSafeInteger(index) || index < 0) throw new TypeError(`Expected a mount index to be a non-negative integer, got ${String(index)}`);
  return `${MOUNT_SERIAL_PREFIX}${index}`;
}

/** The guest's path of the disk with this scsi-hd serial: /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>. */
export function mountDevicePath(serial: string): string {
  if (!/^[A-Za-z0-9._-]{1,20}$/.test(serial)) throw new TypeError(`Invalid disk serial ${JSON.stringify(serial)}: 1 to 20 letters, digits, '-', '.' or '_'`);
  return `/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${serial}`;
}
