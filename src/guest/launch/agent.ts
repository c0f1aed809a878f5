// The command channel: connect to the guest agent on its virtio-serial port, when the image has one.
// SSH stays what users and real clients get; the agent is how guestlab itself runs commands and
// moves files, and a guest whose agent does not answer still works, over SSH.
import fs from 'node:fs/promises';
import { AgentClient } from '../../agent/client.ts';
import { AbortedError } from '../../errors.ts';
import { need, type LaunchState, type LaunchStep } from './steps.ts';

/** How long a guest whose sshd already answered may take for its agent's handshake. */
const AGENT_WAIT_MS = 15_000;

/** The agent's socket, kept to its owner, and how long a handshake may take from now. */
async function agentSocket(state: LaunchState): Promise<{ socket: string; timeoutMs: number }> {
  const socket = need(state.instance, 'instance').file('agent');
  // QEMU made it under its umask; the instance directory (0700) already keeps others out.
  await fs.chmod(socket, 0o600);
  const remaining = need(state.deadline, 'deadline') - Date.now();
  return { socket, timeoutMs: Math.max(1000, Math.min(AGENT_WAIT_MS, remaining)) };
}

/**
 * A clone's host end of the port, connected before its saved state runs: the guest then finds the
 * port as its template left it (connected) instead of seeing end of file, and the HELLO waits in
 * the socket until the restored agent reads it. The agent step after the restore takes the answer.
 */
export const agentConnectStep: LaunchStep = {
  name: 'agent-connect',
  description: 'connect to the guest agent’s socket before the saved state runs, and send the HELLO',
  hint: 'the agent step after the restore reports whether the agent answered',
  async run(state) {
    if (!need(state.image, 'image').features.includes('agent')) return;
    const { socket, timeoutMs } = await agentSocket(state);
    state.agentConnecting = AgentClient.connect(socket, { timeoutMs, ...(state.signal ? { signal: state.signal } : {}) });
    // Taken by the agent step; a launch that fails before it must not leave an unhandled rejection.
    state.agentConnecting.catch(() => undefined);
  },
};

export const agentStep: LaunchStep = {
  name: 'agent',
  description: 'connect to the guest agent on its virtio-serial port (the command channel)',
  hint: '`journalctl -u guestlab-agent` in the guest says why the agent does not answer; commands then go over SSH',
  async run(state) {
    const image = need(state.image, 'image');
    if (!image.features.includes('agent')) return;
    try {
      if (state.agentConnecting) {
        state.resources.agent = await state.agentConnecting;
      } else {
        const { socket, timeoutMs } = await agentSocket(state);
        state.resources.agent = await AgentClient.connect(socket, { timeoutMs, ...(state.signal ? { signal: state.signal } : {}) });
      }
      state.log.debug(`agent: pid ${state.resources.agent.hello.pid} in the guest, protocol ${state.resources.agent.hello.version}`);
    } catch (error) {
      if (state.signal?.aborted) throw new AbortedError(`Starting guest ${state.spec.name} (connecting to its agent)`, { cause: state.signal.reason });
      state.log.warn(`guest ${state.spec.name}: the guest agent did not answer (${(error as Error).message}); commands go over SSH`);
    } finally {
      state.agentConnecting = undefined;
    }
  },
};
