// CI at scale, end to end: the built images are exported to one archive and imported into an
// empty cache (as a CI cache restore would), then the example suite runs as two Vitest shards in
// two processes at once on that cache. Together the shards run every example test exactly once,
// every one passes, and neither builds an image (their logs say the cached build was used).
// This is also where `npm test` runs the examples (test/examples).
import fs from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { dir } from 'tmp-promise';
import { expect, test } from 'vitest';
import { plain } from './helpers.ts';

const IMAGES = ['debian-12', 'debian-12-web', 'debian-11', 'debian-13'];

interface JsonReport {
  testResults: { name: string; assertionResults: { ancestorTitles: string[]; title: string; status: string }[] }[];
}

// The whole example suite twice over, on two cores: far longer than one guest test.
const SHARD_TIMEOUT_MS = 40 * 60_000;

test('the example suite split with --shard=1/2 and --shard=2/2 runs every test once, from an imported image cache', { timeout: SHARD_TIMEOUT_MS }, async () => {
  const state = await dir({ unsafeCleanup: true, prefix: 'gl-shard-' });
  const cacheDir = path.join(state.path, 'cache');
  const env = {
    GUESTLAB_CACHE_DIR: cacheDir,
    GUESTLAB_INSTANCES_DIR: path.join(state.path, 'instances'),
    NO_COLOR: '1',
  };
  const cli = (args: string[], extra: Record<string, string> = {}) => execa('node', ['bin/guestlab.js', ...args], { reject: false, all: true, env: extra });
  try {
    // Export from the cache the setup built, import into an empty one.
    const archive = path.join(state.path, 'images.tar');
    const exported = await cli(['image', 'export', ...IMAGES, '--output', archive]);
    expect(exported.exitCode, exported.all).toBe(0);
    const imported = await cli(['image', 'import', archive], env);
    expect(imported.exitCode, imported.all).toBe(0);
    for (const name of IMAGES) expect(imported.all).toMatch(new RegExp(`^${name}: imported at ${cacheDir}/images/${name}-[0-9a-f]{16}$`, 'm'));
    const doctor = await cli(['doctor', '--ci', '--require-images', IMAGES.join(',')], env);
    expect(doctor.exitCode, doctor.all).toBe(0);

    const vitest = (args: string[]) =>
      execa('node_modules/.bin/vitest', [...args, '--project', 'examples'], { reject: false, all: true, env: { ...process.env, ...env, FORCE_COLOR: '0' } });
    // Collected by running the files, not by parsing them: names made in loops and .each are real.
    const listed = await vitest(['list', '--json', '--staticParse=false']);
    expect(listed.exitCode, listed.all).toBe(0);
    const all = (JSON.parse(listed.stdout) as { name: string; file: string }[]).map((t) => `${path.relative(process.cwd(), t.file)} > ${t.name}`);
    expect(all.length).toBeGreaterThanOrEqual(4);

    const reports = [1, 2].map((i) => path.join(state.path, `shard-${i}.json`));
    const runs = await Promise.all(
      [1, 2].map((i) => vitest(['run', `--shard=${i}/2`, '--reporter=default', '--reporter=json', `--outputFile.json=${reports[i - 1]}`])),
    );
    const ran: { name: string; status: string }[] = [];
    for (const [i, run] of runs.entries()) {
      const output = plain(run.all);
      expect(run.exitCode, `shard ${i + 1}/2:\n${output}`).toBe(0);
      // The imported images were used as they were: no build step ran.
      expect(output).not.toMatch(/\[1\/4\] bootstrapping/);
      expect(output).toMatch(/cached build debian-1[123](-web)?-[0-9a-f]{16}: no build needed/);
      const report = JSON.parse(await fs.readFile(reports[i]!, 'utf8')) as JsonReport;
      for (const file of report.testResults) {
        for (const result of file.assertionResults) ran.push({ name: [path.relative(process.cwd(), file.name), ...result.ancestorTitles, result.title].join(' > '), status: result.status });
      }
    }
    expect(ran.map((r) => r.name).sort()).toEqual([...all].sort());
    expect(ran.filter((r) => r.status !== 'passed')).toEqual([]);
    // Each shard ran something: the split really happened.
    expect(runs.every((run) => /Test Files\s+\d+ passed/.test(plain(run.all)))).toBe(true);
  } finally {
    await state.cleanup();
  }
});
