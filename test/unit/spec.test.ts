import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ConfigFileError } from '../../src/errors.ts';
import { loadFixture, resolveSpec } from '../../src/guest/spec.ts';
import { resolveRecipe, UnknownImageError } from '../../src/images/catalog.ts';

describe('resolveSpec', () => {
  test('fills the defaults', () => {
    const spec = resolveSpec({ image: 'debian-12' });
    expect(spec).toMatchObject({ image: 'debian-12', cpus: 1, memoryMiB: 1024, accel: 'auto', user: 'guestlab' });
    expect(spec.name).toMatch(/^debian-12-[0-9a-f]{6}$/);
  });

  test.each([
    [{ cpus: 0 }, 'Expected `cpus` to be a positive integer, got 0 (number)'],
    [{ cpus: 1.5 }, 'Expected `cpus` to be a positive integer, got 1.5 (number)'],
    [{ memoryMiB: 'x' }, 'Expected `memoryMiB` to be a positive integer, got "x" (string)'],
    [{ accel: 'hvf' }, "Expected `accel` to be one of 'auto', 'kvm', 'tcg', got \"hvf\" (string)"],
    [{ name: 'Bad_Name' }, 'Invalid `name` "Bad_Name" (string): use lowercase letters'],
    [{ cloudConfig: 'x' }, 'Expected `cloudConfig` to be a plain object'],
    [{ memory: 1 }, 'Unknown guest spec option `memory`'],
    [{ internet: 'no' }, 'Expected `internet` to be true or false, got "no" (string)'],
  ])('%o is refused with a TypeError naming the option', (bad, message) => {
    expect(() => resolveSpec({ image: 'debian-12', ...(bad as object) })).toThrow(TypeError);
    expect(() => resolveSpec({ image: 'debian-12', ...(bad as object) })).toThrow(message);
  });

  test.each([
    [{ cloudConfig: { ssh_keys: {} } }, /^`cloudConfig\.ssh_keys` cannot be set: guestlab injects a per-guest host key and pins it\. Remove it from cloudConfig; read the pinned key from guest\.ssh\.hostKey\.$/],
    [{ cloudConfig: { ssh_genkeytypes: ['rsa'] } }, /^`cloudConfig\.ssh_genkeytypes` cannot be set/],
    [{ cloudConfig: { users: [{ name: 'guestlab', groups: ['adm'] }] } }, /^`cloudConfig\.users\[0\]` redefines "guestlab", guestlab's login user, .* pick the login user's name with the spec's `user` option\.$/],
    [{ user: 'alice', cloudConfig: { users: ['default', 'alice'] } }, /^`cloudConfig\.users\[1\]` redefines "alice", guestlab's login user/],
    [{ cloudConfig: { users: 'default, guestlab' } }, /^`cloudConfig\.users` redefines "guestlab"/],
    [{ cloudConfig: { users: { alice: { shell: '/bin/sh' } } } }, /^`cloudConfig\.users` must be a list .*got \{"alice":\{"shell":"\/bin\/sh"\}\}; cloud-init's mapping form is deprecated\. Write e\.g\. users: \['default', \{ name: 'alice' \}\]\.$/],
    [{ cloudConfig: { users: [42] } }, /^`cloudConfig\.users\[0\]` must be 'default', a user name or a mapping with a `name` \(cloud-init's users format\), got 42$/],
  ])('cloudConfig %o is refused before anything starts, naming the key and the fix', (bad, message) => {
    expect(() => resolveSpec({ image: 'debian-12', ...(bad as object) })).toThrow(message);
  });

  test('a spec without an image is refused', () => {
    expect(() => resolveSpec({} as never)).toThrow('Expected `image` to be a non-empty string, got undefined');
  });
});

describe('fixtures and recipes from YAML', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ path: root, cleanup } = await dir({ unsafeCleanup: true }));
    await fs.writeFile(path.join(root, 'web.yaml'), 'image: debian-12\ncpus: 2\ncloudConfig:\n  packages: [nginx]\n');
    await fs.writeFile(path.join(root, 'broken.yaml'), 'image: debian-12\ncpus: [2\n');
    await fs.writeFile(path.join(root, 'badcpu.yaml'), 'image: debian-12\n\ncpus: -1\n');
    await fs.writeFile(path.join(root, 'tiny.yaml'), 'suite: bookworm\nkernel: linux-image-cloud-amd64\npackages:\n  - ok\n  - "Bad Name"\n');
  });
  afterAll(() => cleanup());

  test('a fixture loads by name', async () => {
    await expect(loadFixture('web', [root])).resolves.toEqual({ image: 'debian-12', cpus: 2, cloudConfig: { packages: ['nginx'] } });
  });

  test('bad YAML names the file and line', async () => {
    const error = await loadFixture('broken', [root]).catch((e) => e);
    expect(error).toBeInstanceOf(ConfigFileError);
    expect(error.message).toMatch(new RegExp(`^${root}/broken\\.yaml:\\d+: invalid YAML`));
  });

  test('an invalid option names the file, the line and the option', async () => {
    const error = await loadFixture('badcpu', [root]).catch((e) => e);
    expect(error.message).toBe(`${root}/badcpu.yaml:3: \`cpus\` Expected \`cpus\` to be a positive integer, got -1 (number)`);
  });

  test('an unknown fixture lists the known ones', async () => {
    await expect(loadFixture('nope', [root])).rejects.toThrow(/Unknown guest fixture "nope". Known fixtures: .*badcpu.*web/);
  });

  test('an unknown image lists the known images and where recipes go', async () => {
    const error = await resolveRecipe('debian-99', [root]).catch((e) => e);
    expect(error).toBeInstanceOf(UnknownImageError);
    expect(error.message).toContain('Unknown image "debian-99". Known images: badcpu, broken, tiny, web.');
    expect(error.message).toContain(root);
  });

  test('a recipe with a bad package name points at its line', async () => {
    await expect(resolveRecipe('tiny', [root])).rejects.toThrow(`${root}/tiny.yaml:5: \`packages.1\` "Bad Name" is not a valid Debian package name`);
  });
});
