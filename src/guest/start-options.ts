// What every start takes: its options, and the spec checked and completed before anything starts.
import { validateEnvironment } from '../env.ts';
import { log as rootLog } from '../log.ts';
import { resolveMounts } from '../mounts/mount-spec.ts';
import { loadFixture, resolveSpec, type GuestSpec, type ResolvedSpec } from './spec.ts';

export interface StartOptions {
  signal?: AbortSignal;
  /**
   * false: boot this guest cold, neither restored from the template cache nor saved into it
   * (GUESTLAB_TEMPLATES=0 does the same for every guest). Default: restored when the cache holds a
   * template of the spec, else booted and saved as one.
   */
  template?: boolean;
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
