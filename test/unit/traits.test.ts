// Release facts live in one table; every shipped recipe names a suite that table knows, and the
// recipes carry what differs between releases.
import path from 'node:path';
import { expect, test } from 'vitest';
import { listRecipes, loadRecipe } from '../../src/images/recipe.ts';
import { describeRelease, distroTraits, KNOWN_SUITES } from '../../src/images/traits.ts';

const shipped = [path.resolve('images')];

test('every shipped recipe names a known suite, and each release it names is described', async () => {
  const suites = new Map<string, string>();
  for (const [name, file] of await listRecipes(shipped)) suites.set(name, (await loadRecipe(file, shipped)).suite);
  expect(Object.fromEntries(suites)).toMatchObject({ 'debian-11': 'bullseye', 'debian-12': 'bookworm', 'debian-12-web': 'bookworm', 'debian-13': 'trixie' });
  for (const suite of suites.values()) expect(KNOWN_SUITES).toContain(suite);
  expect(describeRelease('trixie')).toBe('Debian 13 (trixie)');
  expect(describeRelease('sid')).toBe('sid');
  expect(distroTraits('sid')).toBeUndefined();
});

test("releases whose cloud-init renamed its network stage order sshd after the new unit", async () => {
  for (const [name, file] of await listRecipes(shipped)) {
    const recipe = await loadRecipe(file, shipped);
    const unit = distroTraits(recipe.suite)!.cloudInitNetworkUnit;
    const ordering = recipe.files.filter((f) => f.path.startsWith('/etc/systemd/system/ssh.service.d/')).map((f) => f.content).join('\n');
    expect(ordering, name).toMatch(new RegExp(`^After=${unit.replace('.', '\\.')}$`, 'm'));
  }
});
