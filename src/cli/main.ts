// The `guestlab` command: finds the command named on the command line and runs it. Each command's
// arguments, usage text and code live together in its module (doctor, image, instances, budget).
import { EnvironmentError, GuestlabError } from '../errors.ts';
import { command, helpText, overviewLines, UsageError, type Command } from './args.ts';
import { budget } from './budget.ts';
import { doctor } from './doctor.ts';
import { image } from './image.ts';
import { template } from './template.ts';
import { gc, GUEST_NOTE, ps, ssh, stop } from './instances.ts';

const ENVIRONMENT = `Environment: GUESTLAB_CACHE_DIR (image cache), GUESTLAB_INSTANCES_DIR, GUESTLAB_IMAGES_PATH,
GUESTLAB_FIXTURES_PATH, GUESTLAB_BUDGET_CPUS, GUESTLAB_BUDGET_MEMORY_MIB, GUESTLAB_BUDGET_CPU_OVERCOMMIT,
GUESTLAB_HOST_RESERVE_MIB, GUESTLAB_BUDGET_DIR, GUESTLAB_KEEP=on-failure,
GUESTLAB_TIMEOUT_SCALE, GUESTLAB_REQUIRE_KVM=1, GUESTLAB_EVIDENCE_DIR, GUESTLAB_DEBUG=1 (verbose log),
GUESTLAB_OFFLINE=1 (never download), GUESTLAB_TEMPLATES=0 (no template cache), GUESTLAB_TEMPLATE_CACHE_MIB, GUESTLAB_OVMF_CODE and GUESTLAB_OVMF_VARS (UEFI firmware files).`;

const help = command(
  {
    name: 'help',
    usage: [['help [COMMAND]', 'this text, or the usage of one command (also: guestlab COMMAND --help)']],
    options: {},
    args: { min: 0, max: 2, what: 'a COMMAND, e.g. gc or image build' },
  },
  async ({ positionals }) => {
    if (positionals.length === 0) {
      console.log(usage());
      return 0;
    }
    const found = find(positionals, 'help');
    if ('group' in found) console.log(groupHelp(found.group, found.commands));
    else if (found.rest.length) throw new UsageError(`help: ${found.command.spec.name} has no subcommand ${JSON.stringify(found.rest[0])} (see guestlab help)`);
    else console.log(helpText(found.command.spec));
    return 0;
  },
);

/** Every command by its first word; `image` has subcommands. In the order `guestlab help` lists them. */
const COMMANDS: Record<string, Command | Command[]> = { doctor, image, template, ps, budget, ssh, stop, gc, help };

/** Every command (image subcommands one by one), for help and tests. */
export function allCommands(): Command[] {
  return Object.values(COMMANDS).flat();
}

/** The overview `guestlab help` prints. */
export function usage(): string {
  const lines = allCommands().flatMap((c) => (c === help ? [GUEST_NOTE, ...overviewLines(c.spec)] : overviewLines(c.spec)));
  return ['Usage: guestlab <command>', '', 'Commands:', ...lines, '', ENVIRONMENT].join('\n');
}

function groupHelp(name: string, commands: Command[]): string {
  return [`Usage: guestlab ${name} SUBCOMMAND (${subcommands(commands)})`, '', ...commands.flatMap((c) => overviewLines(c.spec)), '', `See guestlab help ${name} SUBCOMMAND.`].join('\n');
}

type Found = { command: Command; rest: string[] } | { group: string; commands: Command[]; asked: boolean };

/**
 * The command `words` name (the first word, and the subcommand of a group) with the words after it,
 * or the group when no subcommand is named (`asked` when that is a request for the group's help).
 */
function find(words: string[], context: string): Found {
  const [name = '', ...rest] = words;
  const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!entry) throw new UsageError(`${context}: unknown command ${JSON.stringify(name)} (the commands are ${Object.keys(COMMANDS).join(', ')}; see guestlab help)`);
  if (!Array.isArray(entry)) return { command: entry, rest };
  const [sub, ...after] = rest;
  if (sub === undefined || sub === '--help' || sub === '-h') return { group: name, commands: entry, asked: sub !== undefined };
  const found = entry.find((c) => c.spec.name === `${name} ${sub}`);
  if (!found) throw new UsageError(`${name}: unknown subcommand ${JSON.stringify(sub)}; use one of: ${subcommands(entry)} (see guestlab help ${name})`);
  return { command: found, rest: after };
}

function subcommands(commands: Command[]): string {
  return commands.map((c) => c.spec.name.split(' ')[1]).join(', ');
}

export async function main(argv: string[]): Promise<number> {
  const [name] = argv;
  try {
    if (name === undefined || name === '--help' || name === '-h') {
      console.log(usage());
      return name === undefined ? 2 : 0;
    }
    if (!Object.hasOwn(COMMANDS, name)) {
      console.error(`guestlab: unknown command "${name}"\n\n${usage()}`);
      return 2;
    }
    const found = find(argv, 'guestlab');
    if (!('group' in found)) return await found.command.invoke(found.rest);
    if (found.asked) {
      console.log(groupHelp(found.group, found.commands));
      return 0;
    }
    console.error(`guestlab ${found.group}: name a subcommand: ${subcommands(found.commands)} (see guestlab help ${found.group})`);
    return 2;
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`guestlab ${error.message}`);
      return 2;
    }
    if (error instanceof EnvironmentError) {
      console.error(`guestlab: ${error.message}`);
      return 2;
    }
    if (error instanceof GuestlabError || error instanceof TypeError) {
      console.error(`guestlab: ${error.message}`);
      return 1;
    }
    throw error;
  }
}
