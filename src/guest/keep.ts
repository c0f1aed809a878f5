// Keeping a guest up after a failed test (GUESTLAB_KEEP=on-failure), and the commands to get in.
import { readEnv } from '../env.ts';
import { quoteArgv } from '../util/shell-quote.ts';
import type { SshInfo } from './types.ts';

export type KeepMode = 'never' | 'on-failure';

/** GUESTLAB_KEEP: `on-failure` keeps a guest whose test failed running for inspection. */
export function keepMode(): KeepMode {
  return readEnv('GUESTLAB_KEEP') ?? 'never';
}

/** The ssh(1) command line that reaches the guest with its own key and pinned host key. */
export function sshCommand(ssh: SshInfo): string[] {
  return [
    'ssh',
    '-i', ssh.privateKeyPath,
    '-o', 'IdentitiesOnly=yes',
    '-o', `UserKnownHostsFile=${ssh.knownHostsPath}`,
    '-o', 'StrictHostKeyChecking=yes',
    '-p', String(ssh.port),
    `${ssh.user}@${ssh.host}`,
  ];
}

export function keepInstructions(guest: { name: string; instanceId: string; ssh: SshInfo }, why: string): string {
  return [
    `guestlab: kept guest ${guest.name} (instance ${guest.instanceId}) running because ${why}.`,
    `  get in:  ${quoteArgv(sshCommand(guest.ssh))}`,
    `       or: npx guestlab ssh ${guest.instanceId}`,
    `  stop it: npx guestlab stop ${guest.instanceId}   (or all kept guests: npx guestlab gc --kept)`,
  ].join('\n');
}
