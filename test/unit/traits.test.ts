// Release facts live in one table; every shipped recipe names a suite that table knows, and the
// recipes carry what differs between releases.
import path from 'node:path';
import { expect, test } from 'vitest';
import { listImageFiles, loadEntry } from '../../src/images/catalog.ts';
import type { ImageRecipe } from '../../src/images/recipe.ts';
import { describeRelease, distroTraits, KNOWN_SUITES } from '../../src/images/traits.ts';

const shipped = [path.resolve('images')];

/** The shipped recipes (download entries carry no suite: they are what they are). */
async function shippedRecipes(): Promise<Map<string, ImageRecipe>> {
  const recipes = new Map<string, ImageRecipe>();
  for (const file of (await listImageFiles(shipped)).values()) {
    const entry = await loadEntry(file, shipped);
    if (entry.kind === 'recipe') recipes.set(entry.name, entry.recipe);
  }
  return recipes;
}

test('every shipped recipe names a known suite, and each release it names is described', async () => {
  const suites = new Map<string, string>();
  for (const [name, recipe] of await shippedRecipes()) suites.set(name, recipe.suite);
  expect(Object.fromEntries(suites)).toMatchObject({ 'debian-11': 'bullseye', 'debian-12': 'bookworm', 'debian-12-web': 'bookworm', 'debian-12-firmware': 'bookworm', 'debian-13': 'trixie' });
  for (const suite of suites.values()) expect(KNOWN_SUITES).toContain(suite);
  expect(describeRelease('trixie')).toBe('Debian 13 (trixie)');
  expect(describeRelease('sid')).toBe('sid');
  expect(distroTraits('sid')).toBeUndefined();
});

test("releases whose cloud-init renamed its network stage order sshd after the new unit", async () => {
  for (const [name, recipe] of await shippedRecipes()) {
    const unit = distroTraits(recipe.suite)!.cloudInitNetworkUnit;
    const ordering = recipe.files.filter((f) => f.path.startsWith('/etc/systemd/system/ssh.service.d/')).map((f) => f.content).join('\n');
    expect(ordering, name).toMatch(new RegExp(`^After=(.* )?${unit.replace('.', '\\.')}( .*)?$`, 'm'));
  }
});
