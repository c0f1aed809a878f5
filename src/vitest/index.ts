// The public API of 'guestlab/vitest': guest and network fixtures for test.extend(), failure
// evidence attached to failed tests, GUESTLAB_KEEP=on-failure, and the guest matchers (registered
// on import).
export { guestFixture, type GuestFixture, type GuestFixtureFn } from './guest-fixture.ts';
export { networkFixture, type NetworkFixture, type NetworkFixtureFn } from './network-fixture.ts';
export type { GuestFixtureOptions, GuestFixtureScope, NetworkFixtureOptions } from './options.ts';
export type { GuestTestMeta } from './report.ts';
export { registerGuestMatchers, type HaveFileOptions, type HavePackageOptions, type HaveUserOptions, type ListenOnOptions } from './matchers.ts';
export type { StartedGuest } from '../guest/started-guest.ts';
export type { GuestSpec } from '../guest/spec.ts';
export type { GuestEvidence } from '../guest/evidence.ts';
export type { GuestNetwork } from '../network/network.ts';
