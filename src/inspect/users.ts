// A user account: its passwd entry (`getent passwd`, or /etc/passwd where there is no getent,
// as on Alpine without musl-utils) and the names of its groups (`id -nG`).
import { expectString } from '../util/validate.ts';
import { detectTools } from './detect.ts';
import { lines, query, type ExecOutput, type GuestExecutor } from './executor.ts';

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

export type UserInfo = { exists: false } | ({ exists: true; groups: string[] } & PasswdEntry);

// Not all digits (getent would look the number up as a uid), no leading dash (an option).
const USER_NAME = /^[A-Za-z_][A-Za-z0-9._-]*\$?$/;

/** One passwd line: "name:password:uid:gid:gecos:home:shell". */
export function parsePasswdLine(line: string): PasswdEntry | undefined {
  const fields = line.split(':');
  if (fields.length !== 7 || !/^\d+$/.test(fields[2]!) || !/^\d+$/.test(fields[3]!)) return undefined;
  return { name: fields[0]!, uid: Number(fields[2]), gid: Number(fields[3]), home: fields[5]!, shell: fields[6]! };
}

/** `getent passwd NAME`: null when there is no such user (exit 2). */
export function parseGetentPasswd(output: ExecOutput, name: string): PasswdEntry | null | undefined {
  if (output.exitCode === 2 && output.stdout.trim() === '') return null;
  if (output.exitCode !== 0) return undefined;
  const entry = lines(output.stdout).map(parsePasswdLine).find((e) => e?.name === name);
  return entry ?? undefined;
}

/** The whole of /etc/passwd, searched on the host. */
export function findPasswdEntry(output: ExecOutput, name: string): PasswdEntry | null | undefined {
  if (output.exitCode !== 0) return undefined;
  return lines(output.stdout).map(parsePasswdLine).find((e) => e?.name === name) ?? null;
}

/** `id -nG NAME`: group names separated by spaces, the primary group first. */
export function parseIdGroups(output: ExecOutput): string[] | undefined {
  return output.exitCode === 0 ? output.stdout.trim().split(/\s+/).filter(Boolean) : undefined;
}

export async function userInfo(executor: GuestExecutor, name: string): Promise<UserInfo> {
  expectString('name', name, USER_NAME, 'a user name starts with a letter or "_" and has no spaces');
  const { paths } = await detectTools(executor);
  const entry = paths.getent
    ? await query(executor, [paths.getent, 'passwd', name], (output) => parseGetentPasswd(output, name))
    : await query(executor, ['cat', '/etc/passwd'], (output) => findPasswdEntry(output, name));
  if (entry === null) return { exists: false };
  const groups = await query(executor, ['id', '-nG', name], parseIdGroups);
  return { exists: true, ...entry, groups };
}
