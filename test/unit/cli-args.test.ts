// The guestlab command line refuses what it does not understand, by name, before doing anything:
// main() runs in-process against empty temp directories, which must still be empty afterwards.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { parseCommand } from '../../src/cli/args.ts';
import { ssh } from '../../src/cli/instances.ts';
import { allCommands, main, usage } from '../../src/cli/main.ts';
import { OWNER_FILE } from '../../src/reaper/sweep.ts';

// No process has this pid (above the kernel's pid_max limit), so its records are a dead session's.
const DEAD = { pid: 2 ** 22 + 777, start: 1 };

let root: string;
const saved = { ...process.env };

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'guestlab-cli-'));
  process.env.GUESTLAB_CACHE_DIR = path.join(root, 'cache');
  process.env.GUESTLAB_INSTANCES_DIR = path.join(root, 'instances');
  process.env.GUESTLAB_BUDGET_DIR = path.join(root, 'budget');
});
afterEach(async () => {
  process.env = { ...saved };
  vi.restoreAllMocks();
  await fs.rm(root, { recursive: true, force: true });
});

/** Runs `guestlab ...argv` in this process: its exit code and what it printed. */
async function run(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  vi.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => void out.push(parts.join(' ')));
  vi.spyOn(console, 'error').mockImplementation((...parts: unknown[]) => void err.push(parts.join(' ')));
  try {
    const code = await main(argv);
    return { code, stdout: out.join('\n'), stderr: err.join('\n') };
  } finally {
    vi.restoreAllMocks();
  }
}

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const number = (option: string, raw: string, example: string) =>
  `guestlab budget: --${option} takes a whole number of 1 or more in decimal digits, got "${raw}" (e.g. --${option} ${example})`;

// [command line, the one line it prints on stderr]
const refused: [string[], string][] = [
  [['doctor', '--frob'], 'guestlab doctor: unknown option --frob (doctor takes --json, --ci, --require-kvm, --require-images A,B; see guestlab help doctor)'],
  [['doctor', 'now'], 'guestlab doctor: unexpected argument "now" (doctor takes no arguments; see guestlab help doctor)'],
  [['doctor', '--ci', '--require-images'], 'guestlab doctor: --require-images needs a value, e.g. --require-images debian-12,alpine-3.23'],
  [['doctor', '--ci', '--require-images', 'debian-12 alpine'], 'guestlab doctor: --require-images takes image names separated by commas, got "debian-12 alpine" (e.g. --require-images debian-12,alpine-3.23; see guestlab image ls)'],
  [['doctor', '--require-kvm'], 'guestlab doctor: --require-kvm applies to the CI summary only: add --ci'],
  [['doctor', '--ci', '--json'], 'guestlab doctor: --json and --ci do not go together: --ci prints a summary for CI logs, --json the full report'],
  [['image', 'ls', '--json'], 'guestlab image ls: unknown option --json (image ls takes no options; see guestlab help image ls)'],
  [['image', 'ls', 'debian-12'], 'guestlab image ls: unexpected argument "debian-12" (image ls takes no arguments; see guestlab help image ls)'],
  [['image', 'build', 'debian-12', '--dry-run'], 'guestlab image build: unknown option --dry-run (image build takes --force; see guestlab help image build)'],
  [['image', 'build'], 'guestlab image build: name the image, e.g. guestlab image build debian-12 (see guestlab image ls)'],
  [['image', 'build', 'debian-12', '--force=yes'], 'guestlab image build: --force takes no value, got "--force=yes"'],
  [['image', 'build', '../debian-12'], `guestlab image build: "../debian-12" is not an image name (lowercase letters, digits, '.', '_', '-'; see guestlab image ls)`],
  [['image', 'build', 'debian-12-genericcloud'], 'guestlab image build: debian-12-genericcloud is downloaded (https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2), not built: use guestlab image pull debian-12-genericcloud'],
  [['image', 'pull', '-f', 'ubuntu-24.04'], 'guestlab image pull: unknown option -f (image pull takes --force; see guestlab help image pull)'],
  [['image', 'pull'], 'guestlab image pull: name the image, e.g. guestlab image pull ubuntu-24.04 (see guestlab image ls)'],
  [['image', 'pull', 'debian-12'], 'guestlab image pull: debian-12 is built from a recipe (' + path.resolve('images/debian-12.yaml') + '), not downloaded: use guestlab image build debian-12'],
  [['image', 'key', '--short', 'debian-12'], 'guestlab image key: unknown option --short (image key takes --json; see guestlab help image key)'],
  [['image', 'key'], 'guestlab image key: name at least one image, e.g. guestlab image key debian-12'],
  [['image', 'export', 'debian-12', '-o', 'x.tar'], 'guestlab image export: unknown option -o (image export takes --output FILE; see guestlab help image export)'],
  [['image', 'export', '--output', 'x.tar'], 'guestlab image export: name the images to export, e.g. guestlab image export debian-12 --output images.tar'],
  [['image', 'export', 'debian-12'], 'guestlab image export: say where to write the archive, e.g. guestlab image export debian-12 --output images.tar'],
  [['image', 'export', 'debian-12', '--output'], 'guestlab image export: --output needs a value, e.g. --output images.tar'],
  [['image', 'export', 'debian-12', '--output='], 'guestlab image export: --output needs a value, e.g. --output images.tar'],
  [['image', 'export', 'debian-12', '--output', '--force'], 'guestlab image export: --output needs a value, got the option --force (write --output=--force if you mean that value)'],
  [['image', 'import', '--verify', 'x.tar'], 'guestlab image import: unknown option --verify (image import takes no options; see guestlab help image import)'],
  [['image', 'import'], 'guestlab image import: name one archive written by guestlab image export, e.g. guestlab image import images.tar'],
  [['image', 'import', 'a.tar', 'b.tar'], 'guestlab image import: unexpected argument "b.tar" (image import takes one FILE; see guestlab help image import)'],
  [['image', 'verify', '--all'], 'guestlab image verify: unknown option --all (image verify takes no options; see guestlab help image verify)'],
  [['image', 'verify', 'Debian-12'], `guestlab image verify: "Debian-12" is not an image name (lowercase letters, digits, '.', '_', '-'; see guestlab image ls)`],
  [['image', 'rm', '--force', 'debian-12'], 'guestlab image rm: unknown option --force (image rm takes no options; see guestlab help image rm)'],
  [['image', 'rm'], 'guestlab image rm: name the images to remove, e.g. guestlab image rm debian-12'],
  [['image', 'frob'], 'guestlab image: unknown subcommand "frob"; use one of: ls, build, pull, key, export, import, verify, rm (see guestlab help image)'],
  [['image'], 'guestlab image: name a subcommand: ls, build, pull, key, export, import, verify, rm (see guestlab help image)'],
  [['template', 'ls', 'x'], 'guestlab template ls: unexpected argument "x" (template ls takes no arguments; see guestlab help template ls)'],
  [['template', 'build'], 'guestlab template build: name the spec files, e.g. guestlab template build web (fixtures/web.yaml)'],
  [['template', 'rm'], 'guestlab template rm: name the templates to remove (see guestlab template ls), or give --all'],
  [['template', 'rm', '../x'], 'guestlab template rm: "../x" is not a template key (32 hex digits; see guestlab template ls)'],
  [['template', 'prune', '--max-mib', '1e3'], 'guestlab template prune: --max-mib "1e3" is not a whole number of MiB'],
  [['template', 'frob'], 'guestlab template: unknown subcommand "frob"; use one of: ls, build, export, import, rm, prune (see guestlab help template)'],
  [['template', 'export'], 'guestlab template export: give the file to write, e.g. --output templates.tar'],
  [['template', 'export', 'web', '--output', 'x.tar'], 'guestlab template export: "web" is not a template key (32 hex digits; see guestlab template ls)'],
  [['template', 'import'], 'guestlab template import: name one archive written by guestlab template export, e.g. guestlab template import templates.tar'],
  [['ps', '--all'], 'guestlab ps: unknown option --all (ps takes no options; see guestlab help ps)'],
  [['ps', 'web'], 'guestlab ps: unexpected argument "web" (ps takes no arguments; see guestlab help ps)'],
  [['budget', '--cpu', '2'], 'guestlab budget: unknown option --cpu (budget takes --cpus N, --memory MIB, --json; see guestlab help budget)'],
  [['budget', '2'], 'guestlab budget: unexpected argument "2" (budget takes no arguments; see guestlab help budget)'],
  [['budget', '--cpus', '0x10'], number('cpus', '0x10', '2')],
  [['budget', '--cpus=1e3'], number('cpus', '1e3', '2')],
  [['budget', '--cpus', 'abc'], number('cpus', 'abc', '2')],
  [['budget', '--cpus', '-1'], number('cpus', '-1', '2')],
  [['budget', '--cpus=-1'], number('cpus', '-1', '2')],
  [['budget', '--cpus', '2.5'], number('cpus', '2.5', '2')],
  [['budget', '--cpus', '0'], number('cpus', '0', '2')],
  [['budget', '--memory', '1e3'], number('memory', '1e3', '2048')],
  [['budget', '--memory', ' 1024'], number('memory', ' 1024', '2048')],
  [['budget', '--memory', '99999999999999999999'], number('memory', '99999999999999999999', '2048')],
  [['budget', '--memory'], 'guestlab budget: --memory needs a value, e.g. --memory 2048'],
  [['ssh', '-v', 'web'], 'guestlab ssh: unknown option -v (ssh takes no options; see guestlab help ssh)'],
  [['ssh'], 'guestlab ssh: name the guest, e.g. guestlab ssh web-1a2b3c4d (see guestlab ps)'],
  [['ssh', '--', 'uptime'], 'guestlab ssh: name the guest, e.g. guestlab ssh web-1a2b3c4d (see guestlab ps)'],
  [['ssh', 'web', 'uptime'], 'guestlab ssh: unexpected argument "uptime" (ssh takes one GUEST; see guestlab help ssh)'],
  [['stop', '--force', 'web'], 'guestlab stop: unknown option --force (stop takes no options; see guestlab help stop)'],
  [['stop'], 'guestlab stop: name the guest, e.g. guestlab stop web-1a2b3c4d (see guestlab ps)'],
  [['stop', 'web', 'db'], 'guestlab stop: unexpected argument "db" (stop takes one GUEST; see guestlab help stop)'],
  [['gc', '--dry-run'], 'guestlab gc: unknown option --dry-run (gc takes --kept; see guestlab help gc)'],
  [['gc', 'now'], 'guestlab gc: unexpected argument "now" (gc takes no arguments; see guestlab help gc)'],
  [['gc', '--kept=yes'], 'guestlab gc: --kept takes no value, got "--kept=yes"'],
  [['gc', '--constructor'], 'guestlab gc: unknown option --constructor (gc takes --kept; see guestlab help gc)'],
  [['help', '--all'], 'guestlab help: unknown option --all (help takes no options; see guestlab help help)'],
  [['help', 'frob'], 'guestlab help: unknown command "frob" (the commands are doctor, image, template, ps, budget, ssh, stop, gc, help; see guestlab help)'],
  [['help', 'gc', 'now'], 'guestlab help: gc has no subcommand "now" (see guestlab help)'],
  [['help', 'image', 'ls', 'x'], 'guestlab help: unexpected argument "x" (help takes a COMMAND, e.g. gc or image build; see guestlab help help)'],
];

describe('a refused command line', () => {
  test.each(refused)('guestlab %j', async (argv, message) => {
    const { code, stdout, stderr } = await run(...argv);
    expect(stderr).toBe(message);
    expect(code).toBe(2);
    expect(stdout).toBe('');
    // Nothing was created: no cache, no budget lock, no instance directory.
    expect(await fs.readdir(root)).toEqual([]);
  });

  test('every command and subcommand has refusals above', () => {
    const covered = new Set(refused.map(([argv]) => allCommands().find((c) => argv.join(' ').startsWith(c.spec.name))?.spec.name));
    expect(allCommands().map((c) => c.spec.name).filter((name) => !covered.has(name))).toEqual([]);
  });
});

describe('guestlab gc --dry-run', () => {
  /** What a dead session leaves: its instance directory and its budget lease. */
  async function staleSession(): Promise<{ instance: string; lease: string }> {
    const instance = path.join(root, 'instances', 'web-dead0001');
    await fs.mkdir(instance, { recursive: true });
    await fs.writeFile(path.join(instance, OWNER_FILE), JSON.stringify({ instanceId: 'web-dead0001', owner: DEAD, createdAt: new Date().toISOString() }));
    const leases = path.join(root, 'budget', 'leases');
    await fs.mkdir(leases, { recursive: true, mode: 0o700 });
    await fs.chmod(path.join(root, 'budget'), 0o700);
    const lease = path.join(leases, 'lease-dead.json');
    await fs.writeFile(lease, JSON.stringify({ id: 'lease-dead', owner: DEAD, guest: 'web', cpus: 1, memoryMiB: 512, createdAt: Date.now() }));
    return { instance, lease };
  }

  test('is refused before the sweep: the dead session is still there', async () => {
    const { instance, lease } = await staleSession();
    const { code, stderr } = await run('gc', '--dry-run');
    await expect(fs.stat(path.join(instance, OWNER_FILE))).resolves.toBeTruthy();
    await expect(fs.stat(lease)).resolves.toBeTruthy();
    expect(stderr).toBe('guestlab gc: unknown option --dry-run (gc takes --kept; see guestlab help gc)');
    expect(code).toBe(2);
  });

  test('while plain gc removes that same session (so the test above would see a sweep)', async () => {
    const { instance, lease } = await staleSession();
    const { code, stdout } = await run('gc');
    expect(code).toBe(0);
    expect(stdout).toContain(`removed instance directory ${instance}`);
    expect(stdout).toContain(`released lease of web (1 CPU, 512 MiB) held by dead process ${DEAD.pid}`);
    await expect(fs.stat(instance)).rejects.toThrow(/ENOENT/);
    await expect(fs.stat(lease)).rejects.toThrow(/ENOENT/);
  });
});

describe('guestlab ssh GUEST -- COMMAND...', () => {
  test('passes everything after the first -- on untouched, options and further -- included', () => {
    const parsed = parseCommand(ssh.spec, ['web-1', '--', 'ls', '--dry-run', '-la', '--', '--x=1']);
    expect(parsed?.positionals).toEqual(['web-1']);
    expect(parsed?.passThrough).toEqual(['ls', '--dry-run', '-la', '--', '--x=1']);
  });

  test('gets past the arguments to looking for the guest', async () => {
    const { code, stderr } = await run('ssh', 'web', '--', 'ls', '--dry-run');
    expect(stderr).toBe('guestlab: ssh: no running guest is called web (running instances: none)');
    expect(code).toBe(1);
  });
});

describe('help', () => {
  test.each([['gc'], ['image', 'build'], ['budget'], ['ssh'], ['doctor']])('guestlab help %s is guestlab %s --help', async (...words) => {
    const viaHelp = await run('help', ...words);
    const viaFlag = await run(...words, '--help');
    const viaShort = await run(...words, '-h');
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.stdout).toMatch(new RegExp(`^Usage: guestlab ${words.join(' ')}\\b`));
    expect(viaHelp.stdout).toContain('-h, --help');
    expect(viaFlag).toEqual(viaHelp);
    expect(viaShort).toEqual(viaHelp);
  });

  test('a command\'s help names each of its options', async () => {
    const { stdout } = await run('help', 'budget');
    expect(stdout).toMatch(/^ {2}--cpus N {2,}CPUs/m);
    expect(stdout).toMatch(/^ {2}--memory MIB {2,}memory/m);
    expect(stdout).toMatch(/^ {2}--json {2,}/m);
  });

  test('guestlab help image and guestlab image --help list the subcommands', async () => {
    const viaHelp = await run('help', 'image');
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.stdout).toMatch(/^Usage: guestlab image SUBCOMMAND \(ls, build, pull, key, export, import, verify, rm\)$/m);
    expect(await run('image', '--help')).toEqual(viaHelp);
  });

  test('the overview lists every form of every command; guestlab alone prints it and exits 2', async () => {
    const { code, stdout } = await run('help');
    expect(code).toBe(0);
    expect(stdout).toBe(usage());
    for (const c of allCommands()) for (const [synopsis] of c.spec.usage) expect(stdout).toMatch(new RegExp(`^ {2}${escape(synopsis)}( |$)`, 'm'));
    expect(await run()).toEqual({ code: 2, stdout: usage(), stderr: '' });
  });
});

describe('README', () => {
  test('its Command line section shows exactly the forms of guestlab help', async () => {
    const readme = await fs.readFile(path.resolve(import.meta.dirname, '../../README.md'), 'utf8');
    const section = readme.split(/^## Command line$/m)[1]!.split(/^## /m)[0]!;
    const documented = [...section.matchAll(/^npx guestlab (.+?)(?: {2,}.*)?$/gm)].map((m) => m[1]!.trim());
    const forms = allCommands().flatMap((c) => c.spec.usage.map(([synopsis]) => synopsis));
    expect(documented.sort()).toEqual(forms.sort());
  });
});
