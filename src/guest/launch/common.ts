// The steps every launch shares, fresh boot or clone: disk space, budget lease, instance directory,
// QEMU, its monitor, the SSH forward, and the SSH readiness requirements (banner, then key).
import fs from 'node:fs/promises';
import { acquireLease } from '../../budget/leases.ts';
import { guestlabPaths } from '../../config.ts';
import { readEnv } from '../../env.ts';
import { AbortedError, BootTimeoutError, DiskFullError, GuestDeadEndError, GuestlabError, HostRequirementError, QemuError, tailLines } from '../../errors.ts';
import { freeDiskBytes } from '../../host/probe.ts';
import { buildQemuArgv } from '../../qemu/argv.ts';
import { QemuMonitor } from '../../qemu/monitor.ts';
import { describeExit, launchQemu } from '../../qemu/process.ts';
import { currentIdentity } from '../../host/process-identity.ts';
import { qemuTag } from '../../reaper/sweep.ts';
import { waitForSshBanner, type BannerResult } from '../../ssh/banner.ts';
import { SshSession } from '../../ssh/session.ts';
import { retryUntil } from '../../util/retry.ts';
import { ConsoleWatch, withoutReport } from '../dead-end.ts';
import { createInstanceDir } from '../instance.ts';
import { keepMode } from '../keep.ts';
import { registerLive } from '../registry.ts';
import { need, sinceStart, type LaunchState, type LaunchStep } from './steps.ts';

const SERIAL_TAIL_LINES = 50;
/** A dead-end error carries the guest's own report; a shorter console tail goes with it. */
const DEAD_END_TAIL_LINES = 20;
const DEAD_END_POLL_MS = 500;
const DEFAULT_MIN_FREE_DISK_MIB = 2048;
const AUTH_RETRY_MS = 500;

export const diskSpaceStep: LaunchStep = {
  name: 'disk-space',
  description: 'check that the disk holding instance directories has room for an overlay',
  hint: 'free disk space there, point GUESTLAB_INSTANCES_DIR at a larger disk, or lower GUESTLAB_MIN_FREE_DISK_MIB',
  async run() {
    const { instancesDir } = guestlabPaths();
    const minMiB = readEnv('GUESTLAB_MIN_FREE_DISK_MIB') ?? DEFAULT_MIN_FREE_DISK_MIB;
    const freeMiB = Math.floor((await freeDiskBytes(instancesDir)) / 1048576);
    if (freeMiB < minMiB) {
      throw new HostRequirementError(
        `Only ${freeMiB} MiB free at ${instancesDir}, below the ${minMiB} MiB a guest's overlay may need. ` +
          'Free disk space there, point GUESTLAB_INSTANCES_DIR at a larger disk, or lower GUESTLAB_MIN_FREE_DISK_MIB.',
      );
    }
  },
};

export const budgetStep: LaunchStep = {
  name: 'budget',
  description: "wait for the guest's CPUs and memory in the host-wide budget",
  hint: '`guestlab budget` shows the leases and waiting requests; GUESTLAB_BUDGET_CPUS and GUESTLAB_BUDGET_MEMORY_MIB set the limits',
  async run(state) {
    const { spec, log, signal } = state;
    state.resources.lease = await acquireLease({ guest: spec.name, cpus: spec.cpus, memoryMiB: spec.memoryMiB, log, signal });
  },
};

export const instanceStep: LaunchStep = {
  name: 'instance',
  description: 'create the private instance directory (0700) that holds the guest’s files',
  hint: 'GUESTLAB_INSTANCES_DIR must be a directory owned by this user; `guestlab gc` removes what dead runs left',
  async run(state) {
    const instance = await createInstanceDir(guestlabPaths().instancesDir, state.spec.name);
    state.instance = instance;
    state.resources.instance = instance;
    registerLive(instance.id, { dir: instance.dir, leaseId: state.resources.lease?.id });
  },
};

export const qemuStep: LaunchStep = {
  name: 'qemu',
  description: 'start QEMU on the overlay, seed and firmware, with the SSH port forwarded on 127.0.0.1',
  hint: 'qemu.log in the instance directory has QEMU’s own words; `guestlab doctor` checks QEMU and the accelerator',
  async run(state) {
    const { spec, log, resources } = state;
    const instance = need(state.instance, 'instance');
    const media = need(state.media, 'boot media');
    const accel = need(state.accel, 'accelerator');
    const boot = `${media.uefi ? 'UEFI' : 'SeaBIOS'}${media.kernel ? ', direct kernel boot' : ', bootloader on the disk'}`;
    log.debug(`${state.clonedFrom ? `cloning ${state.clonedFrom}` : `booting ${spec.image}`} (${accel}, ${spec.cpus} cpu, ${spec.memoryMiB} MiB, ${boot}) in ${instance.dir}`);
    const argv = buildQemuArgv({
      name: spec.name,
      tag: qemuTag(instance.id, currentIdentity()),
      accel,
      cpus: spec.cpus,
      memoryMiB: spec.memoryMiB,
      disk: need(media.disk, 'disk'),
      seed: need(media.seed, 'seed'),
      kernel: media.kernel,
      uefi: media.uefi,
      qmpSocket: instance.file('qmp'),
      serialLog: instance.file('serial'),
      serialAppend: media.serialAppend,
      sshHostPort: 0,
      extraNics: state.attachments.map((a, i) => ({ id: `lan${i}`, mac: a.mac, localPort: a.qemuPort, remotePort: a.switchPort })),
      incoming: media.incoming && (media.incoming.ignoreShared ? 'defer' : media.incoming.uri),
      memoryFile: media.memoryFile,
    });
    // From the end of what the serial log holds now: a clone's log starts with its template's boot.
    state.watch = await ConsoleWatch.from(instance.file('serial'));
    state.bootStarted = performance.now();
    state.deadline = Date.now() + need(state.bootTimeoutMs, 'boot timeout');
    const qemu = await launchQemu(argv, log, { outputFile: instance.file('qemuLog'), keepable: keepMode() !== 'never' });
    resources.qemu = qemu;
    registerLive(instance.id, { dir: instance.dir, pid: qemu.pid });
    // From here on the budget counts what this QEMU really uses, not only what it asked for.
    await resources.lease?.attach(qemu.pid);
  },
};

export const monitorStep: LaunchStep = {
  name: 'monitor',
  description: 'connect to QEMU’s monitor (QMP)',
  hint: 'QEMU exited or hangs during startup: see qemu.log in the instance directory',
  async run(state) {
    const { spec, log, resources } = state;
    const instance = need(state.instance, 'instance');
    const monitor = await QemuMonitor.connect(instance.file('qmp'), need(resources.qemu, 'QEMU'), { label: `guest ${spec.name}`, deadline: need(state.deadline, 'deadline') });
    resources.monitor = monitor;
    monitor.onEvent((event) => {
      log.debug(`QMP event ${event.event} ${JSON.stringify(event.data ?? {})}`);
      // A full host disk pauses the guest; say so instead of leaving it hanging.
      if (event.event === 'BLOCK_IO_ERROR' && event.data?.nospace === true && !resources.diskFull) {
        resources.diskFull = new DiskFullError(spec.name, instance.dir);
        log.warn(resources.diskFull.message);
        resources.session?.close(resources.diskFull);
      }
    });
  },
};

export const sshForwardStep: LaunchStep = {
  name: 'ssh-forward',
  description: 'read the host port QEMU forwards to the guest’s SSH port, and pin the host key for it',
  hint: 'QEMU’s user network (info usernet) lists no forward to port 22: see qemu.log',
  async run(state) {
    const { spec, resources } = state;
    const instance = need(state.instance, 'instance');
    const qemu = need(resources.qemu, 'QEMU');
    const port = await need(resources.monitor, 'monitor').hostPortOf(22);
    state.sshPort = port;
    state.timings.qemuStartedMs = sinceStart(state);
    const { hostPublicKey } = need(state.keys, 'keys');
    await fs.writeFile(instance.file('knownHosts'), `[127.0.0.1]:${port} ${hostPublicKey}\n`, { mode: 0o600 });
    const info = { id: instance.id, name: spec.name, image: spec.image, accel: state.accel, cpus: spec.cpus, memoryMiB: spec.memoryMiB, sshPort: port, user: spec.user, qemuPid: qemu.pid, ownerPid: process.pid, clonedFrom: state.clonedFrom, startedAt: new Date().toISOString() };
    await fs.writeFile(instance.file('info'), JSON.stringify(info, null, 2) + '\n', { mode: 0o600 });
    need(state.watch, 'console watch').start(DEAD_END_POLL_MS);
  },
};

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
    pendingBanner.set(state, await banner(state));
    state.timings.sshBannerMs = sinceStart(state);
  },
};

const pendingBanner = new WeakMap<LaunchState, BannerResult['socket']>();

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
        let socket = pendingBanner.get(state);
        pendingBanner.delete(state);
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
