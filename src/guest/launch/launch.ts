// Running a launch's steps to a StartedGuest.
import { StartedGuest } from '../started-guest.ts';
import type { RunningResources } from '../resources.ts';
import type { BootTimings } from '../types.ts';
import { need, runSteps, type LaunchState, type LaunchStep } from './steps.ts';

/** Runs the steps; the guest is up when they are done. On failure everything they made is released. */
export async function launch(state: LaunchState, steps: readonly LaunchStep[]): Promise<StartedGuest> {
  await runSteps(state, steps);
  return joinedGuestOf(state);
}

/**
 * The StartedGuest for a launch whose steps are done, once every member of its networks (itself
 * included) lists every other by name. A guest whose networks cannot take it is stopped again.
 */
export async function joinedGuestOf(state: LaunchState): Promise<StartedGuest> {
  const guest = guestOf(state);
  try {
    for (const network of state.resources.networks ?? []) await network.joined(guest);
  } catch (error) {
    await guest.stop().catch((stopError: Error) => state.log.warn(`stopping ${state.spec.name} after its networks failed also failed: ${stopError.message}`));
    throw error;
  }
  return guest;
}

/** The boot phases of a launch whose steps are done. */
export function timingsOf(state: LaunchState): BootTimings {
  const t = state.timings;
  return {
    imageReadyMs: need(t.imageReadyMs, 'image timing'),
    qemuStartedMs: need(t.qemuStartedMs, 'QEMU timing'),
    sshBannerMs: need(t.sshBannerMs, 'banner timing'),
    sshReadyMs: need(t.sshReadyMs, 'SSH timing'),
    cloudInitDoneMs: need(t.cloudInitDoneMs, 'ready timing'),
    ...(t.restoreMs === undefined ? {} : { restoreMs: t.restoreMs }),
    ...(t.template === undefined ? {} : { template: t.template }),
    ...(state.cloudInit === undefined ? {} : { cloudInit: state.cloudInit }),
    steps: { ...state.stepMs },
  };
}

/** The StartedGuest for a launch whose steps are done. */
export function guestOf(state: LaunchState): StartedGuest {
  const { spec, resources } = state;
  const instance = need(state.instance, 'instance');
  const keys = need(state.keys, 'keys');
  const timings = timingsOf(state);
  state.log.debug(`ready: ${JSON.stringify(timings)}`);
  return new StartedGuest({
    // The same object the monitor's event handler updates, now with every part set.
    resources: resources as RunningResources,
    name: spec.name,
    image: spec.image,
    accel: need(state.accel, 'accelerator'),
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    instance,
    ssh: {
      host: '127.0.0.1',
      port: need(state.sshPort, 'SSH port'),
      user: spec.user,
      hostKey: keys.hostPublicKey,
      privateKeyPath: instance.file('clientKey'),
      knownHostsPath: instance.file('knownHosts'),
    },
    timings,
    leaseWaitMs: resources.lease?.waitedMs ?? 0,
    networks: state.attachments.map(({ network, address, interfaceName, mac }) => ({ network, address, interfaceName, mac })),
    clonedFrom: state.clonedFrom,
    mounts: state.mounts,
  });
}
