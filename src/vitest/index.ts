// The public API of 'guestlab/vitest': guest fixtures for test.extend().
import { startGuest } from '../guest/start.ts';
import type { GuestSpec } from '../guest/spec.ts';
import type { StartedGuest } from '../guest/started-guest.ts';
import { expectOneOf } from '../util/validate.ts';

export type GuestFixtureScope = 'test' | 'file' | 'worker';

export interface GuestFixtureOptions {
  /** How long one guest lives: one test, one file (default), or one worker. */
  scope?: GuestFixtureScope;
}

export type GuestFixtureFn = (context: { signal?: AbortSignal }, use: (guest: StartedGuest) => Promise<void>) => Promise<void>;

/**
 * A fixture that boots a guest for `test.extend`:
 *   const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) })
 * The guest is stopped at the end of its scope, whether the tests passed or not.
 * A string names a spec in fixtures/NAME.yaml.
 */
export function guestFixture(spec: GuestSpec | string, options: GuestFixtureOptions = {}): [GuestFixtureFn, { scope: GuestFixtureScope }] {
  const scope = options.scope === undefined ? 'file' : expectOneOf('scope', options.scope, ['test', 'file', 'worker'] as const);
  const run = async (signal: AbortSignal | undefined, use: (guest: StartedGuest) => Promise<void>) => {
    const guest = await startGuest(spec, signal ? { signal } : {});
    try {
      await use(guest);
    } finally {
      await guest.stop();
    }
  };
  // Vitest reads the first parameter's destructuring pattern to learn what a fixture uses. A
  // test-scoped guest takes the test's `signal`, so a test that times out or is cancelled stops
  // its boot at once; file and worker scopes have no such signal and use nothing.
  const fixture: GuestFixtureFn = scope === 'test' ? async ({ signal }, use) => run(signal, use) : async ({}, use) => run(undefined, use);
  return [fixture, { scope }];
}

export type { StartedGuest, GuestSpec };
