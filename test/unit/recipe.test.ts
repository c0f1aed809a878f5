import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { customizeScript } from '../../src/images/builder.ts';
import { resolveRecipe } from '../../src/images/catalog.ts';
import { parseRecipe, recipeHash } from '../../src/images/recipe.ts';
import { parseYamlText } from '../../src/util/yaml-file.ts';

const recipe = (text: string) => parseRecipe(parseYamlText('/r/test.yaml', text));

describe('image recipes', () => {
  test('the shipped debian-12 recipe has what cloud-init needs to finish with status done', async () => {
    const debian = await resolveRecipe('debian-12', [path.resolve('images')]);
    expect(debian.suite).toBe('bookworm');
    expect(debian.packages).toEqual(expect.arrayContaining(['cloud-init', 'openssh-server', 'sudo', 'e2fsprogs', 'locales']));
  });

  test('defaults and file modes', () => {
    const r = recipe('suite: bookworm\nkernel: linux-image-amd64\nfiles:\n  - path: /etc/x\n    content: hi\n    mode: "0600"\n');
    expect(r).toMatchObject({ name: 'test', mirror: 'http://deb.debian.org/debian', components: ['main'], diskSizeGiB: 3 });
    expect(r.files).toEqual([{ path: '/etc/x', content: 'hi', mode: 0o600 }]);
  });

  test.each([
    ['kernel: k\n', /`suite` must be a non-empty string/],
    ['suite: s\nkernel: k\nsize: 3\n', /:3: `size` is not a recipe field/],
    ['suite: s\nkernel: k\ndiskSizeGiB: 0.5\n', /:3: `diskSizeGiB` must be a whole number/],
    ['suite: s\nkernel: k\nfiles:\n  - path: ../etc\n    content: x\n', /:4: `files.0.path` must be an absolute path/],
    ['suite: s\nkernel: k\nfiles:\n  - path: /x\n    content: x\n    mode: rwx\n', /:6: `files.0.mode` must be an octal mode/],
  ])('refuses %j', (text, message) => {
    expect(() => recipe(text)).toThrow(message);
  });

  test('the hash follows the content, not comments, description or kernel command line', () => {
    const a = recipe('suite: bookworm\nkernel: k\npackages: [aa]\n');
    expect(recipeHash(recipe('# note\ndescription: x\nsuite: bookworm\nkernel: k\npackages: [aa]\ncmdline: quiet\n'))).toBe(recipeHash(a));
    expect(recipeHash(recipe('suite: bookworm\nkernel: k\npackages: [aa, bb]\n'))).not.toBe(recipeHash(a));
  });

  test('the customize hook quotes every path and command and removes baked-in host keys', () => {
    const r = recipe("suite: s\nkernel: k\nfiles:\n  - path: /etc/it's\n    content: x\ncommands:\n  - echo '$(x)'\n");
    const script = customizeScript(r, '/work/files');
    expect(script).toContain(`install -D -m 0644 /work/files/0 "$root"'/etc/it'\\''s'`);
    expect(script).toContain(`chroot "$root" /bin/sh -ec 'echo '\\''$(x)'\\'''`);
    expect(script).toContain('rm -f "$root"/etc/ssh/ssh_host_*');
  });
});
