// `guestlab doctor`: the host check, and its summary for CI logs.
import path from 'node:path';
import { detectLimits } from '../budget/limits.ts';
import { guestlabPaths } from '../config.ts';
import { readEnv } from '../env.ts';
import { assessCi, formatDoctor, runDoctor, type CiFacts, type CiImageState } from '../host/doctor.ts';
import { entryHash, imageDirName, readManifest } from '../images/builder.ts';
import { listImageFiles, loadEntry } from '../images/catalog.ts';
import { IMAGE_NAME } from '../images/recipe.ts';
import { command } from './args.ts';

export const doctor = command(
  {
    name: 'doctor',
    usage: [
      ['doctor [--json]', 'check this host: QEMU, KVM or TCG, tools, cores, memory, disk'],
      [
        'doctor --ci [--require-kvm] [--require-images A,B]',
        'a summary for CI logs (accelerator, budget, image cache); exits 1\nwhen a requirement is missing; --require-kvm makes TCG one',
      ],
    ],
    options: {
      json: { type: 'boolean', help: 'the report as JSON' },
      ci: { type: 'boolean', help: 'a short summary for CI logs (GitHub Actions annotations under GITHUB_ACTIONS=true)' },
      'require-kvm': { type: 'boolean', help: 'with --ci: fail under TCG (as GUESTLAB_REQUIRE_KVM=1 does)' },
      'require-images': { type: 'string', value: 'A,B', example: 'debian-12,alpine-3.23', help: 'with --ci: fail unless these images are in the cache' },
    },
    args: { min: 0, max: 0, what: 'no arguments' },
    check({ values }) {
      if (values.json && values.ci) return '--json and --ci do not go together: --ci prints a summary for CI logs, --json the full report';
      const ciOnly = (['require-kvm', 'require-images'] as const).find((name) => values[name] !== undefined && values[name] !== false);
      if (ciOnly && !values.ci) return `--${ciOnly} applies to the CI summary only: add --ci`;
      const list = values['require-images'];
      const bad = list?.split(',').find((name) => !IMAGE_NAME.test(name));
      if (list !== undefined && bad !== undefined) {
        const where = bad === list ? '' : ` in ${JSON.stringify(list)}`;
        return `--require-images takes image names separated by commas, got ${JSON.stringify(bad)}${where} (e.g. --require-images debian-12,alpine-3.23; see guestlab image ls)`;
      }
      return undefined;
    },
  },
  async ({ values }) => {
    const report = await runDoctor();
    if (values.ci) {
      const { text, problems } = assessCi(report, await ciFacts(), {
        requireKvm: values['require-kvm'] || readEnv('GUESTLAB_REQUIRE_KVM') === true,
        requireImages: values['require-images']?.split(',') ?? [],
        github: process.env.GITHUB_ACTIONS === 'true',
      });
      console.log(text);
      return problems.length ? 1 : 0;
    }
    if (values.json) console.log(JSON.stringify({ accel: report.accel, problems: report.problems, lines: report.lines, facts: report.facts }, null, 2));
    else console.log(formatDoctor(report));
    return report.problems.length ? 1 : 0;
  },
);

/** What the CI summary shows beside the host: the budget in effect and every known image's cache state. */
async function ciFacts(): Promise<CiFacts> {
  const { imagesDir } = guestlabPaths();
  const images: CiImageState[] = [];
  for (const file of (await listImageFiles()).values()) {
    const entry = await loadEntry(file);
    const manifest = await readManifest(path.join(imagesDir, imageDirName(entry)));
    images.push({ name: entry.name, hash: entryHash(entry).slice(0, 16), built: !!manifest, diskBytes: manifest?.diskBytes, digests: !!manifest?.files });
  }
  return { limits: await detectLimits(), imagesDir, images };
}
