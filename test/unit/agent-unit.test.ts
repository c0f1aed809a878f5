// The guest agent's unit is written twice: in TypeScript (src/agent/unit.ts, which cloud-init
// installs on downloaded images) and in the image recipe (images/debian-12.yaml, hashed as YAML).
// They must not drift apart.
import path from 'node:path';
import { expect, test } from 'vitest';
import { AGENT_PATH, AGENT_UNIT, AGENT_UNIT_NAME, AGENT_UNIT_PATH } from '../../src/agent/unit.ts';
import { loadRecipe } from '../../src/images/recipe.ts';

const IMAGES = path.resolve(import.meta.dirname, '../../images');

test('the unit cloud-init installs is the one in guestlab\'s images, byte for byte', async () => {
  const recipe = await loadRecipe(path.join(IMAGES, 'debian-12.yaml'), [IMAGES]);
  expect(recipe.features).toContain('agent');
  const unit = recipe.files.find((file) => file.path === AGENT_UNIT_PATH);
  expect(unit, `images/debian-12.yaml has no file ${AGENT_UNIT_PATH}`).toBeDefined();
  expect(unit!.content).toBe(AGENT_UNIT);
  expect(unit!.mode).toBe(0o644);
  // The recipe enables the same unit that cloud-init enables, and the unit starts the binary where both put it.
  expect(recipe.commands.some((command) => command.startsWith('systemctl enable') && command.split(' ').includes(AGENT_UNIT_NAME))).toBe(true);
  expect(AGENT_UNIT).toContain(`\nExecStart=${AGENT_PATH}\n`);
});
