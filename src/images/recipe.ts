// An image recipe: what to bootstrap from Debian packages, validated with file:line errors.
// A recipe may extend another by name; loadRecipe() resolves the chain, parseRecipe() one file.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { guestlabPaths } from '../config.ts';
import { isPlainObject } from '../util/validate.ts';
import { loadYamlFile, type YamlFile } from '../util/yaml-file.ts';
import { agentSourceDigestSync } from '../agent/build.ts';
import { initSourceDigestSync } from './initramfs.ts';

/** Bump when the builder changes what it produces, so cached images are rebuilt. */
export const BUILDER_VERSION = 1;

export interface RecipeFile {
  path: string;
  content: string;
  mode: number;
}

export interface ImageRecipe {
  name: string;
  /** Where the recipe was read from. */
  source: string;
  /** The name of the recipe this one extends, already merged in. */
  parent: string | undefined;
  description: string;
  suite: string;
  mirror: string;
  components: string[];
  kernel: string;
  packages: string[];
  /** Packages downloaded with their missing dependencies into an apt repository in the image, not installed. */
  offlinePackages: string[];
  diskSizeGiB: number;
  /** Kernel command line, after `root=`: given to QEMU at each direct kernel boot, or written into the bootloader. */
  cmdline: string;
  /**
   * `kernel` (default): the image is a bare filesystem; QEMU loads its kernel and initrd directly.
   * `firmware`: the disk carries its own bootloader (GPT with an EFI system partition holding the
   * kernel, syslinux for BIOS and systemd-boot for UEFI), and boots through SeaBIOS or OVMF.
   */
  boot: 'kernel' | 'firmware';
  files: RecipeFile[];
  /** Shell commands run inside the image after the packages are installed. */
  commands: string[];
  /**
   * What the image offers guestlab beyond cloud-init and SSH (see IMAGE_FEATURES): the host uses a
   * feature only when the image's manifest lists it.
   */
  features: ImageFeature[];
}

/**
 * `fw-cfg-setup`: guestlab-setup.service creates the login user, its key, the pinned host key and
 * the host name from QEMU fw_cfg entries before sshd starts, so a boot with nothing for cloud-init
 * to do can leave cloud-init off (`cloud-init=disabled` on the kernel command line).
 * `agent`: the guest agent (images/agent/guestlab-agent.c, compiled into the image, whose digest
 * covers its source) serves the command channel's virtio-serial port from early in the boot. Not
 * through fw_cfg: Linux reads fw_cfg files a byte at a time, rereading from the start for every
 * page, which took a minute for the 800 KB binary under TCG.
 */
export const IMAGE_FEATURES = ['fw-cfg-setup', 'agent'] as const;
export type ImageFeature = (typeof IMAGE_FEATURES)[number];

const KNOWN_KEYS = [
  'extends', 'description', 'suite', 'mirror', 'components', 'kernel', 'packages', 'offlinePackages', 'diskSizeGiB',
  'cmdline', 'files', 'commands', 'boot', 'features',
];
const PACKAGE_NAME = /^[a-z0-9][a-z0-9+.-]+$/;
export const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]*$/;

/** Every recipe name visible from here, first directory wins, with its file. */
export async function listRecipes(recipeDirs = guestlabPaths().recipeDirs): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const dir of recipeDirs) {
    const entries = await fs.readdir(dir).catch(() => [] as string[]);
    for (const entry of entries.sort()) {
      const match = /^(.+)\.ya?ml$/.exec(entry);
      if (match?.[1] && !found.has(match[1])) found.set(match[1], path.join(dir, entry));
    }
  }
  return found;
}

/** Reads a recipe and, through `extends`, its parents, which are looked up by name in `recipeDirs`. */
export async function loadRecipe(file: string, recipeDirs = guestlabPaths().recipeDirs): Promise<ImageRecipe> {
  return loadChain(file, recipeDirs, []);
}

async function loadChain(file: string, recipeDirs: string[], children: YamlFile[]): Promise<ImageRecipe> {
  const yaml = await loadYamlFile(file);
  const parentName = extendsOf(yaml);
  if (parentName === undefined) return parseRecipe(yaml);
  const recipes = await listRecipes(recipeDirs);
  const parentFile = recipes.get(parentName);
  if (!parentFile) {
    throw yaml.error(
      ['extends'],
      `names "${parentName}", but no recipe of that name is in ${recipeDirs.join(', ')} ` +
        `(known: ${[...recipes.keys()].join(', ') || 'none'}). Fix the name, or add ${parentName}.yaml to one of those directories.`,
    );
  }
  const chain = [...children, yaml];
  if (chain.some((link) => path.resolve(link.file) === path.resolve(parentFile))) {
    const names = [...chain.map((link) => link.file), parentFile].join(' -> ');
    throw yaml.error(['extends'], `makes a cycle of recipes: ${names}. Remove \`extends\` from one of them.`);
  }
  return parseRecipe(yaml, await loadChain(parentFile, recipeDirs, chain));
}

function extendsOf(yaml: YamlFile): string | undefined {
  if (!isPlainObject(yaml.data) || yaml.data.extends === undefined) return undefined;
  const value = yaml.data.extends;
  if (typeof value !== 'string' || !IMAGE_NAME.test(value)) {
    throw yaml.error(['extends'], `must be the name of another recipe, such as debian-12, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * Validates one recipe file. When it `extends` another recipe, `parent` is that recipe, already
 * resolved: scalar fields override the parent's, `packages`, `offlinePackages`, `files` and
 * `commands` append to the parent's, `components` replaces them, `description` is not inherited.
 */
export function parseRecipe(yaml: YamlFile, parent?: ImageRecipe): ImageRecipe {
  const data = yaml.data;
  if (!isPlainObject(data)) throw yaml.error([], 'must be a mapping of recipe fields (suite, kernel, packages, ...)');
  for (const key of Object.keys(data)) {
    if (!KNOWN_KEYS.includes(key)) throw yaml.error([key], `is not a recipe field; known fields: ${KNOWN_KEYS.join(', ')}`);
  }
  const parentName = extendsOf(yaml);
  if (parentName !== undefined && parent === undefined) {
    throw yaml.error(['extends'], `needs the recipe "${parentName}": read this file with loadRecipe(), which finds it in the recipe directories`);
  }
  if (parent !== undefined && parent.name !== parentName) {
    throw new TypeError(`parseRecipe(${yaml.file}) was given the parent "${parent.name}", but the file extends ${JSON.stringify(parentName)}`);
  }
  const str = (key: 'suite' | 'mirror' | 'kernel' | 'cmdline', fallback?: string): string => {
    const value = data[key] ?? parent?.[key] ?? fallback;
    if (typeof value !== 'string' || !value) throw yaml.error([key], `must be a non-empty string, got ${JSON.stringify(value)}`);
    return value;
  };
  const ownList = (key: string, pattern?: RegExp): string[] | undefined => {
    const value = data[key];
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value)) throw yaml.error([key], 'must be a list of strings');
    return value.map((item, i) => {
      if (typeof item !== 'string' || !item) throw yaml.error([key, i], 'must be a non-empty string');
      if (pattern && !pattern.test(item)) throw yaml.error([key, i], `"${item}" is not a valid Debian package name`);
      return item;
    });
  };
  const appended = (key: 'packages' | 'offlinePackages' | 'commands', pattern?: RegExp): string[] => [
    ...(parent?.[key] ?? []),
    ...(ownList(key, pattern) ?? []),
  ];
  const diskSizeGiB = data.diskSizeGiB ?? parent?.diskSizeGiB ?? 3;
  if (typeof diskSizeGiB !== 'number' || !Number.isInteger(diskSizeGiB) || diskSizeGiB < 1 || diskSizeGiB > 1024) {
    throw yaml.error(['diskSizeGiB'], `must be a whole number of GiB from 1 to 1024, got ${JSON.stringify(diskSizeGiB)}`);
  }
  const filesValue = data.files ?? [];
  if (!Array.isArray(filesValue)) throw yaml.error(['files'], 'must be a list of { path, content, mode }');
  const files = filesValue.map((entry, i): RecipeFile => {
    if (!isPlainObject(entry)) throw yaml.error(['files', i], 'must be a mapping with path, content and mode');
    if (typeof entry.path !== 'string' || !path.posix.isAbsolute(entry.path) || entry.path.split('/').includes('..')) {
      throw yaml.error(['files', i, 'path'], 'must be an absolute path inside the image without ".."');
    }
    if (typeof entry.content !== 'string') throw yaml.error(['files', i, 'content'], 'must be a string');
    const modeText = String(entry.mode ?? '0644');
    if (!/^0?[0-7]{3,4}$/.test(modeText)) throw yaml.error(['files', i, 'mode'], `must be an octal mode such as "0644", got ${modeText}`);
    return { path: entry.path, content: entry.content, mode: parseInt(modeText, 8) };
  });
  const packages = appended('packages', PACKAGE_NAME);
  const offlinePackages = appended('offlinePackages', PACKAGE_NAME);
  // An installed package needs no offline copy, and a parent's offline package installed by a child is a mix-up.
  const clash = (key: 'packages' | 'offlinePackages', other: string[]) =>
    (ownList(key) ?? []).forEach((name, i) => {
      if (other.includes(name)) {
        throw yaml.error([key, i], `"${name}" is in both \`packages\` and \`offlinePackages\` (with the parent's); keep it in one of the two`);
      }
    });
  clash('offlinePackages', packages);
  clash('packages', offlinePackages);
  const boot = data.boot ?? parent?.boot ?? 'kernel';
  if (boot !== 'kernel' && boot !== 'firmware') {
    throw yaml.error(['boot'], `must be "kernel" (QEMU boots the image's kernel directly) or "firmware" (the disk carries a bootloader), got ${JSON.stringify(boot)}`);
  }
  const features = [...new Set([...(parent?.features ?? []), ...(ownList('features') ?? [])])];
  features.forEach((feature) => {
    if (!(IMAGE_FEATURES as readonly string[]).includes(feature)) {
      throw yaml.error(['features'], `"${feature}" is not a feature guestlab knows; the known ones are ${IMAGE_FEATURES.join(', ')}`);
    }
  });
  // The key order is part of recipeHash(): new fields go where they leave older digests unchanged.
  return {
    name: path.basename(yaml.file).replace(/\.ya?ml$/, ''),
    source: yaml.file,
    parent: parentName,
    description: typeof data.description === 'string' ? data.description : '',
    suite: str('suite'),
    mirror: str('mirror', 'http://deb.debian.org/debian'),
    components: ownList('components') ?? parent?.components ?? ['main'],
    kernel: str('kernel'),
    packages,
    offlinePackages,
    diskSizeGiB,
    cmdline: str('cmdline', 'console=ttyS0'),
    files: [...(parent?.files ?? []), ...files],
    commands: appended('commands'),
    boot,
    features: features as ImageFeature[],
  };
}

/**
 * A digest of everything that changes the built image, after inheritance. Not the file's location,
 * its parent's name, its description, nor (for direct kernel boot) the kernel command line, which
 * is read from the recipe at every boot. `offlinePackages`, `boot` and `features` count only when set, so
 * recipes without them keep the digest (and the cached image) they had before the fields existed.
 * A firmware-booted image has its command line written into its bootloader: that one counts.
 */
export function recipeContentHash(recipe: ImageRecipe): string {
  const { source: _source, parent: _parent, description: _description, cmdline, offlinePackages, boot, features, ...content } = recipe;
  const digested = {
    ...content,
    ...(offlinePackages.length ? { offlinePackages } : {}),
    ...(boot === 'firmware' ? { boot, cmdline } : {}),
    ...(features.length ? { features } : {}),
    // The agent is compiled into the image: its source is part of what the image is.
    ...(features.includes('agent') ? { agentSource: agentSourceDigestSync() } : {}),
  };
  return createHash('sha256').update(JSON.stringify({ builder: BUILDER_VERSION, ...digested })).digest('hex');
}

/**
 * The recipe's digest: its content (recipeContentHash) and, for a kernel booted directly, the
 * source of guestlab's initramfs (src/images/initramfs.ts), which is part of such an image. Kept
 * outside the content digest, so that digest stays what it was for recipes that did not change.
 */
export function recipeHash(recipe: ImageRecipe): string {
  const content = recipeContentHash(recipe);
  if (recipe.boot === 'firmware') return content;
  return createHash('sha256').update(`${content}\0initramfs:${initSourceDigestSync()}`).digest('hex');
}
