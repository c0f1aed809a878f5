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

export type GuestFixtureFn = (context: object, use: (guest: StartedGuest) => Promise<void>) => Promise<void>;

/**
 * A fixture that boots a guest for `test.extend`:
 *   const test = base.extend({ vm: guestFixture({ image: 'debian-12' }) })
 * The guest is stopped at the end of its scope, whether the tests passed or not.
 * A string names a spec in fixtures/NAME.yaml.
 */
export function guestFixture(spec: GuestSpec | string, options: GuestFixtureOptions = {}): [GuestFixtureFn, { scope: GuestFixtureScope }] {
  const scope = options.scope === undefined ? 'file' : expectOneOf('scope', options.scope, ['test', 'file', 'worker'] as const);
  // Vitest reads the first parameter's destructuring pattern to learn a fixture's dependencies:
  // this fixture has none, so it must stay an empty pattern.
  const fixture: GuestFixtureFn = async ({}, use) => {
    const guest = await startGuest(spec);
    try {
      await use(guest);
    } finally {
      await guest.stop();
    }
  };
  return [fixture, { scope }];
}

export type { StartedGuest, GuestSpec };
