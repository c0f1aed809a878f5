// Eight test files with a file-scoped guest of one spec, run by vitest's default pool (a process
// per file, two at a time): the template cache makes that exactly one cold boot. The JSON report's
// guest records (task.meta.guestlab) say so, file by file.
import fs from 'node:fs/promises';
import path from 'node:path';
import { expect, test } from 'vitest';
import { createSuite, plain } from './helpers.ts';

const FILES = 8;

interface Report {
  testResults: { name: string; assertionResults: { status: string; meta?: { guestlab?: { guests: { template?: { key: string; built: boolean } }[] } } }[] }[];
}

test('eight files with file-scoped guests of one spec make exactly one cold boot', async () => {
  const files: Record<string, string> = {};
  for (let i = 1; i <= FILES; i++) {
    files[`file-${i}.test.ts`] = [
      "import { test as base, expect } from 'vitest';",
      "import { guestFixture } from 'guestlab/vitest';",
      "const test = base.extend({ vm: guestFixture({ image: 'debian-12', cpus: 1, memoryMiB: 512 }) });",
      `test('file ${i} runs a command', async ({ vm }) => {`,
      `  expect(await vm.succeed(['sh', '-c', 'echo ${i} > /tmp/mine && cat /tmp/mine'])).toBe('${i}\\n');`,
      '});',
    ].join('\n');
  }
  const suite = await createSuite(files);
  try {
    const { templatesDir } = suite;
    const reportFile = path.join(path.dirname(suite.instancesDir), 'report.json');
    const run = await suite.run(['--reporter=default', '--reporter=json', `--outputFile.json=${reportFile}`]);
    const output = plain(run.all);
    expect(run.exitCode, output).toBe(0);
    const report = JSON.parse(await fs.readFile(reportFile, 'utf8')) as Report;
    expect(report.testResults).toHaveLength(FILES);
    const guests = report.testResults.flatMap((file) => file.assertionResults.flatMap((t) => t.meta?.guestlab?.guests ?? []));
    expect(guests).toHaveLength(FILES);
    // Every guest came from the cache, all from one template, and one start built it.
    const keys = new Set(guests.map((g) => g.template?.key));
    expect(keys.size, JSON.stringify(guests)).toBe(1);
    expect(guests.filter((g) => g.template?.built === true)).toHaveLength(1);
    expect(guests.filter((g) => g.template?.built === false)).toHaveLength(FILES - 1);
    expect((await fs.readdir(templatesDir)).filter((name) => !name.startsWith('.'))).toEqual([...keys]);
    // Nothing of the guests is left; the template stays for the next run.
    expect(await fs.readdir(suite.instancesDir).catch(() => [])).toEqual([]);
  } finally {
    await suite.cleanup();
  }
});
