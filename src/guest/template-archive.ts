// Templates from job to job: `guestlab template export` writes saved templates into one tar file,
// `guestlab template import` admits them into another cache (another CI job, another runner with
// the same QEMU build), as `image export/import` do for images.
//
// Archive layout (GNU tar, sparse: a template's RAM file holds only the pages the guest touched):
//   guestlab-templates.json   index: format, arch, and per template its key and each file's sha256
//   KEY/manifest.json, KEY/vmstate, KEY/ram, KEY/disk.qcow2, ...   the entry as the cache holds it
// On import every member name is checked before anything is unpacked and every digest after; the
// frozen overlay is pointed at this cache's copy of its image (which must be imported first), and
// the entry enters the cache whole, under its key's lock.
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { setBackingFile } from '../disk/qemu-img.ts';
import { TemplateArchiveError } from '../errors.ts';
import { compareDigests, digestFiles, type FileDigests } from '../images/digest.ts';
import { IMAGE_FILES, readManifest } from '../images/image-dir.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { makePrivateDir } from '../util/fs.ts';
import { acquireLock } from '../util/lock.ts';
import { run } from '../util/run.ts';
import { INSTANCE_FILES } from './instance.ts';
import { TRUST_STAMP, untrustedFile } from './template-trust.ts';
import { TemplateCache, type TemplateManifest } from './template-cache.ts';

const INDEX = 'guestlab-templates.json';
const FORMAT = 1;
const KEY = /^[0-9a-f]{32}$/;
/** A file of an entry: a plain name, no directories. */
const MEMBER_FILE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

interface TemplateArchiveIndex {
  format: number;
  arch: string;
  createdAt: string;
  templates: { key: string; files: FileDigests }[];
}

async function entryFiles(dir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    // The sockets of the QEMU that made it are gone; only regular files travel, and not this
    // cache's stamp of what it checked (the importing cache checks for itself).
    if (entry.isFile() && entry.name !== TRUST_STAMP) files[entry.name] = entry.name;
  }
  return files;
}

/** Writes the templates `keys` (all when empty) into one tar file at `output`, atomically. */
export async function exportTemplates(keys: string[], output: string, log: Logger = rootLog): Promise<{ keys: string[]; bytes: number; ms: number }> {
  const started = Date.now();
  const cache = new TemplateCache(log);
  const chosen = keys.length ? [...new Set(keys)] : (await cache.list()).map((e) => e.key);
  if (chosen.length === 0) throw new TemplateArchiveError(`template export: the template cache (${cache.dir}) is empty; start guests first, or guestlab template build FIXTURE`);
  const index: TemplateArchiveIndex = { format: FORMAT, arch: process.arch, createdAt: new Date().toISOString(), templates: [] };
  const members: string[] = [];
  for (const key of chosen) {
    const dir = cache.entryDir(key);
    if (!KEY.test(key) || !(await fs.stat(path.join(dir, 'manifest.json')).catch(() => undefined))) {
      throw new TemplateArchiveError(`template export: there is no template ${key} in ${cache.dir} (see guestlab template ls)`);
    }
    const files = await entryFiles(dir);
    index.templates.push({ key, files: await digestFiles(dir, files) });
    members.push(key, ...Object.keys(files).map((file) => `${key}/${file}`));
  }
  const target = path.resolve(output);
  const staging = await fs.mkdtemp(path.join(path.dirname(target), '.guestlab-export-'));
  const partial = path.join(staging, 'archive.tar');
  try {
    await fs.writeFile(path.join(staging, INDEX), JSON.stringify(index, null, 2) + '\n');
    await run('tar', ['-c', '-f', partial, '--format=gnu', '--sparse', '-C', staging, INDEX, '-C', cache.dir, '--no-recursion', ...members]);
    await fs.rename(partial, target);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
  const { size } = await fs.stat(target);
  const ms = Date.now() - started;
  log.info(`exported ${chosen.length} template(s) to ${target} (${(size / 1048576).toFixed(0)} MiB in ${(ms / 1000).toFixed(1)}s)`);
  return { keys: chosen, bytes: size, ms };
}

export interface ImportedTemplate {
  key: string;
  /** "imported", or "present" when the cache held it already. */
  outcome: 'imported' | 'present';
}

/**
 * Admits the templates of an archive written by exportTemplates into this cache. Their images must
 * be in this cache already (guestlab image import first): each frozen overlay is pointed at this
 * cache's copy. Whether a template suits this host (its QEMU build, its CPU) is checked where it
 * always is, at its first restore: one that does not is discarded then, and the guest boots cold.
 */
export async function importTemplates(archive: string, log: Logger = rootLog): Promise<{ templates: ImportedTemplate[]; ms: number }> {
  const started = Date.now();
  const source = path.resolve(archive);
  if (!(await fs.stat(source).catch(() => undefined))) throw new TemplateArchiveError(`template import: ${archive} does not exist; write one with guestlab template export --output ${archive}`);
  const cache = new TemplateCache(log);
  const listing = await run('tar', ['-t', '-f', source]).catch((error: Error) => {
    throw new TemplateArchiveError(`template import: ${archive} is not a readable tar archive (truncated or damaged?): ${error.message}`, { cause: error });
  });
  const members = listing.split('\n').filter(Boolean);
  for (const member of members) {
    const [key, file, ...rest] = member.replace(/\/$/, '').split('/');
    const ok = member === INDEX || (KEY.test(key ?? '') && rest.length === 0 && (file === undefined || MEMBER_FILE.test(file)));
    if (!ok) throw new TemplateArchiveError(`template import: ${archive} has an unexpected member "${member}"; it was not written by guestlab template export`);
  }
  if (!members.includes(INDEX)) throw new TemplateArchiveError(`template import: ${archive} has no ${INDEX}; it was not written by guestlab template export`);

  await makePrivateDir(cache.dir);
  const staging = await fs.mkdtemp(path.join(cache.dir, `.import-${process.pid}-`));
  try {
    await run('tar', ['-x', '-f', source, '-C', staging, '--no-same-owner', '--no-same-permissions']).catch((error: Error) => {
      throw new TemplateArchiveError(`template import: unpacking ${archive} failed (truncated?): ${error.message}`, { cause: error });
    });
    const index = JSON.parse(await fs.readFile(path.join(staging, INDEX), 'utf8')) as TemplateArchiveIndex;
    if (index.format !== FORMAT) throw new TemplateArchiveError(`template import: ${archive} has format ${index.format}; this guestlab reads format ${FORMAT}`);
    if (index.arch !== process.arch) throw new TemplateArchiveError(`template import: ${archive} holds ${index.arch} templates; this host is ${process.arch}`);
    const templates: ImportedTemplate[] = [];
    for (const entry of index.templates) templates.push(await admit(cache, staging, entry, archive));
    const ms = Date.now() - started;
    log.info(`imported ${archive}: ${templates.map((t) => `${t.key} ${t.outcome}`).join(', ')} in ${(ms / 1000).toFixed(1)}s`);
    return { templates, ms };
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

async function admit(cache: TemplateCache, staging: string, entry: TemplateArchiveIndex['templates'][number], archive: string): Promise<ImportedTemplate> {
  const { key } = entry;
  if (!KEY.test(key)) throw new TemplateArchiveError(`template import: ${archive} names template "${key}", which is not a key`);
  const unpacked = path.join(staging, key);
  const files = Object.fromEntries(Object.keys(entry.files).map((name) => [name, name]));
  for (const name of Object.keys(files)) {
    const stat = await fs.lstat(path.join(unpacked, name)).catch(() => undefined);
    if (!MEMBER_FILE.test(name) || !stat?.isFile()) throw new TemplateArchiveError(`template import: ${archive} lacks ${key}/${name} as a regular file`);
  }
  const problems = await compareDigests(unpacked, files, entry.files);
  if (problems.length) throw new TemplateArchiveError(`template import: ${key} in ${archive} does not match its digests (corrupt or truncated archive):\n  ${problems.join('\n  ')}`);
  const manifestFile = path.join(unpacked, 'manifest.json');
  const manifest = JSON.parse(await fs.readFile(manifestFile, 'utf8')) as TemplateManifest;
  if (manifest.key !== key) throw new TemplateArchiveError(`template import: the manifest of ${key} in ${archive} names key ${manifest.key}`);

  // This cache's copy of the image it stands on.
  const { name, hash } = manifest.inputs.image;
  const imageDir = path.join(guestlabPaths().imagesDir, `${name}-${hash.slice(0, 16)}`);
  const image = await readManifest(imageDir);
  if (image?.recipeHash !== hash) {
    throw new TemplateArchiveError(`template import: template ${key} stands on image ${name} (${hash.slice(0, 16)}), which is not in ${guestlabPaths().imagesDir}; import the images first (guestlab image import)`);
  }
  const overlay = path.join(unpacked, INSTANCE_FILES.overlay);
  await fs.chmod(overlay, 0o600);
  await setBackingFile(overlay, path.join(imageDir, IMAGE_FILES.disk));
  const moved = (file: string) => (file.startsWith(manifest.imageDir + path.sep) ? path.join(imageDir, path.relative(manifest.imageDir, file)) : file);
  const { kernel } = manifest.base;
  const admitted: TemplateManifest = {
    ...manifest,
    imageDir,
    base: { ...manifest.base, kernel: kernel && { ...kernel, kernel: moved(kernel.kernel), initrd: moved(kernel.initrd) } },
    files: { ...manifest.files, overlay: (await fs.stat(overlay)).size },
  };
  await fs.writeFile(manifestFile, JSON.stringify(admitted, null, 2) + '\n', { mode: 0o600 });
  // Digests only say the files are the archive's: what they point QEMU at must be the template's own.
  const untrusted = await untrustedFile(unpacked, admitted);
  if (untrusted) throw new TemplateArchiveError(`template import: template ${key} in ${archive} is refused: ${untrusted}`);
  for (const [file, mode] of [[INSTANCE_FILES.overlay, 0o400], [INSTANCE_FILES.state, 0o400]] as const) await fs.chmod(path.join(unpacked, file), mode);
  await fs.chmod(unpacked, 0o700);

  const lock = await acquireLock(`template:${cache.entryDir(key)}`);
  try {
    if (await fs.stat(path.join(cache.entryDir(key), 'manifest.json')).catch(() => undefined)) return { key, outcome: 'present' };
    await fs.rename(unpacked, cache.entryDir(key));
    return { key, outcome: 'imported' };
  } finally {
    await lock.release();
  }
}
