// Every GUESTLAB_* variable guestlab reads, each with one strict parser. A value is refused by
// name, as it was given, with the fix ("GUESTLAB_BUDGET_CPUS is "abc", not a whole number: unset
// it (...) or set it to a whole number of CPUs, e.g. 2"), never turned into NaN or read as hex.
// Readers call readEnv() where they need a value, so tests and `test.env` can change variables
// at any time; entry points call validateEnvironment() first, so that every bad variable is
// reported at once and before anything is started.
import path from 'node:path';
import { EnvironmentError, type EnvironmentProblem } from './errors.ts';

type Env = Readonly<Record<string, string | undefined>>;

/** A parsed value, or what is wrong with the text (completes "GUESTLAB_KEEP is "text", ..."). */
type Parsed<T> = { value: T } | { problem: string };

interface Variable<T> {
  /** What it sets, as the README's Environment table says it. */
  meaning: string;
  /** What happens while it is unset, for the fix in a message. */
  unset: string;
  /** The values it takes, with an example, for the fix in a message. */
  expected: string;
  parse(text: string): Parsed<T>;
}

const DECIMAL_DIGITS = /^[0-9]+$/;
const DECIMAL_NUMBER = /^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$/;

/** Decimal digits only: not hex, not an exponent, no sign, no spaces, no fraction. */
function wholeNumber(meaning: string, unset: string, unit: string, example: number, min = 1): Variable<number> {
  return {
    meaning,
    unset,
    expected: `a whole number of ${unit}${min > 1 ? ` (at least ${min})` : ''}, e.g. ${example}`,
    parse(text) {
      if (!DECIMAL_DIGITS.test(text)) return { problem: 'not a whole number (decimal digits only)' };
      const value = Number(text);
      if (!Number.isSafeInteger(value)) return { problem: 'too large' };
      return value < min ? { problem: `below ${min}` } : { value };
    },
  };
}

/** A plain decimal such as 2 or 1.5: no exponent, no sign, no spaces. */
function decimal(meaning: string, unset: string, expected: string, accept: (value: number) => string | undefined): Variable<number> {
  return {
    meaning,
    unset,
    expected,
    parse(text) {
      if (!DECIMAL_NUMBER.test(text)) return { problem: 'not a decimal number' };
      const value = Number(text);
      const problem = accept(value);
      return problem === undefined ? { value } : { problem };
    },
  };
}

function oneOf<T extends string>(meaning: string, unset: string, values: readonly T[]): Variable<T> {
  return {
    meaning,
    unset,
    expected: values.map((v) => JSON.stringify(v)).join(' or '),
    parse: (text) => ((values as readonly string[]).includes(text) ? { value: text as T } : { problem: `not one of ${values.join(', ')}` }),
  };
}

/** "1" turns it on and "0" off; GUESTLAB_DEBUG has always taken true/false too. */
function flag(meaning: string, unset: string, words: readonly string[] = ['1', '0']): Variable<boolean> {
  return {
    meaning,
    unset,
    expected: `${words.map((w) => JSON.stringify(w)).join(' or ')} (1 to turn it on)`,
    parse: (text) => (words.includes(text) ? { value: text === '1' || text === 'true' } : { problem: `not ${words.join(' or ')}` }),
  };
}

/** A path, resolved against the working directory as it always was; "~" is the shell's, not ours. */
function location(meaning: string, unset: string): Variable<string> {
  return { meaning, unset, expected: 'an absolute path (a relative one is resolved against the working directory)', parse: parsePath };
}

function parsePath(text: string): Parsed<string> {
  if (text.startsWith('~')) return { problem: 'a path starting with "~", which only a shell expands' };
  return { value: path.resolve(text) };
}

/** A `:`-separated list of directories; empty entries are skipped as before. */
function directoryList(meaning: string): Variable<string[]> {
  return {
    meaning,
    unset: 'only the default directories are searched',
    expected: `directories separated by "${path.delimiter}", each absolute or relative to the working directory`,
    parse(text) {
      const dirs: string[] = [];
      for (const entry of text.split(path.delimiter).filter(Boolean)) {
        const parsed = parsePath(entry);
        if ('problem' in parsed) return { problem: `its entry ${JSON.stringify(entry)} is ${parsed.problem}` };
        dirs.push(parsed.value);
      }
      return { value: dirs };
    },
  };
}

/** Every variable guestlab reads. The README's Environment table lists the same names. */
export const ENVIRONMENT = {
  GUESTLAB_CACHE_DIR: location('image cache', 'the cache is $XDG_CACHE_HOME/guestlab'),
  GUESTLAB_INSTANCES_DIR: location("running guests' directories", 'they live in <cache>/instances'),
  GUESTLAB_IMAGES_PATH: directoryList('extra image directories, searched before ./images'),
  GUESTLAB_FIXTURES_PATH: directoryList('extra fixture directories, searched before ./fixtures'),
  GUESTLAB_TEMPLATES: flag(
    'restore guests from the template cache (0: every guest boots cold)',
    'a guest is restored from a saved template of its spec; the first start of a spec builds it',
  ),
  GUESTLAB_TEMPLATES_DIR: location('the template cache', 'it is <cache>/templates'),
  GUESTLAB_TEMPLATE_CACHE_MIB: wholeNumber('size cap of the template cache; least recently used templates go first', 'the cap is 16384 MiB', 'MiB', 16384),
  GUESTLAB_MAX_DOWNLOAD_MIB: wholeNumber('the largest image download accepted', 'a download may be up to 32768 MiB', 'MiB', 32768),
  GUESTLAB_OFFLINE: flag('never download: an image not in the cache fails at once', 'images are downloaded when needed'),
  GUESTLAB_OVMF_CODE: location('the OVMF firmware for UEFI guests', 'it is found where distributions install it'),
  GUESTLAB_OVMF_VARS: location('the OVMF variable store template for UEFI guests', 'it is found where distributions install it'),
  GUESTLAB_BUDGET_CPUS: wholeNumber('CPUs of the host-wide budget, for this process', 'the budget has the CPUs this host and its cgroup give', 'CPUs', 2),
  GUESTLAB_BUDGET_MEMORY_MIB: wholeNumber('a fixed memory budget, for this process', 'memory is measured at every admission', 'MiB', 4096),
  GUESTLAB_BUDGET_CPU_OVERCOMMIT: decimal(
    'how far a process that holds every lease may overcommit CPUs',
    'the factor is 2',
    'a number of at least 1, e.g. 1.5',
    (value) => (value < 1 ? 'below 1' : undefined),
  ),
  GUESTLAB_HOST_RESERVE_MIB: wholeNumber('memory left to the host and the test runner', 'the reserve is 1024 MiB', 'MiB', 1024),
  GUESTLAB_BUDGET_DIR: location('where leases live', 'they live in $XDG_RUNTIME_DIR/guestlab/budget or ~/.cache/guestlab/budget'),
  GUESTLAB_MIN_FREE_DISK_MIB: wholeNumber('free space needed where instances live before a boot', 'a boot needs 2048 MiB free', 'MiB', 2048),
  GUESTLAB_KEEP: oneOf('keep a guest whose test failed running', 'guests are stopped after every test', ['never', 'on-failure'] as const),
  GUESTLAB_TIMEOUT_SCALE: decimal(
    "factor for the waits' default deadlines",
    'the factor is 1 under KVM and 5 under TCG',
    'a positive number, e.g. 2.5',
    (value) => (value > 0 ? undefined : 'not above 0'),
  ),
  GUESTLAB_EVIDENCE_DIR: location("also write each failed guest test's evidence to a file in this directory", 'evidence goes to the reporters only'),
  GUESTLAB_REQUIRE_KVM: flag('`guestlab doctor --ci` fails when KVM is not usable', 'TCG is a note, not a failure'),
  GUESTLAB_QUIET: flag('no progress lines (warnings still print)', 'progress lines print'),
  GUESTLAB_DEBUG: flag('verbose per-guest log', 'only progress and warnings print', ['1', '0', 'true', 'false']),
} as const satisfies Record<`GUESTLAB_${string}`, Variable<unknown>>;

export type EnvName = keyof typeof ENVIRONMENT;
export type EnvValue<N extends EnvName> = (typeof ENVIRONMENT)[N] extends Variable<infer T> ? T : never;

function check<N extends EnvName>(name: N, env: Env): { value: EnvValue<N> | undefined; problem?: EnvironmentProblem } {
  const text = env[name];
  // Empty is unset: `GUESTLAB_KEEP= npm test` switches a variable off, as it always did.
  if (text === undefined || text === '') return { value: undefined };
  const variable: Variable<unknown> = ENVIRONMENT[name];
  const parsed = variable.parse(text);
  if ('value' in parsed) return { value: parsed.value as EnvValue<N> };
  return {
    value: undefined,
    problem: {
      variable: name,
      value: text,
      message: `${name} is ${JSON.stringify(text)}, ${parsed.problem}: unset it (${variable.unset}) or set it to ${variable.expected}.`,
    },
  };
}

/** The variable's value, undefined when unset or empty; a value it refuses throws EnvironmentError. */
export function readEnv<N extends EnvName>(name: N, env: Env = process.env): EnvValue<N> | undefined {
  const { value, problem } = check(name, env);
  if (problem) throw new EnvironmentError([problem]);
  return value;
}

/** Like readEnv(), but a refused value reads as unset: for the logger, which must never throw. */
export function peekEnv<N extends EnvName>(name: N, env: Env = process.env): EnvValue<N> | undefined {
  return check(name, env).value;
}

const warned = new Set<string>();

/**
 * Checks every GUESTLAB_* variable that is set and throws one EnvironmentError naming each bad
 * one. A GUESTLAB_ name guestlab does not read but that looks like a misspelt one is warned about
 * (once per name and process): it would otherwise be ignored without a word.
 */
export function validateEnvironment(env: Env = process.env, warn: (message: string) => void = defaultWarn): void {
  const problems: EnvironmentProblem[] = [];
  for (const name of Object.keys(ENVIRONMENT) as EnvName[]) {
    const { problem } = check(name, env);
    if (problem) problems.push(problem);
  }
  const code = env.GUESTLAB_OVMF_CODE;
  const vars = env.GUESTLAB_OVMF_VARS;
  if (!code !== !vars) {
    const [set, missing] = code ? ['GUESTLAB_OVMF_CODE', 'GUESTLAB_OVMF_VARS'] : ['GUESTLAB_OVMF_VARS', 'GUESTLAB_OVMF_CODE'];
    problems.push({
      variable: set,
      value: (code || vars)!,
      message: `${set} is set but ${missing} is not: set both (the firmware code and its variable store) or neither.`,
    });
  }
  for (const name of Object.keys(env)) {
    if (!name.startsWith('GUESTLAB_') || name in ENVIRONMENT || warned.has(name)) continue;
    const near = likelyMeant(name);
    if (near === undefined) continue;
    warned.add(name);
    warn(`${name} is not a variable guestlab reads; did you mean ${near}? (it is ignored)`);
  }
  if (problems.length) throw new EnvironmentError(problems);
}

function defaultWarn(message: string): void {
  process.stderr.write(`[guestlab] warning: ${message}\n`);
}

/** The known name `name` is most likely a misspelling of: the nearest one at most two edits away. */
export function likelyMeant(name: string): EnvName | undefined {
  let best: { name: EnvName; distance: number } | undefined;
  for (const known of Object.keys(ENVIRONMENT) as EnvName[]) {
    const distance = editDistance(name, known);
    if (distance <= 2 && (!best || distance < best.distance)) best = { name: known, distance };
  }
  return best?.name;
}

/** Levenshtein distance, with a swap of two neighbours counted as one edit. */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}
