// guestFixture() and networkFixture() check what they are given when they are declared (while
// vitest collects the file), before any guest, network or template exists.
import { afterEach, describe, expect, test } from 'vitest';
import { EnvironmentError } from '../../src/errors.ts';
import { guestFixture, networkFixture } from '../../src/vitest/index.ts';

const image = 'debian-12';

describe('guestFixture', () => {
  test.each([
    [[{ image, cpus: 0 }], /^Expected `cpus` to be a positive integer, got 0 \(number\)$/],
    [[{ image, memory: 512 }], /^Unknown guest spec option `memory`; known options: image, cpus, memoryMiB/],
    [[{ image, cloudConfig: { ssh_keys: {} } }], /^`cloudConfig\.ssh_keys` cannot be set: guestlab injects a per-guest host key and pins it\./],
    [[{ image, cloudConfig: { users: [{ name: 'guestlab' }] } }], /^`cloudConfig\.users\[0\]` redefines "guestlab", guestlab's login user/],
    [['../fixtures/web'], /^Invalid `spec` "\.\.\/fixtures\/web" \(string\): name a spec file fixtures\/NAME\.yaml by its NAME/],
    [[''], /^Expected `spec` to be a non-empty string, got "" \(string\)$/],
    [[{ image }, 'file'], /^Expected the options of guestFixture\(\) to be an object such as \{ scope: 'file' \}, got "file" \(string\)$/],
    [[{ image }, { scop: 'file' }], /^Unknown guestFixture\(\) option `scop`; known options: scope, clone, template$/],
    [[{ image }, { scope: 'suite' }], /^Expected `scope` to be one of 'test', 'file', 'worker', got "suite" \(string\)$/],
    [[{ image }, { clone: 'yes' }], /^Expected `clone` to be true or false, got "yes" \(string\)$/],
  ])('%j is refused at declaration with the option and the fix', (args, message) => {
    expect(() => (guestFixture as (...a: unknown[]) => unknown)(...args)).toThrow(message);
  });

  test('a good declaration gives vitest its [fixture, { scope }] pair', () => {
    const [fixture, options] = guestFixture({ image }, { scope: 'worker', clone: false });
    expect(typeof fixture).toBe('function');
    expect(options).toEqual({ scope: 'worker' });
    expect(guestFixture('debian-basic')[1]).toEqual({ scope: 'file' });
  });
});

describe('networkFixture', () => {
  test.each([
    [['LAN'], /^Invalid `name` "LAN" \(string\): use a lowercase letter, then letters, digits or hyphens \(at most 31\)$/],
    [['lan', { subnet: '10.77.1.0/33' }], /^Expected `subnet` to be an IPv4 network like "10\.77\.1\.0\/24" with a prefix from \/16 to \/29, got "10\.77\.1\.0\/33"$/],
    [['lan', { subnet: '10.77.1.1/24' }], /^`subnet` 10\.77\.1\.1\/24 has host bits set; did you mean 10\.77\.1\.0\/24\?$/],
    [['lan', { name: 'other' }], /^Unknown networkFixture\(\) option `name`; known options: scope, subnet$/],
    [['lan', { scope: 'suite' }], /^Expected `scope` to be one of 'test', 'file', 'worker', got "suite" \(string\)$/],
  ])('%j is refused at declaration', (args, message) => {
    expect(() => (networkFixture as (...a: unknown[]) => unknown)(...args)).toThrow(message);
  });

  test('a good declaration gives vitest its pair', () => {
    expect(networkFixture('lan', { subnet: '10.77.9.0/24', scope: 'test' })[1]).toEqual({ scope: 'test' });
  });
});

describe('the GUESTLAB_* variables are checked when a fixture is declared', () => {
  const saved = { ...process.env };
  afterEach(() => {
    process.env = { ...saved };
  });

  test('a bad variable fails the declaration, by name', () => {
    process.env.GUESTLAB_BUDGET_CPUS = 'abc';
    process.env.GUESTLAB_KEEP = 'yes';
    const error = (() => {
      try {
        guestFixture({ image });
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(EnvironmentError);
    expect((error as Error).message).toMatch(/^2 GUESTLAB_\* variables have values guestlab refuses:\n {2}- GUESTLAB_BUDGET_CPUS is "abc", not a whole number.*\n {2}- GUESTLAB_KEEP is "yes", not one of never, on-failure/);
    expect(() => networkFixture('lan')).toThrow(/GUESTLAB_BUDGET_CPUS is "abc"/);
  });
});
