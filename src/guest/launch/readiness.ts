// The readiness requirements every launch shares: the SSH banner, then the guest's key, then the
// last wait (cloud-init, or a clone's fix-up), each ending at once when the guest cannot get there
// (QEMU exited, the host disk is full, the guest reported a dead end on its console), with the
// serial console's tail as evidence.
import fs from 'node:fs/promises';
import { AbortedError, BootTimeoutError, GuestDeadEndError, GuestlabError, QemuError, tailLines } from '../../errors.ts';
import { describeExit } from '../../qemu/process.ts';
import { waitForSshBanner } from '../../ssh/banner.ts';
import { SshSession } from '../../ssh/session.ts';
import { retryUntil } from '../../util/retry.ts';
import { withoutReport } from '../dead-end.ts';
import { need, sinceStart, type LaunchState, type LaunchStep } from './steps.ts';

const SERIAL_TAIL_LINES = 50;
/** A dead-end error carries the guest's own report; a shorter console tail goes with it. */
const DEAD_END_TAIL_LINES = 20;
const AUTH_RETRY_MS = 500;

/**
 * The error for a start that went wrong, with the serial console's tail as evidence; a dead end
 * the guest reported on its console (a unit failed for good, emergency mode, panic) wins.
 */
export async function bootFailure(state: LaunchState, phase: string, problem: string, details: { timedOut: boolean; cause?: unknown }): Promise<Error> {
  const { spec } = state;
  const instance = need(state.instance, 'instance');
  const qemu = need(state.resources.qemu, 'QEMU');
  const elapsedMs = performance.now() - need(state.bootStarted, 'boot start');
  const serial = tailLines(await fs.readFile(instance.file('serial'), 'utf8').catch(() => ''), SERIAL_TAIL_LINES);
  const deadEnd = await state.watch?.poll().catch(() => undefined);
  if (deadEnd) return new GuestDeadEndError(spec.name, deadEnd, phase, elapsedMs, tailLines(withoutReport(serial), DEAD_END_TAIL_LINES));
  const text = `Guest ${spec.name} (${spec.image}, ${state.accel}${state.clonedFrom ? `, clone of ${state.clonedFrom}` : ''}) ${problem} (phase: ${phase}, ${(elapsedMs / 1000).toFixed(1)}s after QEMU started).\n` +
    `--- serial console, last ${SERIAL_TAIL_LINES} lines ---\n${serial || '(empty)'}`;
  if (qemu.hasExited) return new QemuError(`${text}\n--- QEMU output ---\n${qemu.outputTail()}`, { cause: details.cause });
  return details.timedOut ? new BootTimeoutError(text, need(state.bootTimeoutMs, 'boot timeout'), phase, { cause: details.cause }) : new GuestlabError(text, { cause: details.cause });
}

/** Why waiting for the guest is pointless now, if it is. */
function gone(state: LaunchState): string | undefined {
  const { qemu, diskFull } = state.resources;
  return qemu?.hasExited ? 'QEMU exited' : diskFull ? 'the host disk is full' : state.watch?.deadEnd ? 'the guest reached a dead end' : undefined;
}

/** Waits for the SSH banner; undefined when the deadline passes. Throws when waiting became pointless. */
async function banner(state: LaunchState, cause?: unknown) {
  const deadline = need(state.deadline, 'deadline');
  const port = need(state.sshPort, 'SSH port');
  const result = await waitForSshBanner({ host: '127.0.0.1', port, deadline, shouldStop: () => gone(state), signal: state.signal });
  const timeoutMs = need(state.bootTimeoutMs, 'boot timeout');
  if (!result) throw await bootFailure(state, 'ssh-banner', `did not answer SSH within ${timeoutMs} ms`, { timedOut: true, cause });
  if ('stopped' in result) {
    if (state.resources.diskFull) throw state.resources.diskFull;
    const qemu = need(state.resources.qemu, 'QEMU');
    throw await bootFailure(state, 'ssh-banner', `stopped before SSH answered: ${qemu.exit ? `QEMU ${describeExit(qemu.exit)}` : result.stopped}`, { timedOut: false });
  }
  return result.socket;
}

export const sshBannerStep: LaunchStep = {
  name: 'ssh-banner',
  description: 'wait until the guest’s sshd answers with its banner',
  hint: 'the serial console in the error shows how far the guest got; a guest that never starts sshd reports a dead end there',
  async run(state) {
    // The banner's socket is handed to the authentication step, which uses it for its first try.
    state.bannerSocket = await banner(state);
    state.timings.sshBannerMs = sinceStart(state);
  },
};

export const sshAuthStep: LaunchStep = {
  name: 'ssh-auth',
  description: 'authenticate with the guest’s own key against its pinned host key',
  hint: 'sshd may be up before cloud-init created the user; a host key mismatch means another process answers on the port',
  async run(state) {
    const { spec, log, resources } = state;
    const deadline = need(state.deadline, 'deadline');
    const keys = need(state.keys, 'keys');
    const endpoint = { host: '127.0.0.1', port: need(state.sshPort, 'SSH port'), user: spec.user, privateKey: keys.clientPrivateKey, hostKey: keys.hostPublicKey };
    // Retried until the deadline: sshd may answer before cloud-init has created the user. Each retry
    // waits for the banner again; a banner wait that failed, and a host key mismatch, are final.
    const final = new WeakSet<object>();
    const deadEnd = new GuestlabError('dead end');
    let lastError: unknown;
    try {
      resources.session = await retryUntil(async () => {
        let socket = state.bannerSocket;
        state.bannerSocket = undefined;
        socket ??= await banner(state).catch((error: Error) => {
          final.add(error);
          throw error;
        });
        return SshSession.connect(endpoint, { sock: socket, readyTimeoutMs: Math.max(1000, deadline - Date.now()) });
      }, {
        deadline,
        signal: state.signal,
        minDelayMs: AUTH_RETRY_MS,
        maxDelayMs: AUTH_RETRY_MS,
        isFinal: (error) => final.has(error as object) || (error as GuestlabError).code === 'ERR_HOST_KEY_MISMATCH',
        stopWhen: () => (state.watch?.deadEnd ? deadEnd : undefined),
        onRetry: (error) => {
          lastError = error;
          log.debug(`SSH not ready yet: ${(error as Error).message}`);
        },
      });
    } catch (error) {
      if (state.signal?.aborted) throw new AbortedError(`Starting guest ${spec.name} (waiting for SSH)`, { cause: state.signal.reason });
      if (final.has(error as object) || (error as GuestlabError).code === 'ERR_HOST_KEY_MISMATCH') throw error;
      if (error === deadEnd) throw await bootFailure(state, 'ssh-auth', 'reached a dead end before it accepted the SSH key', { timedOut: false, cause: lastError });
      throw await bootFailure(state, 'ssh-auth', `did not accept the SSH key within ${state.bootTimeoutMs} ms`, { timedOut: true, cause: error });
    }
    state.timings.sshReadyMs = sinceStart(state);
    log.debug(`SSH ready after ${(state.timings.sshReadyMs / 1000).toFixed(1)}s`);
  },
};

/**
 * Runs the last readiness wait (cloud-init, or a clone's fix-up) so that a guest that panics or
 * halts meanwhile ends it at once through the console watch, and a full disk wins over any error.
 */
export async function settle(state: LaunchState, phase: string, wait: Promise<void>): Promise<void> {
  const watch = need(state.watch, 'console watch');
  const deadEnd = watch.found.then(async () => {
    throw await bootFailure(state, phase, 'reached a dead end while settling', { timedOut: false });
  });
  await Promise.race([wait, deadEnd]).catch((error: unknown) => {
    throw state.resources.diskFull ?? error;
  });
  watch.stop();
}
