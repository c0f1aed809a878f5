// The sweep removes what dead sessions left, and signals nothing it cannot prove is theirs.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { currentIdentity, processStartTime } from '../../src/host/process-identity.ts';
import { OWNER_FILE, parseQemuTag, qemuTag, removeOwnedDir, sweep, sweepTempFiles } from '../../src/reaper/sweep.ts';

const log = createLogger('test', () => undefined);

describe('sweep', () => {
  let root: string;
  let cleanup: () => Promise<void>;
  const children: ChildProcess[] = [];
  const saved = { ...process.env };

  beforeEach(async () => {
    ({ path: root, cleanup } = await dir({ unsafeCleanup: true }));
    process.env.GUESTLAB_BUDGET_DIR = path.join(root, 'budget');
    // The sweep also looks for half-written files in the cache: this test's own.
    process.env.GUESTLAB_CACHE_DIR = path.join(root, 'cache');
    delete process.env.GUESTLAB_TEMPLATES_DIR;
  });
  afterEach(async () => {
    process.env = { ...saved };
    for (const child of children.splice(0)) child.kill('SIGKILL');
    await cleanup();
  });

  async function instance(name: string, owner: { pid: number; start: number }, extra: { keptAt?: string } = {}): Promise<string> {
    const instanceDir = path.join(root, 'instances', name);
    await fs.mkdir(instanceDir, { recursive: true });
    await fs.writeFile(path.join(instanceDir, OWNER_FILE), JSON.stringify({ instanceId: name, owner, createdAt: '', ...extra }));
    return instanceDir;
  }

  /** A long-running process whose argv[0] looks like QEMU, which carries `tag` and names `instanceDir` as QEMU does (its QMP socket). */
  async function fakeQemu(tag: string, instanceDir?: string): Promise<ChildProcess> {
    const link = path.join(root, 'qemu-system-x86_64');
    await fs.symlink('/usr/bin/tail', link).catch(() => undefined);
    const qmp = instanceDir === undefined ? [] : ['-chardev', `socket,id=qmp0,path=${path.join(instanceDir, 'qmp.sock').replaceAll(',', ',,')},server=on,wait=off`];
    const child = spawn(link, ['-f', '/dev/null', '--', tag, ...qmp], { stdio: 'ignore' });
    children.push(child);
    await once(child, 'spawn');
    return child;
  }

  test('the tag round-trips', () => {
    expect(parseQemuTag(['qemu', '-smbios', `type=11,value=${qemuTag('web-1-ab', { pid: 12, start: 34 })}`])).toEqual({ instanceId: 'web-1-ab', owner: { pid: 12, start: 34 } });
    expect(parseQemuTag(['qemu', '-m', '1G'])).toBeUndefined();
  });

  test('keeps the directory of a live owner, removes the one of a dead owner', async () => {
    const mine = await instance('mine', currentIdentity());
    const dead = await instance('dead', { pid: 2 ** 22 + 777, start: 1 });
    const report = await sweep({ log, instancesDir: path.join(root, 'instances') });
    expect(report.instanceDirs).toEqual([dead]);
    await expect(fs.stat(mine)).resolves.toBeTruthy();
  });

  test('a removal cut short leaves the owner record, so the next sweep still removes what is left', async () => {
    const dir = await instance('dying', currentIdentity());
    await fs.mkdir(path.join(dir, 'sub'));
    await fs.writeFile(path.join(dir, 'sub', 'disk.qcow2'), 'x');
    await fs.writeFile(path.join(dir, 'zz.log'), 'x');
    // The process dies at the first removal it tries after the overlay's.
    const realRm = fs.rm;
    let removed = 0;
    const rm = vi.spyOn(fs, 'rm').mockImplementation(async (target, options) => {
      if (removed++ === 1) throw new Error('killed');
      return realRm(target, options);
    });
    try {
      await expect(removeOwnedDir(dir)).rejects.toThrow('killed');
    } finally {
      rm.mockRestore();
    }
    await expect(fs.readFile(path.join(dir, OWNER_FILE), 'utf8')).resolves.toContain('dying');
    await removeOwnedDir(dir);
    await expect(fs.stat(dir)).rejects.toThrow(/ENOENT/);
    await expect(removeOwnedDir(dir)).resolves.toBeUndefined();
  });

  test('an owner record naming a live, unrelated process (reused pid) is stale, and that process is not signalled', async () => {
    const bystander = spawn('sleep', ['300']);
    children.push(bystander);
    await once(bystander, 'spawn');
    const start = processStartTime(bystander.pid!)!;
    const stale = await instance('reused', { pid: bystander.pid!, start: start + 5 });
    const report = await sweep({ log, instancesDir: path.join(root, 'instances') });
    expect(report.instanceDirs).toEqual([stale]);
    expect(report.killedPids).not.toContain(bystander.pid);
    expect(processStartTime(bystander.pid!)).toBe(start);
  });

  test('kills a tagged QEMU of a dead owner whose directory here records it; never one of a live owner, an untagged one, one without an instance directory, or one of another instances directory', async () => {
    const instancesDir = path.join(root, 'instances');
    const deadOwner = { pid: 2 ** 22 + 778, start: 1 };
    const orphanDir = await instance('orphan-1', deadOwner);
    const orphan = await fakeQemu(qemuTag('orphan-1', deadOwner), orphanDir);
    const owned = await fakeQemu(qemuTag('owned-1', currentIdentity()), await instance('owned-1', currentIdentity()));
    const untagged = await fakeQemu('no-tag-here');
    // A tag alone, with no instance directory anywhere: nothing proves it is a guest of this sweep's.
    const tagOnly = await fakeQemu(qemuTag('ghost-1', deadOwner));
    // A guest of another GUESTLAB_INSTANCES_DIR (its directory, its owner record): not this sweep's.
    const elsewhere = path.join(root, 'other-instances', 'away-1');
    await fs.mkdir(elsewhere, { recursive: true });
    await fs.writeFile(path.join(elsewhere, OWNER_FILE), JSON.stringify({ instanceId: 'away-1', owner: deadOwner, createdAt: '' }));
    const away = await fakeQemu(qemuTag('away-1', deadOwner), elsewhere);
    // A directory here whose owner record names someone else than the tag: not proof either.
    const mismatch = await fakeQemu(qemuTag('mixed-1', deadOwner), await instance('mixed-1', { pid: 2 ** 22 + 780, start: 1 }));
    const orphanExit = once(orphan, 'exit');
    const report = await sweep({ log, instancesDir });
    expect(report.killedPids).toEqual([orphan.pid]);
    await orphanExit;
    expect(orphan.signalCode).toBe('SIGKILL');
    for (const child of [owned, untagged, tagOnly, away, mismatch]) expect(child.exitCode ?? child.signalCode).toBeNull();
    await expect(fs.stat(elsewhere)).resolves.toBeTruthy();
  });

  test('half-written images, imports and downloads of a dead process are removed; those of a running one and every other name stay', async () => {
    const images = path.join(root, 'images');
    const downloads = path.join(root, 'downloads');
    await fs.mkdir(images, { recursive: true });
    await fs.mkdir(downloads, { recursive: true });
    const dead = 2 ** 22 + 781;
    const live = process.pid;
    const made = {
      deadBuild: path.join(images, `debian-12-0123456789abcdef.tmp-${dead}`),
      liveBuild: path.join(images, `debian-11-0123456789abcdef.tmp-${live}`),
      deadImport: path.join(images, `.import-${dead}-AbC123`),
      liveImport: path.join(images, `.import-${live}-XyZ789`),
      deadPart: path.join(downloads, `sha256-00ff.${dead}-0a1b2c3d.part`),
      livePart: path.join(downloads, `sha256-00ff.${live}-0a1b2c3d.part`),
      image: path.join(images, 'debian-12-0123456789abcdef'),
      download: path.join(downloads, 'sha256-00ff'),
    };
    for (const [key, target] of Object.entries(made)) {
      if (key.endsWith('Part') || key === 'download') await fs.writeFile(target, 'x');
      else await fs.mkdir(target, { recursive: true });
    }
    const removed = await sweepTempFiles([images, downloads, path.join(root, 'missing')], log);
    expect(removed.sort()).toEqual([made.deadBuild, made.deadImport, made.deadPart].sort());
    for (const target of [made.liveBuild, made.liveImport, made.livePart, made.image, made.download]) await expect(fs.stat(target)).resolves.toBeTruthy();
  });

  test('a kept guest (GUESTLAB_KEEP) of a dead owner is left alone, unless the sweep includes kept guests', async () => {
    const deadOwner = { pid: 2 ** 22 + 779, start: 1 };
    const keptDir = await instance('kept-1', deadOwner, { keptAt: new Date().toISOString() });
    const kept = await fakeQemu(qemuTag('kept-1', deadOwner), keptDir);
    const instancesDir = path.join(root, 'instances');

    const first = await sweep({ log, instancesDir });
    expect(first.killedPids).toEqual([]);
    expect(first.instanceDirs).toEqual([]);
    expect(kept.exitCode ?? kept.signalCode).toBeNull();

    const exit = once(kept, 'exit');
    const second = await sweep({ log, instancesDir, includeKept: true });
    expect(second.killedPids).toEqual([kept.pid]);
    expect(second.instanceDirs).toEqual([keptDir]);
    await exit;
  });
});
