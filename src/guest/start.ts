// startGuest(): a fresh boot, image -> disk -> seed -> QEMU -> ready, as the steps in launch/boot.ts.
// Clones of a template (template.ts) run the steps in launch/clone.ts.
import { validateEnvironment } from '../env.ts';
import { log as rootLog } from '../log.ts';
import { resolveMounts } from '../mounts/mount-spec.ts';
import { FRESH_BOOT } from './launch/boot.ts';
import { guestOf } from './launch/launch.ts';
import { newLaunchState, runBoot } from './launch/steps.ts';
import { loadFixture, resolveSpec, type GuestSpec, type ResolvedSpec } from './spec.ts';
import type { StartedGuest } from './started-guest.ts';

export interface StartOptions {
  signal?: AbortSignal;
}

/** Boot a guest and return it once SSH works and cloud-init is done. A string names fixtures/NAME.yaml. */
export async function startGuest(specOrFixture: GuestSpec | string, options: StartOptions = {}): Promise<StartedGuest> {
  const spec = await specFrom(specOrFixture);
  const state = await runBoot(() => newLaunchState(spec, rootLog.child(spec.name), options.signal), FRESH_BOOT);
  const guest = guestOf(state);
  // Now that it answers: every member of its networks (itself included) lists every other by name.
  for (const network of state.resources.networks ?? []) await network.joined(guest);
  return guest;
}

/**
 * The spec checked and completed, and every GUESTLAB_* variable checked with it: the first thing a
 * start does, before anything is swept, built, leased or written.
 */
export async function specFrom(specOrFixture: GuestSpec | string): Promise<ResolvedSpec> {
  validateEnvironment(process.env, (message) => rootLog.warn(message));
  const spec = typeof specOrFixture === 'string' ? await loadFixture(specOrFixture) : specOrFixture;
  const resolved = resolveSpec(spec);
  // The host directories are looked at here, before anything starts: a missing one fails at once.
  const mounts = await resolveMounts(spec.mounts);
  return mounts.length ? { ...resolved, mounts } : resolved;
}
