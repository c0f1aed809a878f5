// Runs the deliberately failing example (test/examples/failing/evidence.test.ts) in a real vitest
// with the default, JSON and JUnit reporters and GUESTLAB_KEEP=on-failure, then reads the reports:
// the guest's console, cloud-init output and journal warnings are attached to the failed test, and
// the guest is kept running with the commands to get in and to stop it, which are then used. A
// second file's test-scoped guests show that only the guest of the failed test is kept, not those
// of the tests after it.
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { expect, test } from 'vitest';
import { createSuite, plain, qemuPidsMentioning } from './helpers.ts';

const EXAMPLE = 'test/examples/failing/evidence.test.ts';

const LATER = `import { expect, test as base } from 'vitest';
import { guestFixture } from 'guestlab/vitest';
const test = base.extend({ vm: guestFixture({ image: 'debian-12', name: 'later', cpus: 1, memoryMiB: 512 }, { scope: 'test' }) });
test('fails first', async ({ vm }) => {
  expect(await vm.succeed(['echo', 'one'])).toBe('two\\n');
});
test('passes after it', async ({ vm }) => {
  expect(await vm.succeed(['echo', 'one'])).toBe('one\\n');
});
`;

test('a failed guest test carries its evidence in every report, and GUESTLAB_KEEP=on-failure keeps the guest', async () => {
  const suite = await createSuite({ 'evidence.test.ts': await fs.readFile(EXAMPLE, 'utf8'), 'later.test.ts': LATER });
  const cli = (args: string[]) => execa('node', ['bin/guestlab.js', ...args], { reject: false, all: true, env: suite.env });
  try {
    const run = await suite.run(
      ['--reporter=default', '--reporter=json', '--outputFile.json=report.json', '--reporter=junit', '--outputFile.junit=junit.xml'],
      { GUESTLAB_KEEP: 'on-failure', GUESTLAB_EVIDENCE_DIR: path.join(suite.dir, 'evidence') },
    );
    const output = plain(run.all);
    expect(run.exitCode, output).toBe(1);

    // The default reporter prints the annotation under the failed test.
    expect(output).toContain('the daemon is running (fails on purpose: it exits at start)');
    expect(output).toMatch(/to have flaky-daemon\.service active, but it is not \(ActiveState=failed/);
    expect(output).toContain('guestlab:evidence');
    expect(output).toMatch(/--- serial console \(last 60 lines\) ---/);
    expect(output).toMatch(/--- journal, priority warning and worse \(last 40 lines\) ---\n(.*\n)*.*Failed to start flaky-daemon\.service/);
    expect(output).toMatch(/--- \/var\/log\/cloud-init-output\.log \(last 40 lines\) ---\n(.*\n)*.*Cloud-init v\. \S+ finished/);

    // The JSON report carries it in meta.guestlab, the JUnit report as a property of the test case.
    const report = JSON.parse(await fs.readFile(path.join(suite.dir, 'report.json'), 'utf8'));
    const results = (report.testResults as { name: string; assertionResults: { title: string; status: string }[] }[]).flatMap((file) => file.assertionResults);
    expect(results.map((r) => [r.title, r.status]).sort()).toEqual([
      ['fails first', 'failed'],
      ['passes after it', 'passed'],
      ['the daemon is running (fails on purpose: it exits at start)', 'failed'],
    ]);
    const result = report.testResults.flatMap((file: { assertionResults: unknown[] }) => file.assertionResults).find((r: { title: string }) => r.title.startsWith('the daemon is running'));
    expect(result.status).toBe('failed');
    const [guest] = result.meta.guestlab.guests;
    expect(guest).toMatchObject({ name: 'evidence', image: 'debian-12', accel: expect.stringMatching(/^(kvm|tcg)$/) });
    expect(guest.bootMs).toBeGreaterThan(0);
    expect(guest.evidence.console.split('\n').length).toBeGreaterThan(10);
    expect(guest.evidence.journal).toContain('Failed to start flaky-daemon.service');
    const junit = await fs.readFile(path.join(suite.dir, 'junit.xml'), 'utf8');
    expect(junit).toMatch(/<property name="guestlab:evidence" value="guest evidence evidence[^"]*Failed to start flaky-daemon\.service/);
    // Every guest test also records its guest (image, accelerator, boot time), failed or not.
    // The suite's template cache starts empty: its first guest boots and is saved, then restored.
    expect(junit).toMatch(/<property name="guestlab:guest" value="guest evidence: debian-12 on (kvm|tcg), restored from template cache [0-9a-f]{32} \(built by this start: cold boot, then saved\), ready \d+\.\d+s after start \(instance evidence-[0-9a-f]+\)"/);
    // GUESTLAB_EVIDENCE_DIR: one file per failed test and guest, for CI artifacts.
    const files = (await fs.readdir(path.join(suite.dir, 'evidence'))).filter((name) => name.startsWith('evidence'));
    expect(files).toEqual([expect.stringMatching(/evidence\.test\.ts.*the_daemon_is_running.*evidence-[0-9a-f]{8}\.txt$/)]);
    const saved = path.join(suite.dir, 'evidence', files[0]!);
    expect(await fs.readFile(saved, 'utf8')).toContain('Failed to start flaky-daemon.service');
    expect((await fs.stat(saved)).mode & 0o777).toBe(0o600);

    // Kept: the instructions name the instance; the guest is still up.
    const kept = /kept guest evidence \(instance (evidence-[0-9a-f]+)\) running because test "the daemon is running[^"]*" failed/.exec(output);
    expect(kept, output).not.toBeNull();
    const id = kept![1]!;
    expect(output).toMatch(new RegExp(`get in:  ssh -i \\S+/${id}/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=\\S+/${id}/known_hosts -o StrictHostKeyChecking=yes -p \\d+ guestlab@127\\.0\\.0\\.1`));
    expect(output).toContain(`npx guestlab ssh ${id}`);
    expect(output).toContain(`npx guestlab stop ${id}`);
    // The failed test of the other file kept its guest too; the test after it did not.
    const keptLater = [...output.matchAll(/kept guest later \(instance (later-[0-9a-f]+)\) running because test "([^"]+)" failed/g)];
    expect(keptLater.map((m) => m[2])).toEqual(['fails first']);
    // Each kept guest holds its budget lease (its QEMU's now) until it is stopped.
    const qemus = await qemuPidsMentioning(suite.instancesDir);
    expect(qemus).toHaveLength(2);
    const leaseOwners = async () => Promise.all((await fs.readdir(path.join(suite.budgetDir, 'leases'))).map(async (f) => (JSON.parse(await fs.readFile(path.join(suite.budgetDir, 'leases', f), 'utf8')) as { owner: { pid: number } }).owner.pid));
    expect((await leaseOwners()).sort()).toEqual([...qemus].sort());
    const stopLater = await cli(['stop', keptLater[0]![1]!]);
    expect(stopLater.exitCode).toBe(0);
    expect(stopLater.all).toContain('; its budget lease is free');
    expect(await qemuPidsMentioning(suite.instancesDir)).toHaveLength(1);
    expect(await leaseOwners()).toEqual(await qemuPidsMentioning(suite.instancesDir));

    const ps = await cli(['ps']);
    expect(ps.all).toMatch(new RegExp(`${id} .* kept`));
    // A later sweep (any guestlab start, or gc without --kept) leaves a kept guest alone.
    expect((await cli(['gc'])).all).toContain('Nothing to remove');
    const ssh = await cli(['ssh', id, '--', 'systemctl', 'is-failed', 'flaky-daemon.service']);
    expect(ssh.all?.trim()).toBe('failed');

    const stop = await cli(['stop', id]);
    expect(stop.exitCode, stop.all).toBe(0);
    expect(stop.all).toContain(`stopped guest evidence (instance ${id}`);
    expect(await qemuPidsMentioning(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(suite.instancesDir)).toEqual([]);
    expect(await fs.readdir(path.join(suite.budgetDir, 'leases'))).toEqual([]);
  } finally {
    await cli(['gc', '--kept']);
    await suite.cleanup();
  }
});
