// Template keys and the fixture's clone option; the clones themselves are in test/integration/clone.test.ts.
import { expect, test } from 'vitest';
import { resolveSpec } from '../../src/guest/spec.ts';
import { templateKey } from '../../src/guest/template.ts';
import { isStatelessBuiltin } from '../../src/guest/commands.ts';
import { guestFixture } from '../../src/vitest/index.ts';

test('a template key changes with everything that changes the guest, not with the boot deadline', () => {
  const key = (spec: Parameters<typeof resolveSpec>[0]) => templateKey(resolveSpec({ name: 'vm', ...spec }));
  const basic = key({ image: 'debian-12' });
  expect(key({ image: 'debian-12' })).toBe(basic);
  expect(key({ image: 'debian-12', bootTimeoutMs: 5000 })).toBe(basic);
  for (const other of [
    { image: 'debian-12-web' },
    { image: 'debian-12', cpus: 2 },
    { image: 'debian-12', memoryMiB: 2048 },
    { image: 'debian-12', name: 'other' },
    { image: 'debian-12', user: 'alice' },
    { image: 'debian-12', cloudConfig: { packages: ['curl'] } },
    { image: 'debian-12', accel: 'tcg' as const },
  ]) {
    expect(key(other), JSON.stringify(other)).not.toBe(basic);
  }
  // Specs that did not ask for a name get random ones; those names alone do not make another template.
  const unnamed = (spec: Parameters<typeof resolveSpec>[0]) => templateKey(resolveSpec(spec), { anyName: true });
  expect(unnamed({ image: 'debian-12' })).toBe(unnamed({ image: 'debian-12' }));
  expect(unnamed({ image: 'debian-12' })).not.toBe(unnamed({ image: 'debian-12', cpus: 2 }));
  expect(templateKey(resolveSpec({ image: 'debian-12' }))).not.toBe(templateKey(resolveSpec({ image: 'debian-12' })));
});

test('guestFixture takes clone: true/false and refuses anything else', () => {
  expect(guestFixture({ image: 'debian-12' }, { scope: 'test', clone: false })[1]).toEqual({ scope: 'test' });
  expect(guestFixture({ image: 'debian-12' }, { clone: true })[1]).toEqual({ scope: 'file' });
  expect(() => guestFixture({ image: 'debian-12' }, { clone: 'yes' as unknown as boolean })).toThrow(/Expected `clone` to be true or false, got "yes"/);
});

test('only builtins that change nothing in the shell, with nothing around them, skip the subshell', () => {
  for (const argv of [['true'], ['false'], [':'], ['test', '-e', '/x'], ['[', '-d', '/', ']'], ['echo', 'a b'], ['printf', '%s', 'x'], ['pwd']]) {
    expect(isStatelessBuiltin(argv, {}), argv.join(' ')).toBe(true);
  }
  for (const argv of [['cd', '/'], ['export', 'A=1'], ['exit', '3'], ['read', 'x'], ['/bin/true'], ['printf', '-v', 'x', 'y'], ['eval', 'x'], ['.', 'f'], []]) {
    expect(isStatelessBuiltin(argv, {}), argv.join(' ')).toBe(false);
  }
  for (const options of [{ sudo: true }, { timeoutMs: 1000 }, { env: { A: '1' } }, { cwd: '/' }]) {
    expect(isStatelessBuiltin(['true'], options), JSON.stringify(options)).toBe(false);
  }
});
