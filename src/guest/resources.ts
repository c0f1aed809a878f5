// What a guest holds on the host, in the order it is acquired: a budget lease, an instance
// directory, QEMU and its monitor, private-network ports, the SSH session. Each launch step records
// what it made here before anything can fail, and releaseResources() gives back whatever exists,
// for a stopped guest and a failed start alike.
import type { Lease } from '../budget/leases.ts';
import type { Logger } from '../log.ts';
import type { GuestNetwork } from '../network/network.ts';
import { closeQemu } from '../qemu/close.ts';
import { removeOwnedDir } from '../reaper/sweep.ts';
import type { QemuMonitor } from '../qemu/monitor.ts';
import type { QemuProcess } from '../qemu/process.ts';
import type { SshSession } from '../ssh/session.ts';
import type { AgentClient } from '../agent/client.ts';
import type { InstanceDir } from './instance.ts';
import { unregisterLive } from './registry.ts';
import { DiskFullError } from '../errors.ts';

export interface GuestResources {
  log: Logger;
  lease?: Lease | undefined;
  instance?: InstanceDir | undefined;
  qemu?: QemuProcess | undefined;
  monitor?: QemuMonitor | undefined;
  session?: SshSession | undefined;
  /** The command channel, when the image has the agent and it answered; commands use SSH otherwise. */
  agent?: AgentClient | undefined;
  /** Set when the host disk filled up under the guest (QMP BLOCK_IO_ERROR, nospace). */
  diskFull?: DiskFullError | undefined;
  /** Private networks the guest has a port on; left once QEMU is gone. */
  networks?: GuestNetwork[] | undefined;
}

/** The resources of a guest that is up (a clone restored through its agent has no SSH session until one is needed). */
export type RunningResources = Required<Pick<GuestResources, 'instance' | 'qemu' | 'monitor'>> & GuestResources;

/** Gives back whatever exists: SSH, QEMU (quit, grace, kill), network ports, the directory, then the lease. */
export async function releaseResources(resources: GuestResources): Promise<void> {
  const started = Date.now();
  const { qemu, monitor, instance, log } = resources;
  resources.agent?.close();
  resources.session?.close();
  if (qemu) await closeQemu(qemu, monitor, log);
  monitor?.close();
  for (const network of resources.networks ?? []) if (instance) network.detach(instance.id);
  try {
    if (instance) {
      await removeOwnedDir(instance.dir);
      unregisterLive(instance.id);
    }
  } finally {
    // Last, whether or not the directory went: the budget frees up once QEMU is really gone (a
    // directory that cannot be removed is the sweep's, and its error is the caller's).
    await resources.lease?.release();
  }
  log.debug(`stopped in ${Date.now() - started} ms`);
}
