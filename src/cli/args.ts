// Strict arguments for every guestlab command: node:util parseArgs (strict) decides what is allowed,
// each command declares its options and arguments next to its code, and a command runs only on
// arguments that passed every check, so a refused command line has done nothing.
import { parseArgs } from 'node:util';
import { validateEnvironment } from '../env.ts';

export interface OptionSpec {
  type: 'boolean' | 'string';
  /** The value's placeholder in usage text (FILE, N). */
  value?: string;
  /** A value for the messages that show how to give one. */
  example?: string;
  /** The value is a whole number of 1 or more, written in decimal digits. */
  integer?: boolean;
  default?: string;
  /** One line for `guestlab help COMMAND`. */
  help: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

type Value<O extends OptionSpec> = O extends { type: 'boolean' } ? boolean : O extends { integer: true } ? number : string;
export type Values<O extends OptionSpecs> = { [K in keyof O]: O[K] extends { type: 'boolean' } | { default: string } ? Value<O[K]> : Value<O[K]> | undefined };

export interface Parsed<O extends OptionSpecs> {
  values: Values<O>;
  positionals: string[];
  /** Everything after the first `--`, untouched (for commands with `passThrough`). */
  passThrough: string[];
}

export interface CommandSpec<O extends OptionSpecs> {
  /** As typed after `guestlab`: 'gc', 'image build'. */
  name: string;
  /** Each form of the command (the words after `guestlab`) with what it does, line breaks as shown. */
  usage: [synopsis: string, summary: string][];
  /** More for `guestlab help COMMAND`. */
  notes?: string;
  options: O;
  /** How many arguments the command takes, how the usage names them ('one GUEST'), and what to say when one is missing. */
  args: { min: number; max: number; what: string; missing?: string };
  /** The first `--` ends the command's own arguments; the rest is passed on as typed. */
  passThrough?: boolean;
  /** Checks across options and arguments: a refusal (without the command name), or undefined. */
  check?: (parsed: Parsed<O>) => string | undefined;
}

/** What help and the messages read of a command's spec (any options). */
export type SpecInfo = Omit<CommandSpec<OptionSpecs>, 'check'>;

/** A command line guestlab refuses (exit code 2); the message starts with the command's name. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A command, its arguments checked before it runs. */
export interface Command {
  spec: SpecInfo;
  invoke(args: string[]): Promise<number>;
}

export function command<const O extends OptionSpecs>(spec: CommandSpec<O>, run: (parsed: Parsed<O>) => Promise<number>): Command {
  return {
    spec,
    async invoke(args) {
      const parsed = parseCommand(spec, args);
      if (!parsed) {
        console.log(helpText(spec));
        return 0;
      }
      // The command line is right; the environment is checked next, before the command does anything.
      validateEnvironment(process.env, (message) => console.error(`guestlab: warning: ${message}`));
      return run(parsed);
    },
  };
}

/** The checked arguments, or undefined when the command line asks for the command's help. Throws UsageError. */
export function parseCommand<O extends OptionSpecs>(spec: CommandSpec<O>, args: string[]): Parsed<O> | undefined {
  const end = spec.passThrough && args.includes('--') ? args.indexOf('--') : args.length;
  const own = args.slice(0, end);
  let parsed;
  try {
    parsed = parseArgs({ args: own, options: parserOptions(spec.options), strict: true, allowPositionals: true });
  } catch (error) {
    throw new UsageError(`${spec.name}: ${explain(spec, own) ?? (error as Error).message}`);
  }
  if (parsed.values.help) return undefined;
  const { positionals } = parsed;
  if (positionals.length < spec.args.min) throw new UsageError(`${spec.name}: ${spec.args.missing ?? `missing ${spec.args.what} (see guestlab help ${spec.name})`}`);
  if (positionals.length > spec.args.max) {
    throw new UsageError(`${spec.name}: unexpected argument ${JSON.stringify(positionals[spec.args.max])} (${spec.name} takes ${spec.args.what}; see guestlab help ${spec.name})`);
  }
  const values: Record<string, string | number | boolean> = {};
  for (const [name, option] of Object.entries(spec.options)) {
    const raw = (parsed.values as Record<string, string | boolean | undefined>)[name] ?? option.default;
    if (option.type === 'boolean') values[name] = raw === true;
    else if (raw === '') throw new UsageError(`${spec.name}: --${name} needs a value, e.g. --${name} ${option.example ?? option.value}`);
    else if (raw !== undefined && option.integer) {
      const refusal = integerRefusal(name, option, raw as string);
      if (refusal) throw new UsageError(`${spec.name}: ${refusal}`);
      values[name] = Number(raw);
    } else if (raw !== undefined) values[name] = raw;
  }
  const result = { values: values as Values<O>, positionals, passThrough: args.slice(end + 1) };
  const refusal = spec.check?.(result);
  if (refusal) throw new UsageError(`${spec.name}: ${refusal}`);
  return result;
}

/** The command's options for parseArgs, and -h/--help, which every command takes. */
function parserOptions(options: OptionSpecs): Record<string, { type: 'boolean' | 'string'; short?: string }> {
  return { ...Object.fromEntries(Object.entries(options).map(([name, { type }]) => [name, { type }])), help: { type: 'boolean', short: 'h' } };
}

/** Decimal digits only: `0x10`, `1e3`, `2.5`, `-1` are refused, not read as 16, 1000, 2 or -1. */
function integerRefusal(name: string, option: OptionSpec, raw: string): string | undefined {
  const value = Number(raw);
  if (/^\d+$/.test(raw) && value >= 1 && Number.isSafeInteger(value)) return undefined;
  return `--${name} takes a whole number of 1 or more in decimal digits, got ${JSON.stringify(raw)} (e.g. --${name} ${option.example ?? 1})`;
}

/**
 * Why the strict parser refused `args`, in words that name the bad argument and the fix: the same
 * arguments read leniently, and the first token strict mode does not accept.
 */
function explain(spec: SpecInfo, args: string[]): string | undefined {
  const { tokens } = parseArgs({ args, options: parserOptions(spec.options), strict: false, allowPositionals: true, tokens: true });
  for (const token of tokens) {
    if (token.kind !== 'option') continue;
    const option = token.name === 'help' ? { type: 'boolean' as const, help: '' } : Object.hasOwn(spec.options, token.name) ? spec.options[token.name] : undefined;
    if (!option) return `unknown option ${token.rawName} (${spec.name} takes ${optionList(spec.options)}; see guestlab help ${spec.name})`;
    if (option.type === 'boolean' && token.value !== undefined) return `${token.rawName} takes no value, got ${JSON.stringify(`${token.rawName}=${token.value}`)}`;
    if (option.type === 'string' && token.value === undefined) return `${token.rawName} needs a value, e.g. ${token.rawName} ${option.example ?? option.value}`;
    if (option.type === 'string' && !token.inlineValue && token.value?.startsWith('-')) {
      if (option.integer) return integerRefusal(token.name, option, token.value);
      return `${token.rawName} needs a value, got the option ${token.value} (write ${token.rawName}=${token.value} if you mean that value)`;
    }
  }
  return undefined;
}

/** `--cpus N, --memory MIB, --json`, or `no options`. */
export function optionList(options: OptionSpecs): string {
  const names = Object.entries(options).map(([name, option]) => (option.value ? `--${name} ${option.value}` : `--${name}`));
  return names.length ? names.join(', ') : 'no options';
}

/** `guestlab help COMMAND` and `guestlab COMMAND --help`. */
export function helpText(spec: SpecInfo): string {
  const options = Object.entries(spec.options).map(([name, option]) => [option.value ? `--${name} ${option.value}` : `--${name}`, option.help] as const);
  options.push(['-h, --help', 'this text']);
  const width = Math.max(...options.map(([flag]) => flag.length));
  return [
    ...spec.usage.map(([synopsis], i) => `${i === 0 ? 'Usage:' : '      '} guestlab ${synopsis}`),
    '',
    ...spec.usage.map(([, summary]) => summary),
    ...(spec.notes ? ['', spec.notes] : []),
    '',
    'Options:',
    ...options.map(([flag, help]) => `  ${flag.padEnd(width)}  ${help}`),
  ].join('\n');
}

const SYNOPSIS_WIDTH = 28;

/** The command's lines in the overview of `guestlab help`: each form indented by two spaces, what it does beside it. */
export function overviewLines(spec: SpecInfo): string[] {
  return spec.usage.flatMap(([synopsis, summary]) => {
    const first = `  ${synopsis}`;
    const lines = summary.split('\n').map((line) => `${' '.repeat(SYNOPSIS_WIDTH + 2)}${line}`);
    if (first.length > SYNOPSIS_WIDTH) return [first, ...lines];
    return [`${first.padEnd(SYNOPSIS_WIDTH)}  ${lines[0]!.trimStart()}`, ...lines.slice(1)];
  });
}
