// networkFixture(): a private network for test.extend(), shared by name with the guests on it.
import { createNetwork, type GuestNetwork } from '../network/network.ts';
import { checkNetworkFixture, type FixturePair, type NetworkFixtureOptions } from './options.ts';

export type NetworkFixtureFn = (context: object, use: (network: GuestNetwork) => Promise<void>) => Promise<void>;

/** What networkFixture() returns: `test.extend({ lan: networkFixture('lan') })` types `lan` as a GuestNetwork. */
export type NetworkFixture = FixturePair<NetworkFixtureFn, GuestNetwork>;

/**
 * A private network for test.extend, shared by name with the guests whose spec lists it:
 *   const test = base.extend({ lan: networkFixture('lan'), a: guestFixture({ image, networks: ['lan'] }) })
 * Fixtures may start in any order; the network lives until its fixture and every guest on it are done.
 * The name and options are checked here, when the file is collected.
 */
export function networkFixture(name: string, options?: NetworkFixtureOptions): NetworkFixture {
  const { scope, networkOptions } = checkNetworkFixture(name, options);
  const fixture: NetworkFixtureFn = async ({}, use) => {
    const network = await createNetwork({ ...networkOptions, name });
    try {
      await use(network);
    } finally {
      network.close();
    }
  };
  return [fixture, { scope }] as unknown as NetworkFixture;
}
