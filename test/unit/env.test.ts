// The GUESTLAB_* variables: one registry, strict parsers, messages that name the variable, the
// value as given and the fix, and validateEnvironment() reporting every bad one at once.
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, test, vi } from 'vitest';
import { ENVIRONMENT, likelyMeant, readEnv, validateEnvironment } from '../../src/env.ts';
import { guestlabPaths } from '../../src/config.ts';
import { EnvironmentError } from '../../src/errors.ts';
import { detectLimits } from '../../src/budget/limits.ts';

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('whole numbers', () => {
  test.each(['abc', '0x10', '1e3', ' 4', '4 ', '2.5', '-1', '+2', '１'])('GUESTLAB_BUDGET_CPUS=%j is refused as given, with the fix', (value) => {
    expect(() => readEnv('GUESTLAB_BUDGET_CPUS', { GUESTLAB_BUDGET_CPUS: value })).toThrow(new RegExp(
      `^GUESTLAB_BUDGET_CPUS is ${escape(JSON.stringify(value))}, not a whole number \\(decimal digits only\\): ` +
        'unset it \\(the budget has the CPUs this host and its cgroup give\\) or set it to a whole number of CPUs, e\\.g\\. 2\\.$',
    ));
  });

  test('zero is below the minimum, and the message says so', () => {
    expect(() => readEnv('GUESTLAB_MIN_FREE_DISK_MIB', { GUESTLAB_MIN_FREE_DISK_MIB: '0' })).toThrow(
      /^GUESTLAB_MIN_FREE_DISK_MIB is "0", below 1: unset it \(a boot needs 2048 MiB free\) or set it to a whole number of MiB, e\.g\. 2048\.$/,
    );
  });

  test('decimal digits are read as such; unset and empty are unset', () => {
    expect(readEnv('GUESTLAB_BUDGET_CPUS', { GUESTLAB_BUDGET_CPUS: '16' })).toBe(16);
    expect(readEnv('GUESTLAB_BUDGET_MEMORY_MIB', { GUESTLAB_BUDGET_MEMORY_MIB: '010' })).toBe(10);
    expect(readEnv('GUESTLAB_BUDGET_CPUS', {})).toBeUndefined();
    expect(readEnv('GUESTLAB_BUDGET_CPUS', { GUESTLAB_BUDGET_CPUS: '' })).toBeUndefined();
  });

  test('the budget reads through it: "abc" is named, never "NaN"', async () => {
    const error = await detectLimits({ GUESTLAB_BUDGET_CPUS: 'abc' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EnvironmentError);
    expect((error as Error).message).toMatch(/^GUESTLAB_BUDGET_CPUS is "abc", not a whole number/);
    expect((error as Error).message).not.toMatch(/NaN/);
    expect(error).toMatchObject({ code: 'ERR_ENVIRONMENT', problems: [{ variable: 'GUESTLAB_BUDGET_CPUS', value: 'abc' }] });
  });
});

describe('numbers, enums and flags', () => {
  test('factors take plain decimals', () => {
    expect(readEnv('GUESTLAB_TIMEOUT_SCALE', { GUESTLAB_TIMEOUT_SCALE: '2.5' })).toBe(2.5);
    expect(readEnv('GUESTLAB_TIMEOUT_SCALE', { GUESTLAB_TIMEOUT_SCALE: '.5' })).toBe(0.5);
    expect(() => readEnv('GUESTLAB_TIMEOUT_SCALE', { GUESTLAB_TIMEOUT_SCALE: 'fast' })).toThrow(
      /^GUESTLAB_TIMEOUT_SCALE is "fast", not a decimal number: unset it \(the factor is 1 under KVM and 5 under TCG\) or set it to a positive number, e\.g\. 2\.5\.$/,
    );
    expect(() => readEnv('GUESTLAB_TIMEOUT_SCALE', { GUESTLAB_TIMEOUT_SCALE: '0' })).toThrow(/^GUESTLAB_TIMEOUT_SCALE is "0", not above 0: /);
    expect(() => readEnv('GUESTLAB_TIMEOUT_SCALE', { GUESTLAB_TIMEOUT_SCALE: '1e1' })).toThrow(/^GUESTLAB_TIMEOUT_SCALE is "1e1", not a decimal number/);
    expect(() => readEnv('GUESTLAB_BUDGET_CPU_OVERCOMMIT', { GUESTLAB_BUDGET_CPU_OVERCOMMIT: '0.5' })).toThrow(
      /^GUESTLAB_BUDGET_CPU_OVERCOMMIT is "0.5", below 1: unset it \(the factor is 2\) or set it to a number of at least 1, e\.g\. 1\.5\.$/,
    );
  });

  test('GUESTLAB_KEEP names its values', () => {
    expect(readEnv('GUESTLAB_KEEP', { GUESTLAB_KEEP: 'on-failure' })).toBe('on-failure');
    expect(() => readEnv('GUESTLAB_KEEP', { GUESTLAB_KEEP: 'yes' })).toThrow(
      /^GUESTLAB_KEEP is "yes", not one of never, on-failure: unset it \(guests are stopped after every test\) or set it to "never" or "on-failure"\.$/,
    );
  });

  test('flags are 1 or 0: "true" would have been ignored before, so it is refused', () => {
    expect(readEnv('GUESTLAB_OFFLINE', { GUESTLAB_OFFLINE: '1' })).toBe(true);
    expect(readEnv('GUESTLAB_OFFLINE', { GUESTLAB_OFFLINE: '0' })).toBe(false);
    expect(() => readEnv('GUESTLAB_OFFLINE', { GUESTLAB_OFFLINE: 'true' })).toThrow(
      /^GUESTLAB_OFFLINE is "true", not 1 or 0: unset it \(images are downloaded when needed\) or set it to "1" or "0" \(1 to turn it on\)\.$/,
    );
    expect(readEnv('GUESTLAB_DEBUG', { GUESTLAB_DEBUG: 'false' })).toBe(false);
    expect(() => readEnv('GUESTLAB_DEBUG', { GUESTLAB_DEBUG: 'yes' })).toThrow(/^GUESTLAB_DEBUG is "yes", not 1 or 0 or true or false: /);
  });
});

describe('paths', () => {
  test('are resolved against the working directory, as before', () => {
    expect(readEnv('GUESTLAB_BUDGET_DIR', { GUESTLAB_BUDGET_DIR: 'rel/b' })).toBe(path.resolve('rel/b'));
    expect(readEnv('GUESTLAB_IMAGES_PATH', { GUESTLAB_IMAGES_PATH: `/a${path.delimiter}${path.delimiter}rel` })).toEqual(['/a', path.resolve('rel')]);
  });

  test('a "~" the shell did not expand is refused instead of becoming a directory named ~', () => {
    expect(() => guestlabPaths({ GUESTLAB_CACHE_DIR: '~/cache' })).toThrow(
      /^GUESTLAB_CACHE_DIR is "~\/cache", a path starting with "~", which only a shell expands: unset it \(the cache is \$XDG_CACHE_HOME\/guestlab\) or set it to an absolute path/,
    );
    expect(() => readEnv('GUESTLAB_FIXTURES_PATH', { GUESTLAB_FIXTURES_PATH: '/ok:~/specs' })).toThrow(/^GUESTLAB_FIXTURES_PATH is "\/ok:~\/specs", its entry "~\/specs" is a path starting with "~"/);
  });
});

describe('validateEnvironment', () => {
  test('reports every bad variable at once, in one EnvironmentError', () => {
    const env = { GUESTLAB_BUDGET_CPUS: '0x10', GUESTLAB_KEEP: 'always', GUESTLAB_OVMF_CODE: '/usr/share/OVMF/OVMF_CODE.fd', GUESTLAB_QUIET: '1' };
    const error = (() => {
      try {
        validateEnvironment(env, () => undefined);
      } catch (e) {
        return e as EnvironmentError;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(EnvironmentError);
    expect(error!.problems.map((p) => p.variable)).toEqual(['GUESTLAB_BUDGET_CPUS', 'GUESTLAB_KEEP', 'GUESTLAB_OVMF_CODE']);
    expect(error!.message).toMatch(/^3 GUESTLAB_\* variables have values guestlab refuses:\n {2}- GUESTLAB_BUDGET_CPUS is "0x10", .*\n {2}- GUESTLAB_KEEP is "always", .*\n {2}- GUESTLAB_OVMF_CODE is set but GUESTLAB_OVMF_VARS is not: set both \(the firmware code and its variable store\) or neither\.$/);
  });

  test('passes a good environment, and says nothing about names it does not know', () => {
    const warn = vi.fn();
    expect(() => validateEnvironment({ GUESTLAB_BUDGET_CPUS: '2', GUESTLAB_KEEP: 'on-failure', GUESTLAB_MY_SUITE_FLAG: 'x', HOME: '/root' }, warn)).not.toThrow();
    expect(warn).not.toHaveBeenCalled();
  });

  test('warns once about a name that looks like a misspelt variable', () => {
    const warn = vi.fn();
    validateEnvironment({ GUESTLAB_INSTANCE_DIR: '/tmp/x' }, warn);
    validateEnvironment({ GUESTLAB_INSTANCE_DIR: '/tmp/x' }, warn);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn).toHaveBeenCalledWith('GUESTLAB_INSTANCE_DIR is not a variable guestlab reads; did you mean GUESTLAB_INSTANCES_DIR? (it is ignored)');
    expect(likelyMeant('GUESTLAB_BUDGET_CPU')).toBe('GUESTLAB_BUDGET_CPUS');
    expect(likelyMeant('GUESTLAB_KEPE')).toBe('GUESTLAB_KEEP');
    expect(likelyMeant('GUESTLAB_SOMETHING_ELSE')).toBeUndefined();
  });
});

describe('the registry is the only list', () => {
  test('the README\'s Environment table names exactly the registered variables', async () => {
    const readme = await fs.readFile('README.md', 'utf8');
    const table = readme.slice(readme.indexOf('## Environment'), readme.indexOf('\n## ', readme.indexOf('## Environment') + 1));
    const rows = table.split('\n').filter((line) => line.startsWith('| `'));
    const documented = new Set(rows.flatMap((row) => [...row.matchAll(/`(GUESTLAB_[A-Z_]+)/g)].map((m) => m[1])));
    expect([...documented].sort()).toEqual(Object.keys(ENVIRONMENT).sort());
  });

  test('every GUESTLAB_* name in src/ is a registered variable (no misspelt name in a message or a read)', async () => {
    const unknown: string[] = [];
    for (const file of await sourceFiles()) {
      const text = await fs.readFile(file, 'utf8');
      for (const [name, family] of text.matchAll(/GUESTLAB_[A-Z_]*[A-Z](_\*)?/g)) {
        const known = family ? Object.keys(ENVIRONMENT).some((n) => n.startsWith(name.slice(0, -1))) : name in ENVIRONMENT;
        if (!known) unknown.push(`${file}: ${name}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  // Files outside this change that still read their variable themselves; each is to read it through
  // src/env.ts (readEnv), and then leaves this list.
  const NOT_YET_THROUGH_ENV: string[] = [];

  test('only src/env.ts reads GUESTLAB_* variables from the environment', async () => {
    const readers: string[] = [];
    for (const file of await sourceFiles()) {
      if (file === 'src/env.ts') continue;
      const text = await fs.readFile(file, 'utf8');
      if (/\benv\s*(?:\.\s*GUESTLAB_|\[\s*['"`]GUESTLAB_)|\{[^}]*\bGUESTLAB_[A-Z_]+\s*(?::[^}]*)?\}\s*=\s*(?:process\.)?env\b/.test(text)) readers.push(file);
    }
    // A file that reads through readEnv() now leaves NOT_YET_THROUGH_ENV: the list only shrinks.
    expect(readers).toEqual(NOT_YET_THROUGH_ENV);
  });
});

async function sourceFiles(): Promise<string[]> {
  const entries = await fs.readdir('src', { recursive: true });
  return entries.filter((f) => f.endsWith('.ts')).map((f) => path.join('src', f)).sort();
}
