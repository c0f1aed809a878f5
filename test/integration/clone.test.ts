// Snapshot clones of a real guest: each clone is a fresh, fully usable guest with its own disk,
// the host's time and its own randomness; the template's files go with release().
import fs from 'node:fs/promises';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createTemplate, type GuestTemplate, type StartedGuest } from '../../src/index.ts';
import { processesMentioning } from './helpers.ts';

let template: GuestTemplate;
let templateDir: string;
beforeAll(async () => {
  template = await createTemplate({ image: 'debian-12', name: 'tmpl', cpus: 1 });
  templateDir = (await fs.readdir(process.env.GUESTLAB_INSTANCES_DIR ?? `${process.env.HOME}/.cache/guestlab/instances`, { withFileTypes: true }))
    .filter((e) => e.name === template.id)
    .map((e) => `${e.parentPath}/${e.name}`)[0]!;
  const { boot, saveMs, stateBytes } = template.timings;
  console.log(`template booted in ${(boot.cloudInitDoneMs / 1000).toFixed(1)} s, state saved in ${saveMs} ms (${(stateBytes / 1048576).toFixed(0)} MiB)`);
});
afterAll(async () => {
  await template?.release();
});

const clones: StartedGuest[] = [];
afterAll(async () => {
  await Promise.all(clones.map((c) => c.stop()));
});

test('two clones at once: separate disks, the same boot, the host clock, different random numbers', async () => {
  const [a, b] = await Promise.all([template.clone(), template.clone()]);
  clones.push(a!, b!);
  for (const c of [a!, b!]) {
    console.log(`clone ${c.instanceId}: QEMU + restore ${c.timings.restoreMs} ms, SSH ${c.timings.sshReadyMs} ms, ready ${c.timings.cloudInitDoneMs} ms`);
    expect(c.clonedFrom).toBe(template.id);
  }
  expect(a!.instanceId).not.toBe(b!.instanceId);
  expect(a!.ssh.port).not.toBe(b!.ssh.port);

  // Writes stay in the clone that made them.
  await a!.writeFile('/opt/only-in-a', 'a\n', { sudo: true });
  expect((await b!.exec(['test', '-e', '/opt/only-in-a'])).exitCode).toBe(1);
  expect(await a!.readFile('/opt/only-in-a', { encoding: 'utf8' })).toBe('a\n');

  // Resumed from one saved boot: the same boot id, the template's.
  const [bootA, bootB] = await Promise.all([a!.succeed(['cat', '/proc/sys/kernel/random/boot_id']), b!.succeed(['cat', '/proc/sys/kernel/random/boot_id'])]);
  expect(bootA).toBe(bootB);

  // The clock is the host's, not the moment the template was saved.
  for (const c of [a!, b!]) expect(Math.abs(Number(await c.succeed(['date', '+%s'])) - Date.now() / 1000)).toBeLessThan(5);

  // Reseeded: the kernel hands each clone different random bytes.
  const [randA, randB] = await Promise.all([a!.succeed(['head', '-c', '32', '/dev/urandom'], {}), b!.succeed(['head', '-c', '32', '/dev/urandom'])]);
  expect(randA).not.toBe(randB);
});

test('a clone is a whole guest: units, sudo, forwards, console evidence of its boot', async () => {
  const c = await template.clone();
  clones.push(c);
  await c.waitForUnit('ssh.service');
  expect((await c.succeed(['id', '-u'], { sudo: true })).trim()).toBe('0');
  const port = await c.forward(22);
  expect(port).toBeGreaterThan(0);
  // Its console continues the template's: the boot is in the evidence.
  expect(await c.consoleLog()).toMatch(/Linux version/);
  const evidence = await c.evidence();
  expect(JSON.stringify(evidence)).toMatch(/cloud-init/);
  const timed = await c.exec(['sleep', '30'], { timeoutMs: 1000 });
  expect(timed.timedOut).toBe(true);
  expect((await c.exec(['true'])).exitCode).toBe(0);
  await c.stop();
  expect(await processesMentioning(c.instanceId)).toEqual([]);
});

test('release removes the template; running clones carry on, new clones are refused', async () => {
  const c = await template.clone();
  clones.push(c);
  await template.release();
  await expect(fs.stat(templateDir)).rejects.toMatchObject({ code: 'ENOENT' });
  expect(await c.succeed(['echo', 'still here'])).toBe('still here\n');
  await c.writeFile('/opt/after-release', 'x', { sudo: true });
  await expect(template.clone()).rejects.toThrow(/was released/);
});

test('a spec with private networks cannot be a template', async () => {
  await expect(createTemplate({ image: 'debian-12', networks: ['lan'] })).rejects.toThrow(/cannot be a template/);
});
