// Users copy examples/ci/ as they are, so each workflow must be valid CI YAML and call only the
// guestlab commands and flags that `guestlab help` lists and the host packages setup.sh installs.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { parseDocument } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '../..');

type Kind = 'github' | 'gitlab';

/** What a workflow may call, read from the project itself. */
interface Project {
  /** Each guestlab command with its subcommands; '' when the command runs without one. */
  commands: Map<string, Set<string>>;
  flags: Set<string>;
  npmScripts: Set<string>;
  hostPackages: string[];
  fileExists: (relative: string) => boolean;
}

/** Commands of the usage text: the first word, and the second when it is a subcommand (not NAME or a flag). */
function usageCommands(usage: string): Map<string, Set<string>> {
  const commands = new Map<string, Set<string>>();
  const section = usage.split(/^Commands:$/m)[1]?.split(/\n\s*\n/)[0] ?? '';
  // Only lines indented by exactly two spaces start a command; deeper ones continue a description.
  for (const [, command, sub] of section.matchAll(/^ {2}([a-z][\w-]*)(?: ([a-z][\w-]*)\b)?/gm)) {
    commands.set(command!, (commands.get(command!) ?? new Set()).add(sub ?? ''));
  }
  return commands;
}

/** Reads the project the way a workflow sees it. The CLI runs from dist/, which `npm test` builds first. */
function loadProject(): Project {
  const usage = execFileSync(process.execPath, ['bin/guestlab.js', 'help'], { cwd: ROOT, encoding: 'utf8' });
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const setup = fs.readFileSync(path.join(ROOT, 'scripts/setup.sh'), 'utf8');
  const packages = /^packages=\(([^)]*)\)/m.exec(setup)?.[1];
  if (!packages) throw new Error('scripts/setup.sh has no packages=(...) line');
  return {
    commands: usageCommands(usage),
    flags: new Set(usage.match(/(?<![\w-])--?[a-z][\w-]*/g)),
    npmScripts: new Set(Object.keys(pkg.scripts)),
    hostPackages: packages.split(/\s+/).filter(Boolean),
    fileExists: (relative) => fs.existsSync(path.join(ROOT, relative)),
  };
}

/** Each $(...) becomes a line of its own; the outer line keeps a placeholder word in its place. */
function substitutions(line: string): string[] {
  const inner: string[] = [];
  let outer = '';
  for (let i = 0; i < line.length; i++) {
    if (!line.startsWith('$(', i)) {
      outer += line[i];
      continue;
    }
    let depth = 1;
    let j = i + 2;
    for (; j < line.length && depth > 0; j++) depth += line[j] === '(' ? 1 : line[j] === ')' ? -1 : 0;
    inner.push(...substitutions(line.slice(i + 2, j - 1)));
    outer += '…';
    i = j - 1;
  }
  return [outer, ...inner];
}

/** Splits a line on unquoted &&, ||, ; and | into commands of words, quotes removed, up to an unquoted #. */
function segments(line: string): string[][] {
  const result: string[][] = [];
  let words: string[] = [];
  let word: string | undefined;
  let quote: string | undefined;
  const endWord = () => {
    if (word !== undefined) words.push(word);
    word = undefined;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
      else word += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= '';
    } else if (c === '#' && word === undefined) {
      break;
    } else if (/\s/.test(c)) {
      endWord();
    } else if (c === ';' || c === '|' || line.startsWith('&&', i)) {
      if (line[i + 1] === c) i++;
      endWord();
      if (words.length) result.push(words);
      words = [];
    } else {
      word = (word ?? '') + c;
    }
  }
  endWord();
  if (words.length) result.push(words);
  return result;
}

const SHELL_KEYWORDS = new Set(['if', 'then', 'else', 'elif', 'fi', 'while', 'until', 'do', 'done', '!', '{', '}']);

/** The program and its arguments: without shell keywords, sudo, env and VAR=value prefixes. */
function withoutPrefixes(words: string[]): string[] {
  let i = 0;
  while (i < words.length) {
    const w = words[i]!;
    if (w === 'sudo' || w === 'env') while (words[++i]?.startsWith('-'));
    else if (SHELL_KEYWORDS.has(w) || /^[A-Za-z_]\w*=/.test(w)) i++;
    else break;
  }
  return words.slice(i);
}

/** Every command a shell script runs, with the (continuation-joined) line it stands on. */
function shellCommands(script: string): { line: string; argv: string[] }[] {
  const lines = script.replace(/\\\n\s*/g, ' ').split('\n').map((l) => l.trim());
  return lines
    .filter((line) => line && !line.startsWith('#'))
    .flatMap((line) => substitutions(line).flatMap(segments).map((words) => ({ line, argv: withoutPrefixes(words) })))
    .filter(({ argv }) => argv.length > 0);
}

function guestlabProblems(args: string[], project: Project): string[] {
  const [command = '', sub = ''] = args;
  const subs = project.commands.get(command);
  if (!subs) return [`"guestlab ${command}" is not a command of guestlab help (it lists ${[...project.commands.keys()].join(', ')})`];
  const problems: string[] = [];
  if (!subs.has('') && !subs.has(sub)) problems.push(`"guestlab ${command} ${sub}" is not a command of guestlab help (it lists ${[...subs].join(', ')})`);
  // After `--` the words belong to a command run in the guest (guestlab ssh GUEST -- ...).
  const end = args.includes('--') ? args.indexOf('--') : args.length;
  for (const arg of args.slice(0, end)) {
    const flag = arg.split('=')[0]!;
    if (flag.startsWith('-') && !project.flags.has(flag)) problems.push(`${flag} is not a flag of guestlab help`);
  }
  return problems;
}

function commandProblems([program, ...args]: string[], project: Project): string[] {
  if (program === 'npx') {
    const at = args.findIndex((a) => !a.startsWith('-'));
    const name = args[at];
    if (name === 'guestlab') return guestlabProblems(args.slice(at + 1), project);
    if (name === 'vitest') return [];
    return [`npx ${name ?? ''}: only guestlab and vitest may run through npx, as both come with the project's devDependencies`];
  }
  if (program === 'npm' && (args[0] === 'run' || args[0] === 'run-script')) {
    const script = args.slice(1).find((a) => !a.startsWith('-')) ?? '';
    return project.npmScripts.has(script) ? [] : [`npm run ${script}: package.json has no such script`];
  }
  if (program?.startsWith('./scripts/')) return project.fileExists(program) ? [] : [`${program} does not exist`];
  if (program === 'apt-get' && args.includes('install')) {
    const packages = new Set(args.slice(args.indexOf('install') + 1).filter((a) => !a.startsWith('-')));
    const missing = project.hostPackages.filter((p) => !packages.has(p));
    const extra = [...packages].filter((p) => !project.hostPackages.includes(p));
    if (missing.length || extra.length) return [`apt-get install differs from packages=(...) in scripts/setup.sh: missing [${missing.join(' ')}], extra [${extra.join(' ')}]`];
  }
  return [];
}

type Mapping = Record<string, unknown>;
const isRecord = (value: unknown): value is Mapping => typeof value === 'object' && value !== null && !Array.isArray(value);
const asList = (value: unknown): unknown[] => (value === undefined ? [] : Array.isArray(value) ? value.flat(Infinity) : [value]);

/** A job's shell scripts, and what is wrong with the workflow's structure. */
interface Structure {
  scripts: { job: string; script: string }[];
  problems: string[];
}

// Pinned to a release tag or a commit, never a branch: a moved branch changes what the workflow runs.
const PINNED = /^[\w.-]+\/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$/;

function githubStructure(root: Mapping): Structure {
  const scripts: Structure['scripts'] = [];
  const problems: string[] = [];
  if (root.on === undefined) problems.push('has no `on` (the events that run it)');
  if (!isRecord(root.jobs)) return { scripts, problems: [...problems, 'has no `jobs`'] };
  const jobs = root.jobs;
  for (const [id, job] of Object.entries(jobs)) {
    if (!isRecord(job)) continue;
    const needs = asList(job.needs).map(String);
    for (const need of needs) if (!isRecord(jobs[need])) problems.push(`job ${id}: needs ${need}, which is not a job`);
    const steps = Array.isArray(job.steps) ? job.steps.filter(isRecord) : [];
    if (steps.length === 0) problems.push(`job ${id}: has no steps`);
    const stepIds = new Set(steps.map((s) => s.id));
    steps.forEach((step, i) => {
      const where = `job ${id}: step ${i + 1}${step.name ? ` (${String(step.name)})` : ''}`;
      const kinds = ['run', 'uses'].filter((k) => k in step);
      if (kinds.length !== 1) problems.push(`${where}: has ${kinds.length ? 'both run and uses' : 'neither run nor uses'}`);
      if (step.uses !== undefined && !PINNED.test(String(step.uses))) problems.push(`${where}: uses ${String(step.uses)}, not pinned to a version tag like @v4`);
      if (typeof step.run === 'string') scripts.push({ job: id, script: step.run });
    });
    // Expressions naming a step or another job's output fail silently as empty strings when wrong.
    const text = JSON.stringify(job);
    for (const [, step] of text.matchAll(/\bsteps\.([\w-]+)\./g)) if (!stepIds.has(step)) problems.push(`job ${id}: refers to steps.${step}, which is no step id`);
    for (const [, need, output] of text.matchAll(/\bneeds\.([\w-]+)\.outputs\.([\w-]+)/g)) {
      const from = jobs[need!];
      if (!needs.includes(need!) || !isRecord(from) || !isRecord(from.outputs) || !(output! in from.outputs)) problems.push(`job ${id}: refers to needs.${need}.outputs.${output}, which it does not need or that job does not output`);
    }
  }
  return { scripts, problems };
}

// Top-level keys that configure the pipeline rather than name a job.
const GITLAB_KEYWORDS = new Set(['default', 'include', 'stages', 'variables', 'workflow', 'image', 'services', 'cache', 'before_script', 'after_script', 'spec']);

function gitlabStructure(root: Mapping): Structure {
  const scripts: Structure['scripts'] = [];
  const problems: string[] = [];
  const scriptsOf = (job: string, holder: Mapping) => {
    for (const key of ['before_script', 'script', 'after_script']) for (const script of asList(holder[key])) scripts.push({ job, script: String(script) });
  };
  scriptsOf('(top level)', root);
  if (isRecord(root.default)) scriptsOf('default', root.default);
  // Hidden jobs (.name) are templates; they run only through the jobs that extend them.
  const jobs = Object.entries(root).filter(([name, job]) => !GITLAB_KEYWORDS.has(name) && !name.startsWith('.') && isRecord(job)) as [string, Mapping][];
  const names = new Set(jobs.map(([name]) => name));
  if (jobs.length === 0) problems.push('has no jobs');
  for (const [name, job] of jobs) {
    if (job.script === undefined) problems.push(`job ${name}: has no script`);
    const needs = asList(job.needs).map((n) => (isRecord(n) ? n.job : n));
    for (const need of [...needs, ...asList(job.dependencies)]) if (!names.has(String(need))) problems.push(`job ${name}: needs ${String(need)}, which is not a job`);
    if (job.parallel !== undefined && typeof job.parallel !== 'number') problems.push(`job ${name}: parallel is ${JSON.stringify(job.parallel)}, not a number`);
    scriptsOf(name, job);
  }
  return { scripts, problems };
}

/** Problems of one workflow, each naming the file and where in it; and every command it runs. */
function checkWorkflow(file: string, text: string, kind: Kind, project: Project): { problems: string[]; commands: string[] } {
  const doc = parseDocument(text);
  const yamlProblems = [...doc.errors, ...doc.warnings].map((e) => `${file}: ${e.message}`);
  const root: unknown = doc.errors.length ? undefined : doc.toJS();
  if (!isRecord(root)) return { problems: yamlProblems.length ? yamlProblems : [`${file}: is not a YAML mapping`], commands: [] };
  const structure = (kind === 'github' ? githubStructure : gitlabStructure)(root);
  const problems = [...yamlProblems, ...structure.problems.map((p) => `${file}: ${p}`)];
  const commands: string[] = [];
  for (const { job, script } of structure.scripts) {
    for (const { line, argv } of shellCommands(script)) {
      commands.push(argv.join(' '));
      for (const problem of commandProblems(argv, project)) problems.push(`${file}: job ${job}: \`${line}\`: ${problem}`);
    }
  }
  return { problems, commands };
}

const project = loadProject();

describe('example CI workflows', () => {
  test.each<[string, Kind]>([
    ['examples/ci/github-actions.yml', 'github'],
    ['examples/ci/gitlab-ci.yml', 'gitlab'],
  ])('%s is valid and calls only what the project has', (file, kind) => {
    const { problems, commands } = checkWorkflow(file, fs.readFileSync(path.join(ROOT, file), 'utf8'), kind, project);
    expect(problems).toEqual([]);
    // The checks above pass vacuously if the commands were not found at all.
    expect(commands).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^apt-get install /),
        expect.stringMatching(/^npx guestlab image build debian-12$/),
        expect.stringMatching(/^npx guestlab image import guestlab-images.tar$/),
        expect.stringMatching(/^npx vitest run --shard=/),
        expect.stringMatching(/^npx guestlab gc$/),
      ]),
    );
  });

  test('the checker reports unknown commands, flags, scripts and packages, naming file, job and line', () => {
    const workflow = [
      'on: push',
      'jobs:',
      '  test:',
      '    runs-on: ubuntu-latest',
      '    needs: build',
      '    steps:',
      '      - uses: actions/checkout@main',
      '      - run: |',
      '          npx guestlab image frobnicate debian-12',
      '          npm ci && npm run nosuch',
      '          sudo apt-get install -y qemu-utils',
      '          echo "k=$(npx guestlab doctor --frob)" | npx tsx x.ts',
      '        uses: actions/cache@v4',
    ].join('\n');
    const { problems } = checkWorkflow('bad.yml', workflow, 'github', project);
    expect(problems).toEqual([
      'bad.yml: job test: needs build, which is not a job',
      'bad.yml: job test: step 1: uses actions/checkout@main, not pinned to a version tag like @v4',
      'bad.yml: job test: step 2: has both run and uses',
      expect.stringMatching(/^bad\.yml: job test: `npx guestlab image frobnicate debian-12`: "guestlab image frobnicate" is not a command of guestlab help \(it lists .*\bbuild\b/),
      'bad.yml: job test: `npm ci && npm run nosuch`: npm run nosuch: package.json has no such script',
      expect.stringMatching(/^bad\.yml: job test: `sudo apt-get install -y qemu-utils`: apt-get install differs .*missing \[qemu-system-x86 /),
      expect.stringMatching(/^bad\.yml: job test: `echo .*`: npx tsx: only guestlab and vitest/),
      expect.stringMatching(/^bad\.yml: job test: `echo .*`: --frob is not a flag of guestlab help$/),
    ]);
  });

  test('the checker reports GitLab jobs without script, unknown needs and a parallel that is no number', () => {
    const workflow = ['images:', '  script: [npx guestlab image ls]', 'test:', '  needs: [images, build]', '  parallel: two', '  before_script: [npx guestlab stop GUEST]'].join('\n');
    expect(checkWorkflow('bad.yml', workflow, 'gitlab', project).problems).toEqual([
      'bad.yml: job test: has no script',
      'bad.yml: job test: needs build, which is not a job',
      'bad.yml: job test: parallel is "two", not a number',
    ]);
  });

  test('shell lines are split into commands without their sudo, env and VAR= prefixes', () => {
    const script = [
      'sudo env "PATH=$PATH" X=1 npx guestlab image build a \\',
      '  b && echo "k=$(npx guestlab image key a)" | tee -a f; A=1 npm run x || ./scripts/y # npx nope',
      '# npx comment',
      '',
      "if [ ! -f f ]; then echo 'a && b; c'; fi",
    ].join('\n');
    expect(shellCommands(script).map(({ argv }) => argv.join(' '))).toEqual([
      'npx guestlab image build a b',
      'echo k=…',
      'tee -a f',
      'npm run x',
      './scripts/y',
      'npx guestlab image key a',
      '[ ! -f f ]',
      'echo a && b; c',
    ]);
  });
});
