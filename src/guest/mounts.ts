// Read-only host directories in a guest: each is an ext4 image of the directory (mounts/fs-image.ts)
// on a read-only scsi-hd disk, mounted by the guest. The spec's mounts are built before QEMU starts
// and mounted once the guest is ready; vm.mount() builds, hot-plugs (QMP) and mounts one at run time.
import fs from 'node:fs/promises';
import path from 'node:path';
import { GuestCommandError, GuestlabError } from '../errors.ts';
import type { ExecResult } from '../exec-result.ts';
import { mountDevicePath, mountSerial } from '../mounts/device.ts';
import { buildFsImage } from '../mounts/fs-image.ts';
import { resolveMount, type MountSpec, type ResolvedMount } from '../mounts/mount-spec.ts';
import type { QemuMonitor } from '../qemu/monitor.ts';
import { quoteArgv } from '../util/shell-quote.ts';
import type { ExecOptions } from './types.ts';

/** A host directory mounted in the guest. */
export interface GuestMount extends ResolvedMount {
  /** The disk's serial (and QEMU id): the guest sees /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_<serial>. */
  serial: string;
  /** The image on the host, in the instance directory. */
  file: string;
  /** How long building the image took. */
  buildMs: number;
}

type Exec = (argv: string[], options: ExecOptions) => Promise<ExecResult>;

// "$1" the device, "$2" the mount point. A hot-plugged disk appears once the kernel has scanned it
// and udev has made its by-id link: wait up to 30 s for it.
const MOUNT_SCRIPT =
  'set -e; i=0; while [ ! -e "$1" ]; do i=$((i+1)); if [ $i -gt 300 ]; then echo "no disk $1 after 30 s" >&2; exit 1; fi; sleep 0.1; done; ' +
  'mkdir -p -- "$2"; mount -t ext4 -o ro,nodev,nosuid -- "$1" "$2"';

/** Builds the image of one mount in `dir` as the disk `serial`. */
export async function buildMountImage(mount: ResolvedMount, serial: string, dir: string, signal?: AbortSignal): Promise<GuestMount> {
  const image = await buildFsImage({ source: mount.host, dir, name: serial, signal });
  return { ...mount, serial, file: image.file, buildMs: image.buildMs };
}

/** Mounts a mount's disk in the guest, as root. */
export async function mountInGuest(exec: Exec, guest: string, mount: GuestMount): Promise<void> {
  await must(exec, guest, ['sh', '-c', MOUNT_SCRIPT, 'guestlab-mount', mountDevicePath(mount.serial), mount.guest], `mount ${mount.host} at ${mount.guest}`);
}

async function must(exec: Exec, guest: string, argv: string[], what: string): Promise<void> {
  const result = await exec(argv, { sudo: true, timeoutMs: 60_000 });
  if (result.exitCode !== 0) {
    throw new GuestCommandError({ command: `${what}: ${quoteArgv(argv)}`, exitCode: result.exitCode, signal: result.signal, stdout: result.stdout, stderr: result.stderr, timedOut: result.timedOut, guest });
  }
}

/** The mounts of one running guest: those it booted with, and those added with mount(). */
export class GuestMounts {
  readonly #guest: string;
  readonly #dir: string;
  readonly #exec: Exec;
  readonly #monitor: () => QemuMonitor;
  readonly #mounts = new Map<string, GuestMount>();
  #next: number;

  constructor(init: { guest: string; dir: string; exec: Exec; monitor: () => QemuMonitor; booted: readonly GuestMount[] }) {
    this.#guest = init.guest;
    this.#dir = init.dir;
    this.#exec = init.exec;
    this.#monitor = init.monitor;
    for (const mount of init.booted) this.#mounts.set(mount.guest, mount);
    this.#next = init.booted.length;
  }

  list(): GuestMount[] {
    return [...this.#mounts.values()];
  }

  async mount(spec: MountSpec, signal?: AbortSignal): Promise<GuestMount> {
    const resolved = await resolveMount(spec, 'mount()', { mounted: [...this.#mounts.keys()] });
    const serial = mountSerial(this.#next++);
    const mount = await buildMountImage(resolved, serial, this.#dir, signal);
    try {
      await this.#monitor().attachDisk({ id: serial, file: mount.file, serial, format: 'raw' });
      try {
        await mountInGuest(this.#exec, this.#guest, mount);
      } catch (error) {
        await this.#monitor().detachDisk(serial).catch(() => undefined);
        throw error;
      }
    } catch (error) {
      await fs.rm(mount.file, { force: true });
      throw error;
    }
    this.#mounts.set(mount.guest, mount);
    return mount;
  }

  async unmount(guestPath: string): Promise<void> {
    const mount = this.#mounts.get(guestPath);
    if (!mount) {
      const known = [...this.#mounts.keys()];
      throw new GuestlabError(`Nothing is mounted at ${JSON.stringify(guestPath)} in guest ${this.#guest}; mounted: ${known.length ? known.join(', ') : 'nothing'}`);
    }
    // The disk goes only once the guest no longer uses it.
    await must(this.#exec, this.#guest, ['umount', '--', mount.guest], `unmount ${mount.guest}`);
    await this.#monitor().detachDisk(mount.serial);
    // A clone's boot-time images are its template's: those stay.
    if (path.dirname(mount.file) === this.#dir) await fs.rm(mount.file, { force: true });
    this.#mounts.delete(guestPath);
  }
}
