import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { parse } from 'yaml';
import { GuestDeadEndError } from '../../src/errors.ts';
import { ConsoleWatch, findDeadEnd, REPORT_END, REPORT_LINE, REPORT_START, withoutReport } from '../../src/guest/dead-end.ts';

// What the image's reporter writes (images/debian-12.yaml, report-dead-end), as a console shows it:
// CRLF line ends, kernel lines between.
const report = [
  '[  OK  ] Started cloud-config.service.',
  `${REPORT_START}ssh.service`,
  `${REPORT_LINE}x ssh.service - OpenBSD Secure Shell server`,
  `${REPORT_LINE}     Active: failed (Result: exit-code) since Sun 2026-11-29 22:10:01 UTC`,
  '[   41.2] random: crng init done',
  `${REPORT_LINE}[   38.1] sshd[612]: /etc/ssh/sshd_config.d/99-broken.conf: line 1: Bad configuration option: NoSuchOption`,
  REPORT_END,
].join('\r\n');

describe('findDeadEnd', () => {
  test('reads a unit report: the unit, and its status and journal lines without the prefix', () => {
    const found = findDeadEnd(report);
    expect(found).toEqual({
      kind: 'unit-failed',
      unit: 'ssh.service',
      evidence: [
        'x ssh.service - OpenBSD Secure Shell server',
        '     Active: failed (Result: exit-code) since Sun 2026-11-29 22:10:01 UTC',
        '[   38.1] sshd[612]: /etc/ssh/sshd_config.d/99-broken.conf: line 1: Bad configuration option: NoSuchOption',
      ].join('\n'),
    });
  });

  test('waits for the end of a report unless told the output is complete', () => {
    const partial = report.slice(0, report.indexOf(REPORT_END));
    expect(findDeadEnd(partial)).toBeUndefined();
    expect(findDeadEnd(partial, { complete: true })).toMatchObject({ kind: 'unit-failed', unit: 'ssh.service' });
  });

  test.each([
    ['panic', '[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)'],
    ['emergency', 'You are in emergency mode. After logging in, type "journalctl -xb" to view system logs,'],
    ['emergency', 'Cannot open access to console, the root account is locked.'],
    ['emergency', 'Gave up waiting for root file system device.  Common problems:'],
    ['halted', '[   52.0] reboot: System halted'],
    ['cpu-stuck', '[   92.470215] watchdog: BUG: soft lockup - CPU#1 stuck for 75s! [modprobe:176]'],
  ])('tells a %s from the console line %j, with the lines around it', (kind, line) => {
    const found = findDeadEnd(`[  OK  ] Reached target basic.target.\n${line}\nmore\n`);
    expect(found?.kind).toBe(kind);
    expect(found?.evidence).toContain(line);
    expect(found?.evidence).toContain('Reached target basic.target');
  });

  test('a soft lockup shorter than a minute is no dead end: a vCPU thread starved by a busy host shows one and goes on', () => {
    expect(findDeadEnd('[   36.5] rcu: INFO: rcu_preempt self-detected stall on CPU\n[   64.4] watchdog: BUG: soft lockup - CPU#1 stuck for 49s! [modprobe:176]\n')).toBeUndefined();
  });

  test('a normal boot is no dead end, nor a unit that systemd restarts', () => {
    const boot = [
      '[FAILED] Failed to start ssh.service - OpenBSD Secure Shell server.',
      '[  OK  ] Stopped ssh.service - OpenBSD Secure Shell server.',
      '         Starting ssh.service - OpenBSD Secure Shell server...',
      '[  OK  ] Started ssh.service - OpenBSD Secure Shell server.',
      'Cloud-init v. 22.4.2 finished at Sun, 29 Nov 2026 22:10:09 +0000. Up 44.96 seconds',
    ].join('\n');
    expect(findDeadEnd(boot)).toBeUndefined();
  });
});

test('withoutReport leaves the console lines around a report', () => {
  expect(withoutReport(report.replace(/\r/g, ''))).toBe('[  OK  ] Started cloud-config.service.\n[   41.2] random: crng init done');
});

describe('ConsoleWatch', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-dead-end-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('reads only what was written after it started (a clone appends to its template\'s log)', async () => {
    const file = path.join(dir, 'serial.log');
    await fs.writeFile(file, `template boot\nKernel panic - not syncing: from the template's own past\n`);
    const watch = await ConsoleWatch.from(file);
    expect(await watch.poll()).toBeUndefined();
    await fs.appendFile(file, 'clone resumed\n');
    expect(await watch.poll()).toBeUndefined();
    await fs.appendFile(file, report.slice(0, 60));
    expect(await watch.poll()).toBeUndefined();
    await fs.appendFile(file, report.slice(60));
    expect(await watch.poll()).toMatchObject({ kind: 'unit-failed', unit: 'ssh.service' });
    expect(watch.deadEnd?.unit).toBe('ssh.service');
  });

  test('found settles once polling (start) sees a dead end; stop ends the polling', async () => {
    const file = path.join(dir, 'serial.log');
    const watch = await ConsoleWatch.from(file);
    watch.start(20);
    await fs.writeFile(file, '[   52.0] reboot: System halted\n');
    const found = await watch.found;
    watch.stop();
    expect(found.kind).toBe('halted');
  });
});

describe('GuestDeadEndError', () => {
  test('names the unit, carries its status, and says what to check', () => {
    const error = new GuestDeadEndError('web', findDeadEnd(report)!, 'ssh-banner', 31_400, 'last console line');
    expect(error.code).toBe('ERR_GUEST_DEAD_END');
    expect(error.unit).toBe('ssh.service');
    expect(error.message).toMatch(/^Guest web reports that ssh\.service failed for good during boot \(phase: ssh-banner, 31\.4s after QEMU started\)/);
    expect(error.message).toContain('Bad configuration option: NoSuchOption');
    expect(error.message).toContain('sshd_config');
    expect(error.message).toContain('last console line');
  });
});

test('the shipped image reports with the prefixes the host reads', async () => {
  const recipe = parse(await fs.readFile(path.join(import.meta.dirname, '../../images/debian-12.yaml'), 'utf8')) as { files: { path: string; content: string }[] };
  const script = recipe.files.find((f) => f.path === '/usr/local/lib/guestlab/report-dead-end')!.content;
  expect(script).toContain(`echo "${REPORT_START}$unit"`);
  expect(script).toContain(`sed 's/^/${REPORT_LINE}/'`);
  expect(script).toContain(`echo "${REPORT_END}"`);
  const dropIn = recipe.files.find((f) => f.path === '/etc/systemd/system/ssh.service.d/10-guestlab.conf')!.content;
  expect(dropIn).toMatch(/^OnFailure=guestlab-dead-end@%n\.service$/m);
});
