// Snapshot clones of a real guest: each clone starts from the template's booted state with its own
// overlay, SSH port, clock and randomness, and is as usable as a booted guest.
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createTemplate, type GuestTemplate, type StartedGuest } from '../../src/index.ts';
import { alive } from './helpers.ts';

let template: GuestTemplate;
beforeAll(async () => {
  template = await createTemplate({
    image: 'debian-12',
    name: 'tpl',
    cpus: 1,
    memoryMiB: 768,
    cloudConfig: { write_files: [{ path: '/etc/guestlab-template', content: 'set up once\n' }] },
  });
  const { boot, saveMs, stateBytes } = template.timings;
  console.log(`template booted in ${boot.cloudInitDoneMs} ms, saved in ${saveMs} ms (${(stateBytes / 1024).toFixed(0)} KiB of device state; RAM stays in a shared file)`);
});
afterAll(async () => {
  await template?.release();
});

/** Clones one at a time is what a test-scoped fixture does; two at once share the 2-CPU budget. */
async function withClones(count: number, body: (clones: StartedGuest[]) => Promise<void>): Promise<void> {
  const clones: StartedGuest[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      const clone = await template.clone();
      await clone.succeed(['true']);
      console.log(`clone ${clone.instanceId}: first command ${(performance.now() - started).toFixed(0)} ms (restore ${clone.timings.restoreMs} ms, SSH ${clone.timings.sshReadyMs} ms)`);
      clones.push(clone);
    }
    await body(clones);
  } finally {
    await Promise.all(clones.map((c) => c.stop()));
  }
}

test('clones start from the template: its setup, its boot, their own identity and disk', async () => {
  await withClones(2, async ([a, b]) => {
    for (const clone of [a!, b!]) {
      expect(clone.clonedFrom).toBe(template.id);
      expect(await clone.succeed(['cat', '/etc/guestlab-template'])).toBe('set up once\n');
      expect(await clone.succeed(['cloud-init', 'status'])).toMatch(/status: done/);
    }
    expect(a!.instanceId).not.toBe(b!.instanceId);
    expect(a!.ssh.port).not.toBe(b!.ssh.port);
    // Restored, not rebooted: the template's boot goes on in each clone.
    expect(await a!.succeed(['cat', '/proc/sys/kernel/random/boot_id'])).toBe(await b!.succeed(['cat', '/proc/sys/kernel/random/boot_id']));

    // Writes stay in the clone that made them, as root and as the user, in files and in memory.
    await a!.writeFile('/var/tmp/only-a', 'a\n');
    await a!.succeed(['sh', '-c', 'echo a > /dev/shm/only-a']);
    await a!.succeed(['rm', '/etc/guestlab-template'], { sudo: true });
    expect((await b!.exec(['test', '-e', '/var/tmp/only-a'])).exitCode).toBe(1);
    expect((await b!.exec(['test', '-e', '/dev/shm/only-a'])).exitCode).toBe(1);
    expect(await b!.succeed(['cat', '/etc/guestlab-template'])).toBe('set up once\n');
  });
  // Nor does a later clone see them: the template's disk and memory are frozen.
  await withClones(1, async ([c]) => {
    expect((await c!.exec(['test', '-e', '/var/tmp/only-a'])).exitCode).toBe(1);
    expect(await c!.succeed(['cat', '/etc/guestlab-template'])).toBe('set up once\n');
  });
});

test('a clone sees the host clock, not the time the template was saved, and has its own randomness', async () => {
  // Let the host clock run ahead of the saved state.
  await new Promise((resolve) => setTimeout(resolve, 4000));
  await withClones(2, async ([a, b]) => {
    for (const clone of [a!, b!]) {
      // The guest's clock is read somewhere between these two host readings (a first command in a
      // fresh clone can take a second or two under TCG); an unset clock would be 4 s behind.
      const before = Date.now() / 1000;
      const guestNow = Number(await clone.succeed(['date', '+%s.%N']));
      const after = Date.now() / 1000;
      expect(guestNow).toBeGreaterThan(before - 1);
      expect(guestNow).toBeLessThan(after + 1);
    }
    const draw = (clone: StartedGuest) => clone.succeed(['sh', '-c', 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"']);
    expect(await draw(a!)).not.toBe(await draw(b!));
    expect(await a!.succeed(['cat', '/proc/sys/kernel/random/uuid'])).not.toBe(await b!.succeed(['cat', '/proc/sys/kernel/random/uuid']));
  });
});

test('a clone is a guest like any other: files, sudo, failures with evidence, stop leaves nothing', async () => {
  await withClones(1, async ([clone]) => {
    await clone!.writeFile('/opt/cfg', 'x=1\n', { sudo: true });
    expect((await clone!.readFile('/opt/cfg', { sudo: true })).toString('utf8')).toBe('x=1\n');
    await expect(clone!.succeed(['sh', '-c', 'echo oops >&2; exit 3'])).rejects.toThrow(/exited with code 3[\s\S]*oops/);
    const evidence = await clone!.evidence();
    // The clone's console continues the template's, and cloud-init's log is the template's boot.
    expect(evidence.console).toMatch(/\S/);
    expect(evidence.cloudInit).toMatch(/Cloud-init v\. .* finished/);
    const pid = clone!.pid;
    const dir = clone!.instanceDir;
    await clone!.stop();
    expect(alive(pid)).toBe(false);
    await expect(fs.access(dir)).rejects.toThrow();
  });
});

test('releasing the template removes it; clones cannot be made from it after that', async () => {
  const doomed = await createTemplate({ image: 'debian-12', name: 'doomed', cpus: 2, memoryMiB: 768 });
  const clone = await doomed.clone();
  const templateDir = path.join(path.dirname(clone.instanceDir), doomed.id);
  await fs.access(templateDir);
  await doomed.release();
  await expect(fs.access(templateDir)).rejects.toThrow();
  // A running clone keeps working: its QEMU holds the template's files open.
  expect(await clone.succeed(['echo', 'still here'])).toBe('still here\n');
  await clone.stop();
  await expect(doomed.clone()).rejects.toThrow(/was released; create a new one/);
});
