// A file's type, mode, owner and size (`stat`, GNU or busybox), and its content, read as root.
import { describeValue } from '../util/validate.ts';
import { query, type ExecOutput, type GuestExecutor } from './executor.ts';

export type FileType = 'file' | 'directory' | 'symlink' | 'other';

export type FileInfo =
  | { exists: false }
  | {
      exists: true;
      type: FileType;
      /** Permission bits including setuid, setgid and sticky: 0o644, 0o4755, 0o1777. */
      mode: number;
      owner: string;
      group: string;
      size: number;
    };

// GNU coreutils and busybox stat both know these; %a is octal, %F the type in words.
const STAT_FORMAT = '%a|%U|%G|%F|%s';
const TYPES: Record<string, FileType> = {
  'regular file': 'file',
  'regular empty file': 'file',
  directory: 'directory',
  'symbolic link': 'symlink',
};
const MISSING = /No such file or directory|Not a directory/;

export function expectGuestPath(path: unknown): string {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new TypeError(`Expected \`path\` to be an absolute path in the guest, got ${describeValue(path)}`);
  }
  return path;
}

export function statArgv(path: string): string[] {
  return ['stat', '-c', STAT_FORMAT, '--', path];
}

/** Output of `stat -c '%a|%U|%G|%F|%s'`; a missing path (or a file where a directory should be) does not exist. */
export function parseStat(output: ExecOutput): FileInfo | undefined {
  if (output.exitCode !== 0) return MISSING.test(output.stderr) ? { exists: false } : undefined;
  const fields = output.stdout.trim().split('|');
  if (fields.length !== 5) return undefined;
  const [mode, owner, group, type, size] = fields as [string, string, string, string, string];
  if (!/^[0-7]{1,4}$/.test(mode) || !/^\d+$/.test(size)) return undefined;
  return { exists: true, type: TYPES[type] ?? 'other', mode: parseInt(mode, 8), owner, group, size: Number(size) };
}

/** Looks at the path itself: a symbolic link is reported as a link (mode 0777), not as its target. */
export async function fileInfo(executor: GuestExecutor, path: string): Promise<FileInfo> {
  return query(executor, statArgv(expectGuestPath(path)), parseStat, { sudo: true });
}

/** The file's content as UTF-8 text, read as root; throws GuestCommandError when it cannot be read. */
export async function readFileText(executor: GuestExecutor, path: string): Promise<string> {
  return query(executor, ['cat', '--', expectGuestPath(path)], (output) => (output.exitCode === 0 ? output.stdout : undefined), { sudo: true });
}

/** Whether the file's text contains the string, or matches the regular expression. */
export async function fileContains(executor: GuestExecutor, path: string, needle: string | RegExp): Promise<boolean> {
  if (typeof needle !== 'string' && !(needle instanceof RegExp)) {
    throw new TypeError(`Expected \`needle\` to be a string or a RegExp, got ${describeValue(needle)}`);
  }
  return textContains(await readFileText(executor, path), needle);
}

export function textContains(text: string, needle: string | RegExp): boolean {
  // search() starts at 0 whatever a /g RegExp's lastIndex says, and leaves lastIndex alone.
  return typeof needle === 'string' ? text.includes(needle) : text.search(needle) !== -1;
}
