// npm run bench:cache [-- --image NAME ... --rebuild --json]
// What a warm CI image cache saves. For each image: building it from its recipe (the baseline; with
// --rebuild it is built again in this run into a scratch cache, otherwise the build time recorded in
// its manifest is shown), next to export to an archive, import from it (unpack + sha256 of every
// file), the first start-up lookup of a restored cache directory (digests checked once) and every
// later lookup (stat calls against the stamp). Prints seconds and MB/s; asserts nothing.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureImage, exportImages, importImages, probeHost } from 'guestlab';

const { values } = parseArgs({
  options: {
    image: { type: 'string', multiple: true, default: ['debian-12'] },
    rebuild: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
process.env.GUESTLAB_QUIET = '1';

const timed = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
  const started = performance.now();
  const value = await fn();
  return [value, performance.now() - started];
};
const home = process.env.GUESTLAB_CACHE_DIR;
const useCache = (dir: string | undefined) => {
  if (dir === undefined) delete process.env.GUESTLAB_CACHE_DIR;
  else process.env.GUESTLAB_CACHE_DIR = dir;
};

const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-bench-cache-'));
const rows: Record<string, number | string>[] = [];
try {
  for (const name of values.image) {
    useCache(home);
    const image = await ensureImage(name);
    const manifest = JSON.parse(await fs.readFile(path.join(image.dir, 'manifest.json'), 'utf8')) as { buildMs: number };
    let buildMs = manifest.buildMs;
    let baseline = 'recorded build';
    if (values.rebuild) {
      useCache(path.join(scratch, `build-${name}`));
      [, buildMs] = await timed(() => ensureImage(name));
      baseline = 'build (this run)';
    }

    useCache(home);
    const archive = path.join(scratch, `${name}.tar`);
    const [{ bytes }, exportMs] = await timed(() => exportImages([name], archive));

    useCache(path.join(scratch, `import-${name}`));
    const [, importMs] = await timed(() => importImages(archive));

    // A CI cache restoring the directory itself: new files, so the first lookup checks digests.
    const restored = path.join(scratch, `restored-${name}`);
    await fs.cp(path.join(scratch, `import-${name}`, 'images'), path.join(restored, 'images'), { recursive: true });
    useCache(restored);
    const [, firstUseMs] = await timed(() => ensureImage(name));
    const [, laterUseMs] = await timed(() => ensureImage(name));
    await fs.rm(archive);

    rows.push({ image: name, baseline, buildMs, bytes, exportMs, importMs, firstUseMs, laterUseMs, speedup: buildMs / importMs });
  }
} finally {
  useCache(home);
  await fs.rm(scratch, { recursive: true, force: true });
}

const host = await probeHost();
const header = `guestlab image cache bench: ${os.cpus()[0]?.model ?? 'cpu'} x${host.cores}, ${os.platform()} ${os.release()}, scratch on ${os.tmpdir()}`;
if (values.json) {
  console.log(JSON.stringify({ host: header, rows }, null, 2));
} else {
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const rate = (bytes: number, ms: number) => `${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
  console.log(header);
  for (const r of rows) {
    const b = r.bytes as number;
    console.log(`\n${r.image} (archive ${(b / 1024 ** 2).toFixed(0)} MiB)`);
    console.log(`  ${String(r.baseline).padEnd(34)} ${s(r.buildMs as number)}   (baseline)`);
    console.log(`  ${'export to archive'.padEnd(34)} ${s(r.exportMs as number)}   ${rate(b, r.exportMs as number)}`);
    console.log(`  ${'import + verify (sha256)'.padEnd(34)} ${s(r.importMs as number)}   ${rate(b, r.importMs as number)}   ${(r.speedup as number).toFixed(0)}x faster than the baseline`);
    console.log(`  ${'first use of a restored dir'.padEnd(34)} ${s(r.firstUseMs as number)}   (digests checked once)`);
    console.log(`  ${'later use'.padEnd(34)} ${((r.laterUseMs as number)).toFixed(1)} ms   (stamp: stat calls only)`);
  }
}
