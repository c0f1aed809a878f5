// The direction of dependencies in src/: what each folder may import (guestlab's modules, npm
// packages, node: builtins) and which folder runs which host tool. Dependencies point one way:
// errors <- env <- config, log, util <- host <- disk, qemu, ssh, cloud-init, images, budget,
// network, inspect, reaper <- guest <- vitest, cli, index. A change that needs a new arrow changes
// this list, in review, on purpose.
import fs from 'node:fs/promises';
import path from 'node:path';
import { dir } from 'tmp-promise';
import { describe, expect, test } from 'vitest';
import { checkDependencies, importedPackages, type DependencyRules } from './dependency-check.ts';

const RULES: DependencyRules = {
  modules: {
    errors: [],
    'exec-result': [],
    env: ['errors'],
    config: ['env'],
    log: ['env'],
    util: ['errors'],
    host: ['config', 'env', 'errors', 'util'],
    disk: ['errors', 'host', 'util'],
    qemu: ['errors', 'host', 'log', 'util'],
    ssh: ['errors', 'exec-result', 'util'],
    agent: ['errors', 'host', 'util'],
    mounts: ['errors', 'host', 'util'],
    // cloud-init/ installs the guest agent on images without one: its path and unit (agent/unit.ts).
    'cloud-init': ['agent', 'errors', 'host', 'qemu', 'util'],
    images: ['agent', 'config', 'disk', 'env', 'errors', 'host', 'log', 'util'],
    budget: ['env', 'errors', 'host', 'log', 'util'],
    network: ['errors', 'util'],
    inspect: ['errors', 'exec-result', 'util'],
    reaper: ['budget', 'config', 'errors', 'host', 'log'],
    guest: ['agent', 'budget', 'cloud-init', 'config', 'disk', 'env', 'errors', 'exec-result', 'host', 'images', 'inspect', 'log', 'mounts', 'network', 'qemu', 'reaper', 'ssh', 'util'],
    vitest: ['env', 'errors', 'exec-result', 'guest', 'inspect', 'log', 'network', 'util'],
    cli: ['budget', 'config', 'env', 'errors', 'guest', 'host', 'images', 'qemu', 'reaper', 'util'],
    index: ['errors', 'guest', 'host', 'images', 'inspect', 'mounts', 'network'],
  },
  packages: {
    util: ['execa', 'p-retry', 'yaml', 'node:net'],
    host: ['execa'],
    'cloud-init': ['yaml'],
    ssh: ['ssh2', 'node:net'],
    agent: ['node:net'],
    qemu: ['node:child_process', 'node:net'],
    network: ['node:net'],
    vitest: ['vitest'],
    // guest/files.ts streams directories through tar; cli/ hands the terminal to ssh(1).
    guest: ['node:child_process'],
    cli: ['node:child_process'],
  },
  sharedBuiltins: ['node:crypto', 'node:events', 'node:fs', 'node:fs/promises', 'node:os', 'node:path', 'node:stream', 'node:stream/promises', 'node:timers/promises', 'node:url', 'node:util'],
  tools: {
    qemu: ['qemu'],
    'qemu-system-x86_64': ['qemu'],
    setpriv: ['qemu'],
    qemuImg: ['disk'],
    'qemu-img': ['disk'],
    isoTool: ['cloud-init'],
    mmdebstrap: ['images'],
    mkfsExt4: ['images', 'mounts'],
    // guestlab's own static C programs: the guest agent and the initramfs init (host/static-c.ts).
    gcc: ['agent', 'host'],
    // Debian 13's kernel modules come xz-compressed; the initramfs holds them uncompressed.
    xz: ['images'],
    zstd: ['images'],
    gzip: ['images'],
  },
  toolsExempt: ['host'],
};

const format = (violations: Awaited<ReturnType<typeof checkDependencies>>) => violations.map((v) => `${v.file}:${v.line}: ${v.what}: ${v.rule}`);

describe('dependencies', () => {
  test('every import in src/ keeps the allow-list, and no folders import each other', async () => {
    expect(format(await checkDependencies(path.resolve('src'), RULES))).toEqual([]);
  });

  test('src/ imports exactly the runtime dependencies package.json declares (tests\' packages stay dev dependencies)', async () => {
    const manifest = JSON.parse(await fs.readFile('package.json', 'utf8')) as Record<string, Record<string, string> | undefined>;
    const runtime = [...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {})].sort();
    expect(await importedPackages(path.resolve('src'))).toEqual(runtime);
  });

  test('the check fails on a forbidden import, a forbidden package, a tool run elsewhere and a cycle, naming file, import and rule', async () => {
    const { path: root, cleanup } = await dir({ unsafeCleanup: true });
    try {
      const src = path.join(root, 'src');
      const write = async (file: string, text: string) => {
        await fs.mkdir(path.dirname(path.join(src, file)), { recursive: true });
        await fs.writeFile(path.join(src, file), text);
      };
      await write('errors.ts', 'export class GuestlabError extends Error {}\n');
      await write('qemu/argv.ts', "import { GuestlabError } from '../errors.ts';\nimport type { StartedGuest } from '../guest/started.ts';\nexport const x = 1;\n");
      await write('guest/started.ts', "import { x } from '../qemu/argv.ts';\nexport class StartedGuest {}\n");
      await write('guest/files.ts', "import { Client } from 'ssh2';\nexport async function later() {\n  return import('../vitest/index.ts');\n}\n");
      await write('guest/start.ts', "import { run } from '../util/run.ts';\nexport const go = () => run('qemu-img', ['create']);\nexport const qemu = (host: any) => requireTool(host.qemu, 'qemu-system-x86', 'to run guests');\n");
      await write('util/run.ts', "export const run = (file: string, args: string[]) => undefined;\n");
      await write('vitest/index.ts', "export const y = 1;\n");
      await write('extra/thing.ts', "export const z = 1;\n");
      const rules: DependencyRules = {
        modules: { errors: [], util: ['errors'], qemu: ['errors'], guest: ['errors', 'qemu', 'util'], vitest: ['guest'] },
        packages: { ssh: ['ssh2'] },
        sharedBuiltins: [],
        tools: { 'qemu-img': ['disk'], qemu: ['qemu'] },
        toolsExempt: [],
      };
      expect(format(await checkDependencies(src, rules))).toEqual([
        'src/extra/thing.ts:1: extra: module extra has no entry in the allow-list: add what it may import',
        "src/guest/files.ts:1: ssh2: guest/ may not import ssh2; only ssh/ may",
        "src/guest/files.ts:3: ../vitest/index.ts: guest/ may import only errors, qemu, util; not vitest",
        "src/guest/start.ts:2: run('qemu-img', ...): only disk/ may run qemu-img",
        "src/guest/start.ts:3: requireTool(host.qemu, 'qemu-system-x86', 'to run guests'): only qemu/ may run qemu",
        "src/qemu/argv.ts:2: ../guest/started.ts: qemu/ may import only errors; not guest",
        'src/guest/started.ts:1: guest -> qemu -> guest: an import cycle between modules (src/guest/started.ts:1 imports ../qemu/argv.ts; src/qemu/argv.ts:2 imports ../guest/started.ts)',
      ]);
    } finally {
      await cleanup();
    }
  });
});
