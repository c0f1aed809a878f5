// How guestlab reaches a running guest: the agent's command channel when the image has one, and the
// SSH session. A clone restored through its agent has no SSH session until something needs one (its
// sshd runs in the restored state; vm.ssh works for outside clients at once); a restored checkpoint
// gets new channels. commands.ts runs a command on whichever is there.
import fs from 'node:fs/promises';
import { AgentClient } from '../agent/client.ts';
import { GuestlabError } from '../errors.ts';
import { describeValue } from '../util/validate.ts';
import { SshSession } from '../ssh/session.ts';
import { retryUntil } from '../util/retry.ts';
import { expectProgram, runCommand, runOnAgent } from './commands.ts';
import type { AgentFiles } from './files.ts';
import type { GuestResources } from './resources.ts';
import type { ExecOptions, ExecResult, SshInfo } from './types.ts';

/** A new authenticated SSH session to the guest, retried until `withinMs` passes; a host key mismatch is final. */
export async function connectSsh(ssh: SshInfo, withinMs: number, stopWhen: () => Error | undefined): Promise<SshSession> {
  const deadline = Date.now() + withinMs;
  const privateKey = await fs.readFile(ssh.privateKeyPath, 'utf8');
  const endpoint = { host: ssh.host, port: ssh.port, user: ssh.user, privateKey, hostKey: ssh.hostKey };
  return retryUntil(() => SshSession.connect(endpoint, { readyTimeoutMs: Math.max(1000, Math.min(20_000, deadline - Date.now())) }), {
    deadline,
    minDelayMs: 200,
    maxDelayMs: 200,
    isFinal: (error) => (error as GuestlabError).code === 'ERR_HOST_KEY_MISMATCH',
    stopWhen,
  });
}

export class GuestChannels {
  readonly #resources: GuestResources;
  readonly #ssh: SshInfo;
  readonly #agentSocket: string;
  readonly #withinMs: number;
  readonly #qemuGone: () => Error | undefined;
  readonly #guest: string;
  #connecting: Promise<SshSession> | undefined;

  constructor(init: { guest: string; resources: GuestResources; ssh: SshInfo; agentSocket: string; withinMs: number; qemuGone: () => Error | undefined }) {
    this.#guest = init.guest;
    this.#resources = init.resources;
    this.#ssh = init.ssh;
    this.#agentSocket = init.agentSocket;
    this.#withinMs = init.withinMs;
    this.#qemuGone = init.qemuGone;
  }

  /** The agent, while it answers. */
  get agent(): AgentClient | undefined {
    const { agent } = this.#resources;
    return agent && !agent.lost ? agent : undefined;
  }

  /** The SSH session; connected now when the guest has none yet. */
  session(): Promise<SshSession> {
    const current = this.#resources.session;
    if (current) return Promise.resolve(current);
    this.#connecting ??= connectSsh(this.#ssh, this.#withinMs, this.#qemuGone)
      .then((session) => (this.#resources.session = session))
      .finally(() => (this.#connecting = undefined));
    return this.#connecting;
  }

  /** The agent's own file requests for the login user (root with `sudo`), unless `via` asks for SSH or there is no agent. */
  files(via: ExecOptions['via']): AgentFiles | undefined {
    const { agent } = this;
    if (!agent || via === 'ssh') return undefined;
    const user = this.#ssh.user;
    return {
      write: ({ sudo, ...request }) => agent.writeFile({ ...request, ...(sudo ? {} : { user }) }),
      read: ({ sudo, ...request }) => agent.readFile({ ...request, ...(sudo ? {} : { user }) }),
    };
  }

  /** Runs argv through the agent when it answers, over SSH otherwise. */
  async exec(argv: string[], options: ExecOptions): Promise<ExecResult> {
    const { via } = options;
    if (via !== undefined && via !== 'agent' && via !== 'ssh') throw new TypeError(`Expected \`via\` to be 'agent' or 'ssh', got ${describeValue(via)}`);
    expectProgram(argv);
    const { agent } = this;
    if (via === 'agent' && !agent) {
      throw new GuestlabError(`Guest ${this.#guest} has no guest agent to run the command on (${this.#resources.agent?.lost ?? 'none answered at boot: its image has none and cloud-init did not install one, or it did not answer'}); leave \`via\` out to use SSH`);
    }
    return agent && via !== 'ssh' ? runOnAgent(agent, this.#ssh.user, argv, options) : runCommand(await this.session(), argv, options);
  }

  /** Ends both channels; `why` is what commands in flight fail with. */
  close(why: Error): void {
    this.#resources.agent?.close();
    this.#resources.session?.close(why);
  }

  /**
   * After the guest's memory was replaced (a checkpoint restored): a new agent connection when the
   * guest had an agent (SSH then connects when needed), otherwise a new SSH session at once.
   */
  async reconnect(): Promise<void> {
    const hadAgent = this.#resources.agent !== undefined;
    this.#resources.agent = undefined;
    this.#resources.session = undefined;
    if (hadAgent) this.#resources.agent = await AgentClient.connect(this.#agentSocket, { timeoutMs: this.#withinMs });
    else await this.session();
  }
}
