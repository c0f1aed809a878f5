// src/index.ts is the contract: what the README documents, every error class, and no internals.
import fs from 'node:fs/promises';
import { describe, expect, test } from 'vitest';
import * as errors from '../../src/errors.ts';
import * as api from '../../src/index.ts';

describe('the public API', () => {
  test('exports every error class of src/errors/, the very same classes', () => {
    const classes = Object.entries(errors).filter(([, value]) => typeof value === 'function' && (value === errors.GuestlabError || value.prototype instanceof errors.GuestlabError));
    expect(classes.length).toBeGreaterThan(20);
    for (const [name, value] of classes) expect(api, name).toHaveProperty(name, value);
  });

  test('exports every name the README imports from \'guestlab\' and every error it names', async () => {
    const readme = await fs.readFile('README.md', 'utf8');
    const imported = [...readme.matchAll(/import\s*(?:type\s*)?\{([^}]*)\}\s*from\s*'guestlab'/g)].flatMap((m) => m[1]!.split(',').map((n) => n.trim().replace(/^type\s+/, '')));
    const values = imported.filter((name) => name !== 'StartedGuest' && name !== 'GuestSpec'); // types: erased at run time
    const namedErrors = [...new Set([...readme.matchAll(/\b([A-Z][A-Za-z]+Error)\b/g)].map((m) => m[1]!))].filter((name) => !(name in globalThis));
    expect(values.length).toBeGreaterThan(2);
    for (const name of [...values, ...namedErrors, 'templateKey', 'distroTraits']) expect(api, name).toHaveProperty(name);
  });

  test('leaves internals out', () => {
    for (const name of ['resolveImage', 'findOvmf', 'pullFile', 'quoteArg', 'quoteArgv', 'loadFixture', 'imageCacheKey', 'listCachedImages', 'verifyCachedImages', 'removeImages', 'formatDiff', 'describeRelease', 'KNOWN_SUITES', 'validateEnvironment', 'readEnv']) {
      expect(api, name).not.toHaveProperty(name);
    }
  });
});
