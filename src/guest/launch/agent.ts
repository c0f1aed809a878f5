// The command channel: connect to the guest agent on its virtio-serial port, when the guest has one.
// SSH stays what users and real clients get; the agent is how guestlab itself runs commands and
// moves files, and a guest whose agent does not answer still works, over SSH.
//
// An image with the `agent` feature starts its agent early in the boot: guestlab connects once sshd
// answered (agentStep). A downloaded image has none: cloud-init installs one from the seed
// (agentForSeed, cloud-init/user-data.ts) and starts it in its last stage, so guestlab connects
// once cloud-init has finished (installedAgentStep); until then commands go over SSH.
import fs from 'node:fs/promises';
import { buildAgent } from '../../agent/build.ts';
import { AgentClient } from '../../agent/client.ts';
import { guestlabPaths } from '../../config.ts';
import { AbortedError } from '../../errors.ts';
import { GUEST_ARCH } from '../../qemu/argv.ts';
import { need, type LaunchState, type LaunchStep } from './steps.ts';

/** How long a guest whose sshd already answered may take for its agent's handshake. */
const AGENT_WAIT_MS = 15_000;
/**
 * The same for an agent cloud-init installed: it was started before cloud-init reported its end, so
 * it answers at once. A guest that did not start it (no systemd) pays this wait, then uses SSH.
 */
const INSTALLED_AGENT_WAIT_MS = 5_000;

const HINT = '`journalctl -u guestlab-agent` in the guest says why the agent does not answer; commands then go over SSH';

/**
 * Makes the agent's socket its owner's alone, then returns the connection and HELLO to it, within
 * waitMs and the boot's deadline: the socket is being connected once this resolves.
 */
async function openAgent(state: LaunchState, waitMs: number): Promise<{ client: Promise<AgentClient> }> {
  const socket = need(state.instance, 'instance').file('agent');
  // QEMU made it under its umask; the instance directory (0700) already keeps others out.
  await fs.chmod(socket, 0o600);
  const remaining = need(state.deadline, 'deadline') - Date.now();
  return { client: AgentClient.connect(socket, { timeoutMs: Math.max(1000, Math.min(waitMs, remaining)), ...(state.signal ? { signal: state.signal } : {}) }) };
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
    if (!hasAgent(state)) return;
    // Awaited here: the connection must be under way before the restore lets the guest run.
    state.agentConnecting = (await openAgent(state, AGENT_WAIT_MS)).client;
    // Taken by the agent step; a launch that fails before it must not leave an unhandled rejection.
    state.agentConnecting.catch(() => undefined);
  },
};

export const agentStep: LaunchStep = {
  name: 'agent',
  description: 'connect to the guest agent on its virtio-serial port (the command channel), on an image with the agent',
  hint: HINT,
  async run(state) {
    if (!hasAgent(state)) return;
    await connectAgent(state, AGENT_WAIT_MS);
  },
};

/**
 * Whether the guest has an agent to connect to before cloud-init's end: its image's own, or, in a
 * clone, the one cloud-init installed in its template before it was saved.
 */
function hasAgent(state: LaunchState): boolean {
  return need(state.image, 'image').features.includes('agent') || (state.clonedFrom !== undefined && state.agentInSeed === true);
}

export const installedAgentStep: LaunchStep = {
  name: 'agent-installed',
  description: 'connect to the guest agent that cloud-init installed and started (an image without an agent of its own)',
  hint: `${HINT}; /var/log/cloud-init-output.log says whether cloud-init started it`,
  async run(state) {
    if (!state.agentInSeed) return;
    await connectAgent(state, INSTALLED_AGENT_WAIT_MS);
  },
};

/**
 * Connects state.resources.agent, or takes the connection agentConnectStep began; an agent that does
 * not answer in time leaves a warning, and commands go over SSH.
 */
async function connectAgent(state: LaunchState, waitMs: number): Promise<void> {
  try {
    state.resources.agent = await (state.agentConnecting ?? (await openAgent(state, waitMs)).client);
    state.log.debug(`agent: pid ${state.resources.agent.hello.pid} in the guest, protocol ${state.resources.agent.hello.version}`);
  } catch (error) {
    if (state.signal?.aborted) throw new AbortedError(`Starting guest ${state.spec.name} (connecting to its agent)`, { cause: state.signal.reason });
    state.log.warn(`guest ${state.spec.name}: the guest agent did not answer (${(error as Error).message}); commands go over SSH`);
  } finally {
    state.agentConnecting = undefined;
  }
}

/** Whether the "agent cannot be built" warning was given: once per process, later boots say it in debug. */
let buildWarned = false;

/**
 * The agent binary for cloud-init to install on this boot (the seed step calls this only when
 * cloud-init runs), or undefined when the guest gets none: its image has an agent of its own, the
 * guest's architecture is not the host's (the binary is compiled here, for the host), or the binary
 * cannot be built (no gcc: a warning, and commands go over SSH).
 */
export async function agentForSeed(state: LaunchState): Promise<{ binary: Buffer } | undefined> {
  if (need(state.image, 'image').features.includes('agent')) return undefined;
  if (process.arch !== GUEST_ARCH) {
    state.log.debug(`no guest agent for ${state.spec.name}: the agent is built for this ${process.arch} host, the guest is ${GUEST_ARCH}; commands go over SSH`);
    return undefined;
  }
  try {
    return { binary: await fs.readFile(await buildAgent(guestlabPaths().agentDir)) };
  } catch (error) {
    const message = `the guest agent for images without one could not be built (${(error as Error).message}); commands in such guests go over SSH`;
    if (buildWarned) state.log.debug(message);
    else state.log.warn(message);
    buildWarned = true;
    return undefined;
  }
}
