import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { customizeScript, DIVERT_INITRAMFS_HOOK, OFFLINE_APT_SOURCE, OFFLINE_REPO_SCRIPT, OFFLINE_SOURCES_FILE } from '../../src/images/builder.ts';
import { resolveRecipe } from '../../src/images/catalog.ts';
import { parseRecipe, recipeContentHash, recipeHash } from '../../src/images/recipe.ts';
import { initSourceDigestSync } from '../../src/images/initramfs.ts';
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
    ['suite: s\nkernel: k\nofflinePackages: nginx\n', /:3: `offlinePackages` must be a list of strings/],
    ['suite: s\nkernel: k\nofflinePackages:\n  - nginx-light\n  - Nginx\n', /:5: `offlinePackages.1` "Nginx" is not a valid Debian package name/],
    ['suite: s\nkernel: k\npackages: [curl]\nofflinePackages:\n  - curl\n', /:5: `offlinePackages.0` "curl" is in both `packages` and `offlinePackages`/],
    ['suite: s\nkernel: k\nextends: Debian 12\n', /:3: `extends` must be the name of another recipe, such as debian-12, got "Debian 12"/],
    ['suite: s\nkernel: k\nextends: base\n', /:3: `extends` needs the recipe "base": read this file with loadRecipe\(\)/],
  ])('refuses %j', (text, message) => {
    expect(() => recipe(text)).toThrow(message);
  });

  test('offlinePackages are package names, empty by default', () => {
    expect(recipe('suite: s\nkernel: k\n').offlinePackages).toEqual([]);
    expect(recipe('suite: s\nkernel: k\nofflinePackages: [nginx-light, libstdc++6]\n').offlinePackages).toEqual(['nginx-light', 'libstdc++6']);
  });

  test('the hash follows the content, not comments, description or kernel command line', () => {
    const a = recipe('suite: bookworm\nkernel: k\npackages: [aa]\n');
    expect(recipeHash(recipe('# note\ndescription: x\nsuite: bookworm\nkernel: k\npackages: [aa]\ncmdline: quiet\n'))).toBe(recipeHash(a));
    expect(recipeHash(recipe('suite: bookworm\nkernel: k\npackages: [aa, bb]\n'))).not.toBe(recipeHash(a));
    expect(recipeHash(recipe('suite: bookworm\nkernel: k\npackages: [aa]\nofflinePackages: [bb]\n'))).not.toBe(recipeHash(a));
  });

  test('recipes without offlinePackages or extends keep the digest they had before those fields existed', () => {
    // Computed before the fields were added: a change here rebuilds every cached image.
    const r = parseRecipe(parseYamlText('/r/pin.yaml', 'suite: bookworm\nkernel: linux-image-cloud-amd64\npackages: [cloud-init]\nfiles:\n  - path: /etc/x\n    content: hi\ncommands: [echo hi]\n'));
    expect(recipeContentHash(r)).toBe('783858ef1af05cb9dea3e7c239c4cc520e6e32ea61168dbe22d34cd8f65014c4');
    // The image also holds guestlab's initramfs: its source is part of the full digest.
    expect(recipeHash(r)).toBe(createHash('sha256').update(`${recipeContentHash(r)}\0initramfs:${initSourceDigestSync()}`).digest('hex'));
    expect(customizeScript(r, '/F')).not.toContain('offline');
  });

  test('the shipped debian-12-web recipe is debian-12 plus nginx-light offline', async () => {
    const dirs = [path.resolve('images')];
    const [base, web] = await Promise.all([resolveRecipe('debian-12', dirs), resolveRecipe('debian-12-web', dirs)]);
    expect(web).toMatchObject({ parent: 'debian-12', offlinePackages: ['nginx-light'], packages: base.packages, files: base.files, commands: base.commands });
    expect(web.description).toMatch(/nginx-light available offline/);
    expect(base.offlinePackages).toEqual([]);
    expect(recipeHash(web)).not.toBe(recipeHash(base));
  });

  test('the customize hook quotes every path and command and removes baked-in host keys', () => {
    const r = recipe("suite: s\nkernel: k\nfiles:\n  - path: /etc/it's\n    content: x\ncommands:\n  - echo '$(x)'\n");
    const script = customizeScript(r, '/work/files');
    expect(script).toContain(`install -D -m 0644 /work/files/0 "$root"'/etc/it'\\''s'`);
    expect(script).toContain(`chroot "$root" /bin/sh -ec 'echo '\\''$(x)'\\'''`);
    expect(script).toContain('rm -f "$root"/etc/ssh/ssh_host_*');
  });

  test('a directly booted image skips Debian’s initramfs while it is built, and gets update-initramfs back in the customize hook', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'gl-divert-'));
    try {
      // The essential hook, with chroot replaced by a printer of its argv, on a scratch root.
      const out = execFileSync('sh', ['-c', `chroot() { printf '%s\\0' "$@"; }\n${DIVERT_INITRAMFS_HOOK}`, 'sh', root], { encoding: 'utf8' });
      expect(out.split('\0').slice(0, -1)).toEqual([root, 'dpkg-divert', '--quiet', '--local', '--rename', '--divert', '/usr/sbin/update-initramfs.guestlab-build', '--add', '/usr/sbin/update-initramfs']);
      const stub = path.join(root, 'usr/sbin/update-initramfs');
      expect((await fs.stat(stub)).mode & 0o777).toBe(0o755);
      expect(execFileSync(stub, ['-c', '-k', '6.1.0'], { encoding: 'utf8' })).toBe('');
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
    const kernel = customizeScript(recipe('suite: s\nkernel: k\n'), '/F');
    expect(kernel).toContain('rm -f "$root"/usr/sbin/update-initramfs\nchroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs');
    expect(customizeScript(recipe('suite: s\nkernel: k\nboot: firmware\n'), '/F')).not.toContain('update-initramfs');
  });

  test('the customize hook builds the offline repository last, with the script and package names as separate words', () => {
    const r = recipe('suite: s\nkernel: k\ncommands: [apt-get purge -y nano]\nofflinePackages: [nginx-light, libstdc++6]\n');
    const lines = customizeScript(r, '/work/files').split('\n');
    const start = lines.findIndex((line) => line.includes('guestlab/offline-apt'));
    expect(start).toBeGreaterThan(lines.findIndex((line) => line.includes('apt-get purge')));
    // Let a real shell parse the hook's last command, with chroot replaced by a printer of its argv.
    const hookTail = lines.slice(start).join('\n');
    const argv = execFileSync('sh', ['-c', `chroot() { printf '%s\\0' "$@"; }\nroot=/R\n${hookTail}`], { encoding: 'utf8' }).split('\0').slice(0, -1);
    expect(argv).toEqual(['/R', '/bin/sh', '-ec', OFFLINE_REPO_SCRIPT, 'guestlab-offline-apt', 'nginx-light', 'libstdc++6']);
  });

  test('the offline repository script downloads outside the cleaned apt cache and adds a trusted flat source', () => {
    expect(OFFLINE_APT_SOURCE).toBe('deb [trusted=yes] file:/var/lib/guestlab/offline-apt ./');
    expect(OFFLINE_REPO_SCRIPT).toContain('apt-get install --download-only --yes --quiet -o APT::Install-Recommends=true -o Dir::Cache::archives="$repo/" "$@"');
    expect(OFFLINE_REPO_SCRIPT).toContain(`echo '${OFFLINE_APT_SOURCE}' > ${OFFLINE_SOURCES_FILE}`);
    expect(OFFLINE_REPO_SCRIPT).not.toContain('/var/cache/apt');
    // The script must be valid POSIX shell.
    execFileSync('sh', ['-n', '-c', OFFLINE_REPO_SCRIPT]);
  });
});
