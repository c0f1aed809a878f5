import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ConfigFileError } from '../../src/errors.ts';
import { resolveRecipe } from '../../src/images/catalog.ts';
import { loadRecipe, recipeHash } from '../../src/images/recipe.ts';

let dir: string;
let other: string;
const write = (name: string, text: string, where = dir) => fs.writeFile(path.join(where, `${name}.yaml`), text);

const BASE = `description: the base
suite: bookworm
kernel: linux-image-amd64
components: [main, contrib]
packages: [systemd-sysv, curl]
cmdline: console=ttyS0 quiet
files:
  - path: /etc/base
    content: base
commands: [echo base]
`;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-recipes-'));
  other = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-recipes-'));
  await write('base', BASE);
  await write('child', `extends: base
description: the child
mirror: http://mirror.example/debian
components: [main]
diskSizeGiB: 5
packages: [jq]
offlinePackages: [nginx-light]
files:
  - path: /etc/child
    content: child
    mode: "0600"
commands: [echo child]
`);
  await write('grandchild', 'extends: child\nofflinePackages: [redis-server]\n');
  await write('bare', 'extends: base\n');
  await write('loop-a', 'suite: s\nkernel: k\nextends: loop-b\n');
  await write('loop-b', '# b\nextends: loop-a\n');
  await write('self', 'extends: self\n');
  await write('orphan', 'description: x\nextends: debian-99\n');
  // A parent found in another directory of the search path.
  await write('far', 'extends: base\n', other);
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
  await fs.rm(other, { recursive: true, force: true });
});

describe('recipe inheritance', () => {
  test('scalars override, lists append, components replace, description is not inherited', async () => {
    const child = await resolveRecipe('child', [dir]);
    expect(child).toEqual({
      name: 'child',
      source: path.join(dir, 'child.yaml'),
      parent: 'base',
      description: 'the child',
      suite: 'bookworm',
      mirror: 'http://mirror.example/debian',
      components: ['main'],
      kernel: 'linux-image-amd64',
      packages: ['systemd-sysv', 'curl', 'jq'],
      offlinePackages: ['nginx-light'],
      diskSizeGiB: 5,
      cmdline: 'console=ttyS0 quiet',
      files: [
        { path: '/etc/base', content: 'base', mode: 0o644 },
        { path: '/etc/child', content: 'child', mode: 0o600 },
      ],
      commands: ['echo base', 'echo child'],
      boot: 'kernel',
      features: [],
    });
    const bare = await resolveRecipe('bare', [dir]);
    expect(bare.description).toBe('');
    expect(bare).toMatchObject({ mirror: 'http://deb.debian.org/debian', diskSizeGiB: 3, components: ['main', 'contrib'] });
  });

  test('chains of parents resolve, also across the directories of the search path', async () => {
    const grandchild = await resolveRecipe('grandchild', [dir]);
    expect(grandchild).toMatchObject({ parent: 'child', offlinePackages: ['nginx-light', 'redis-server'], packages: ['systemd-sysv', 'curl', 'jq'] });
    expect((await loadRecipe(path.join(other, 'far.yaml'), [other, dir])).packages).toEqual(['systemd-sysv', 'curl']);
  });

  test('a cycle names every file in it and the line of the extends that closes it', async () => {
    const error = await resolveRecipe('loop-a', [dir]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigFileError);
    expect((error as Error).message).toBe(
      `${dir}/loop-b.yaml:2: \`extends\` makes a cycle of recipes: ${dir}/loop-a.yaml -> ${dir}/loop-b.yaml -> ${dir}/loop-a.yaml. Remove \`extends\` from one of them.`,
    );
    await expect(resolveRecipe('self', [dir])).rejects.toThrow(`${dir}/self.yaml:1: \`extends\` makes a cycle of recipes: ${dir}/self.yaml -> ${dir}/self.yaml.`);
  });

  test('an unknown parent names the file, the line, the directories searched and the fix', async () => {
    const error = await resolveRecipe('orphan', [dir]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigFileError);
    expect((error as Error).message).toMatch(
      new RegExp(`^${dir}/orphan\\.yaml:2: \`extends\` names "debian-99", but no recipe of that name is in ${dir} \\(known: .*base.*\\)\\. ` +
        'Fix the name, or add debian-99\\.yaml to one of those directories\\.$'),
    );
  });

  test('the digest covers the merged content: a change in the parent rebuilds the child, its description does not', async () => {
    const before = recipeHash(await resolveRecipe('child', [dir]));
    await write('base', BASE.replace('the base', 'reworded'));
    expect(recipeHash(await resolveRecipe('child', [dir]))).toBe(before);
    await write('base', BASE.replace('[systemd-sysv, curl]', '[systemd-sysv, curl, less]'));
    expect(recipeHash(await resolveRecipe('child', [dir]))).not.toBe(before);
    await write('base', BASE);
    expect(recipeHash(await resolveRecipe('child', [dir]))).toBe(before);
  });
});
