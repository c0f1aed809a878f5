// The fixtures' options, checked when a fixture is declared (while vitest collects the file, before
// any guest starts), and the type of the [fixture, options] pairs the fixtures return.
import { validateEnvironment } from '../env.ts';
import { FIXTURE_NAME, resolveSpec, type GuestSpec, type ResolvedSpec } from '../guest/spec.ts';
import { log } from '../log.ts';
import { NETWORK_NAME, parseSubnet, type NetworkOptions } from '../network/network.ts';
import { describeValue, expectOneOf, expectString, isPlainObject } from '../util/validate.ts';

export type GuestFixtureScope = 'test' | 'file' | 'worker';

export interface GuestFixtureOptions {
  /** How long one guest lives: one test, one file (default), or one worker. */
  scope?: GuestFixtureScope;
  /**
   * Start each guest as a clone of a template booted once for this fixture (see GuestTemplate)
   * instead of a full boot: a fresh guest in a second or two. Default: true for scope 'test'
   * (unless the spec joins private networks, whose guests cannot be templates), false otherwise.
   */
  clone?: boolean;
  /**
   * false: boot the guests cold, neither restored from the template cache nor saved into it (see
   * startGuest). Default: restored from the cache where the spec allows it.
   */
  template?: boolean;
}

export interface NetworkFixtureOptions extends Omit<NetworkOptions, 'name'> {
  /** How long the network lives: one test, one file (default), or one worker. */
  scope?: GuestFixtureScope;
}

/**
 * For TypeScript only. From a [function, options] pair, vitest's `test.extend()` infers both the
 * function's value and the pair itself as the fixture's type (`StartedGuest | [...]`), because a
 * fixture may also be a plain value. A pair that also carries this call signature is read as a
 * function alone. The signature cannot be called (its context is `never`); at run time the pair is
 * a plain array, as vitest expects.
 */
export type Provides<T> = (context: never, use: (value: T) => Promise<void>) => Promise<void>;

/** A [fixture, options] pair for `test.extend()` that types its fixture as T without a type argument. */
export type FixturePair<Fn, T> = [Fn, { scope: GuestFixtureScope } & Provides<T>] & Provides<T>;

const SCOPES = ['test', 'file', 'worker'] as const;

function knownOptions(what: string, options: unknown, known: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (!isPlainObject(options)) throw new TypeError(`Expected the options of ${what} to be an object such as { scope: 'file' }, got ${describeValue(options)}`);
  const unknown = Object.keys(options).find((key) => !known.includes(key));
  if (unknown !== undefined) throw new TypeError(`Unknown ${what} option \`${unknown}\`; known options: ${known.join(', ')}`);
  return options;
}

/** A spec declared inline, resolved once: its clones then share one random name. */
export interface DeclaredSpec {
  spec: ResolvedSpec;
  anyName: boolean;
}

/** guestFixture()'s arguments, checked at declaration. An inline spec comes back resolved. */
export function checkGuestFixture(spec: GuestSpec | string, options: GuestFixtureOptions | undefined): { scope: GuestFixtureScope; clone: boolean | undefined; template: boolean | undefined; declared: DeclaredSpec | undefined } {
  validateEnvironment(process.env, (message) => log.warn(message));
  const given = knownOptions('guestFixture()', options, ['scope', 'clone', 'template']);
  const scope = given.scope === undefined ? 'file' : expectOneOf('scope', given.scope, SCOPES);
  for (const flag of ['clone', 'template'] as const) {
    if (given[flag] !== undefined && typeof given[flag] !== 'boolean') throw new TypeError(`Expected \`${flag}\` to be true or false, got ${describeValue(given[flag])}`);
  }
  const template = given.template as boolean | undefined;
  if (typeof spec === 'string') {
    expectString('spec', spec, FIXTURE_NAME, 'name a spec file fixtures/NAME.yaml by its NAME (letters, digits, ".", "_", "-"), or pass a spec object such as { image: \'debian-12\' }');
    return { scope, clone: given.clone as boolean | undefined, template, declared: undefined };
  }
  return { scope, clone: given.clone as boolean | undefined, template, declared: { spec: resolveSpec(spec), anyName: spec.name === undefined } };
}

/** networkFixture()'s arguments, checked at declaration. */
export function checkNetworkFixture(name: string, options: NetworkFixtureOptions | undefined): { scope: GuestFixtureScope; networkOptions: Omit<NetworkOptions, 'name'> } {
  validateEnvironment(process.env, (message) => log.warn(message));
  expectString('name', name, NETWORK_NAME, 'use a lowercase letter, then letters, digits or hyphens (at most 31)');
  const { scope, ...networkOptions } = knownOptions('networkFixture()', options, ['scope', 'subnet']) as NetworkFixtureOptions;
  if (networkOptions.subnet !== undefined) parseSubnet(expectString('subnet', networkOptions.subnet));
  return { scope: scope === undefined ? 'file' : expectOneOf('scope', scope, SCOPES), networkOptions };
}
