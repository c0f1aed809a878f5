// `guestlab template ...`: the template cache (template-cache.ts): list, remove, prune.
import { GuestTemplate } from '../guest/template.ts';
import { TemplateCache } from '../guest/template-cache.ts';
import { exportTemplates, importTemplates } from '../guest/template-archive.ts';
import { specFrom } from '../guest/start.ts';
import { command, UsageError, type Command } from './args.ts';
import { printTable } from './table.ts';

const KEY = /^[0-9a-f]{32}$/;

const mib = (bytes: number) => `${(bytes / 1048576).toFixed(0)} MiB`;

const ls = command(
  {
    name: 'template ls',
    usage: [['template ls [--json]', 'list the saved templates: key, image, spec (cpus, memory, cloud-config),\nQEMU and machine, accelerator, size on disk, last use']],
    options: { json: { type: 'boolean', help: 'each template\'s key inputs, size and last use, as JSON' } },
    args: { min: 0, max: 0, what: 'no arguments' },
  },
  async ({ values }) => {
    const cache = new TemplateCache();
    const entries = await cache.list();
    if (values.json) {
      console.log(JSON.stringify(entries.map((e) => ({ key: e.key, bytes: e.bytes, lastUsed: e.lastUsed.toISOString(), createdAt: e.manifest?.createdAt, inputs: e.manifest?.inputs })), null, 2));
      return 0;
    }
    const rows = [['KEY', 'IMAGE', 'SPEC', 'QEMU', 'MACHINE', 'ACCEL', 'SIZE', 'LAST USE']];
    for (const { key, manifest, bytes, lastUsed } of entries) {
      const inputs = manifest?.inputs;
      const spec = inputs ? `${inputs.spec.cpus} cpu, ${inputs.spec.memoryMiB} MiB${inputs.spec.cloudConfig ? ', cloud-config' : ''}${inputs.spec.firmware ? `, ${inputs.spec.firmware}` : ''}` : '(unreadable manifest)';
      rows.push([key, inputs ? `${inputs.image.name}@${inputs.image.hash.slice(0, 12)}` : '-', spec, inputs?.qemu.version ?? '-', inputs?.machine ?? '-', inputs?.accel ?? '-', mib(bytes), lastUsed.toISOString()]);
    }
    printTable(rows);
    console.log(`${entries.length} template(s), ${mib(entries.reduce((sum, e) => sum + e.bytes, 0))}, in ${cache.dir}`);
    return 0;
  },
);

const rm = command(
  {
    name: 'template rm',
    usage: [['template rm KEY... | --all', 'remove saved templates (guests running from them keep running)']],
    options: { all: { type: 'boolean', help: 'remove every template' } },
    args: { min: 0, max: Infinity, what: 'template keys (KEY...), as template ls lists them' },
    check: ({ positionals, values }) => {
      if (!values.all && positionals.length === 0) return 'name the templates to remove (see guestlab template ls), or give --all';
      const bad = positionals.find((key) => !KEY.test(key));
      return bad === undefined ? undefined : `${JSON.stringify(bad)} is not a template key (32 hex digits; see guestlab template ls)`;
    },
  },
  async ({ positionals, values }) => {
    const cache = new TemplateCache();
    const keys = values.all ? (await cache.list()).map((e) => e.key) : positionals;
    let missing = 0;
    for (const key of keys) {
      if (await cache.remove(key)) console.log(`removed template ${key}`);
      else {
        console.error(`no template ${key} (see guestlab template ls)`);
        missing++;
      }
    }
    return missing ? 1 : 0;
  },
);

const prune = command(
  {
    name: 'template prune',
    usage: [['template prune [--max-mib N]', 'remove least recently used templates until the cache fits\nN MiB (default GUESTLAB_TEMPLATE_CACHE_MIB, 16384)']],
    options: { 'max-mib': { type: 'string', value: 'N', example: '4096', help: 'the size to prune to, in MiB (0 empties the cache)' } },
    args: { min: 0, max: 0, what: 'no arguments' },
    check: ({ values }) => {
      const value = values['max-mib'];
      return value === undefined || /^\d+$/.test(String(value)) ? undefined : `--max-mib ${JSON.stringify(value)} is not a whole number of MiB`;
    },
  },
  async ({ values }) => {
    const cache = new TemplateCache();
    const max = values['max-mib'];
    const removed = await cache.prune(max === undefined ? {} : { maxBytes: Number(max) * 1048576 });
    console.log(removed.length ? `removed ${removed.length} template(s): ${removed.join(' ')}` : 'the template cache fits its cap; nothing removed');
    return 0;
  },
);

const build = command(
  {
    name: 'template build',
    usage: [['template build FIXTURE...', 'boot each spec fixtures/FIXTURE.yaml and save it as a template\n(a CI job can build them before its tests run)']],
    options: {},
    args: { min: 1, max: Infinity, what: 'spec names (FIXTURE...)', missing: 'name the spec files, e.g. guestlab template build web (fixtures/web.yaml)' },
  },
  async ({ positionals }) => {
    for (const name of positionals) {
      const spec = await specFrom(name);
      const found = await GuestTemplate.fromCache(spec, true);
      if (!found) throw new UsageError(`template build: ${name} cannot be a cached template (it joins private networks or mounts host directories)`);
      console.log(`${name}: template ${found.template.cacheKey} ${found.built ? 'built' : 'was there already'}`);
    }
    return 0;
  },
);

const exportCommand = command(
  {
    name: 'template export',
    usage: [['template export [KEY...] --output FILE', 'write saved templates (all, or the named ones) into one tar file,\nfor another CI job; its images travel with guestlab image export']],
    options: { output: { type: 'string', value: 'FILE', example: 'templates.tar', help: 'the tar file to write (replaced whole, never left half-written)' } },
    args: { min: 0, max: Infinity, what: 'template keys (KEY...), as template ls lists them' },
    check: ({ positionals, values }) => {
      if (values.output === undefined) return 'give the file to write, e.g. --output templates.tar';
      const bad = positionals.find((key) => !KEY.test(key));
      return bad === undefined ? undefined : `${JSON.stringify(bad)} is not a template key (32 hex digits; see guestlab template ls)`;
    },
  },
  async ({ positionals, values }) => {
    const { keys, bytes } = await exportTemplates(positionals, String(values.output));
    console.log(`exported ${keys.length} template(s) to ${values.output} (${mib(bytes)})`);
    return 0;
  },
);

const importCommand = command(
  {
    name: 'template import',
    usage: [['template import FILE', 'unpack an exported file into the template cache, verifying every digest\n(import the images it stands on first)']],
    options: {},
    args: { min: 1, max: 1, what: 'one FILE', missing: 'name one archive written by guestlab template export, e.g. guestlab template import templates.tar' },
  },
  async ({ positionals }) => {
    const { templates } = await importTemplates(positionals[0]!);
    for (const t of templates) console.log(`${t.key}: ${t.outcome}`);
    return 0;
  },
);

/** The `template` subcommands, in the order help lists them. */
export const template: Command[] = [ls, build, exportCommand, importCommand, rm, prune];
