// The private directory of one running guest. Every file in it has a name here.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { GuestlabError } from '../errors.ts';
import { currentIdentity } from '../host/process-identity.ts';
import { OWNER_FILE, type OwnerRecord } from '../reaper/sweep.ts';
import { makePrivateDir } from '../util/fs.ts';

export const INSTANCE_FILES = {
  overlay: 'disk.qcow2',
  seed: 'cidata.iso',
  qmp: 'qmp.sock',
  /** The host end of the guest agent's virtio-serial port (the command channel); only the owner can connect. */
  agent: 'agent.sock',
  serial: 'serial.log',
  qemuLog: 'qemu.log',
  clientKey: 'id_ed25519',
  knownHosts: 'known_hosts',
  info: 'guest.json',
  /** A template's saved RAM and device state (QEMU migration stream). */
  state: 'vmstate',
  /** A template's guest RAM: a file its QEMU shares, which clones map copy-on-write. */
  memory: 'ram',
  /**
   * A UEFI guest's own copy of the OVMF variable store (boot entries; its pflash unit 1), as qcow2
   * so that checkpoints (savevm) can snapshot it with the disk.
   */
  efiVars: 'efivars.qcow2',
  owner: OWNER_FILE,
} as const;

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/**
 * The unix socket of the guest's NIC on its `index`-th private network (the switch listens there, its
 * QEMU connects). No longer than agent.sock for the first hundred, so the length check above holds.
 */
export function nicSocket(instance: Pick<InstanceDir, 'dir'>, index: number): string {
  return path.join(instance.dir, `nic${index}.sock`);
}

export interface InstanceDir {
  id: string;
  dir: string;
  file(name: keyof typeof INSTANCE_FILES): string;
}

export async function createInstanceDir(instancesDir: string, guestName: string): Promise<InstanceDir> {
  const id = `${guestName}-${randomBytes(4).toString('hex')}`;
  const dir = path.join(instancesDir, id);
  // The longest socket name decides.
  const qmp = path.join(dir, INSTANCE_FILES.agent.length > INSTANCE_FILES.qmp.length ? INSTANCE_FILES.agent : INSTANCE_FILES.qmp);
  if (Buffer.byteLength(qmp) > MAX_SOCKET_PATH) {
    throw new GuestlabError(
      `The instance directory path is too long for QEMU's unix socket (${Buffer.byteLength(qmp)} > ${MAX_SOCKET_PATH} bytes): ${qmp}. ` +
        'Set GUESTLAB_INSTANCES_DIR to a shorter directory, or use a shorter guest name.',
    );
  }
  await makePrivateDir(instancesDir);
  await fs.mkdir(dir, { mode: 0o700 });
  // First, so that a sweep can tell whose directory this is whatever happens next.
  const owner: OwnerRecord = { instanceId: id, owner: currentIdentity(), createdAt: new Date().toISOString() };
  await fs.writeFile(path.join(dir, OWNER_FILE), JSON.stringify(owner) + '\n', { mode: 0o600 });
  return { id, dir, file: (name) => path.join(dir, INSTANCE_FILES[name]) };
}

/** Record that the guest is kept for debugging, so that no sweep removes it. */
export async function markInstanceKept(instance: InstanceDir): Promise<void> {
  const file = instance.file('owner');
  const owner = JSON.parse(await fs.readFile(file, 'utf8')) as OwnerRecord;
  await fs.writeFile(file, JSON.stringify({ ...owner, keptAt: new Date().toISOString() }) + '\n', { mode: 0o600 });
}
