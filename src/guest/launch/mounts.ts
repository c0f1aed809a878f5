// The spec's host directory mounts in a launch: their images are built before QEMU starts (so that
// QEMU opens them as read-only disks), and mounted once the guest is ready.
import { mountSerial } from '../../mounts/device.ts';
import { runOnAgentOrSession } from '../commands.ts';
import { buildMountImage, mountInGuest } from '../mounts.ts';
import { need, type LaunchStep } from './steps.ts';

export const mountImagesStep: LaunchStep = {
  name: 'mount-images',
  description: 'build a read-only ext4 image of each host directory the spec mounts',
  hint: 'mkfs.ext4 and debugfs come with e2fsprogs; a directory with very many entries in one folder takes long to copy',
  async run(state) {
    const mounts = state.spec.mounts ?? [];
    if (!mounts.length) return;
    const instance = need(state.instance, 'instance');
    for (const [i, mount] of mounts.entries()) state.mounts.push(await buildMountImage(mount, mountSerial(i), instance.dir, state.signal));
    state.media = { ...state.media, scsiDisks: state.mounts.map((m) => ({ id: m.serial, file: m.file, serial: m.serial })) };
  },
};

export const mountStep: LaunchStep = {
  name: 'mounts',
  description: 'mount the host directories the spec mounts, read-only, in the guest',
  hint: 'the error has the guest’s words; the guest needs the virtio_scsi module and udev’s by-id links',
  async run(state) {
    if (!state.mounts.length) return;
    const exec: Parameters<typeof mountInGuest>[0] = (argv, options) => runOnAgentOrSession(state.resources, state.spec.user, argv, options);
    for (const mount of state.mounts) await mountInGuest(exec, state.spec.name, mount);
  },
};
