// startGuest(): a guest restored from the template cache (template-cache.ts) when its spec can use
// it, else a fresh boot, image -> disk -> seed -> QEMU -> ready, as the steps in launch/boot.ts.
// Clones of a template (template.ts) run the steps in launch/clone.ts.
import { log as rootLog } from '../log.ts';
import { FRESH_BOOT } from './launch/boot.ts';
import { joinedGuestOf } from './launch/launch.ts';
import { newLaunchState, runBoot } from './launch/steps.ts';
import { loadFixture, type GuestSpec, type ResolvedSpec } from './spec.ts';
import { specFrom, type StartOptions } from './start-options.ts';
import type { StartedGuest } from './started-guest.ts';
import { GuestTemplate } from './template.ts';

export { specFrom, type StartOptions };

/**
 * Start a guest and return it once SSH works and cloud-init is done. A string names
 * fixtures/NAME.yaml. The guest is restored from the template cache when it holds the spec's
 * template (built by the first start of the spec, without its private networks: a restored guest
 * joins them); `{ template: false }`, GUESTLAB_TEMPLATES=0 and host directory mounts boot cold.
 */
export async function startGuest(specOrFixture: GuestSpec | string, options: StartOptions = {}): Promise<StartedGuest> {
  const raw = typeof specOrFixture === 'string' ? await loadFixture(specOrFixture) : specOrFixture;
  const spec = await specFrom(raw);
  return (await GuestTemplate.startFromCache(spec, raw?.name === undefined, options)) ?? bootFresh(spec, options);
}

/** A cold boot of the spec, nothing restored. */
export async function bootFresh(spec: ResolvedSpec, options: StartOptions = {}): Promise<StartedGuest> {
  const state = await runBoot(() => newLaunchState(spec, rootLog.child(spec.name), options.signal), FRESH_BOOT);
  return joinedGuestOf(state);
}
