// startGuest(): the whole flow of one guest, image -> disk -> seed -> qemu -> ready. Clones of a
// template (template.ts) go through the same launchGuest() with a plan of their own.
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { acquireLease } from '../budget/leases.ts';
import { AbortedError, BootTimeoutError, CloudInitError, GuestDeadEndError, GuestlabError, HostRequirementError, QemuError, SshError, tailLines } from '../errors.ts';
import { guestlabPaths } from '../config.ts';
import { writeSeedIso } from '../cloud-init/seed.ts';
import { createOverlay, createVarStore } from '../disk/qemu-img.ts';
import { findOvmf } from '../host/firmware.ts';
import { DEBIAN_PACKAGES, freeDiskBytes, probeHost, requireTool } from '../host/probe.ts';
import { ensureImage } from '../images/builder.ts';
import { log as rootLog, type Logger } from '../log.ts';
import { buildQemuArgv, parseUsernetForward, type Accel } from '../qemu/argv.ts';
import { describeExit, launchQemu, type QemuProcess } from '../qemu/process.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { networkForGuest, type NetworkAttachment } from '../network/network.ts';
import { waitForSshBanner } from '../ssh/banner.ts';
import { generateEd25519 } from '../ssh/keys.ts';
import { SshSession } from '../ssh/session.ts';
import { currentIdentity } from '../reaper/identity.ts';
import { qemuTag, sweepOnce } from '../reaper/sweep.ts';
import { writePrivateFile } from '../util/fs.ts';
import { expectPositiveInteger } from '../util/validate.ts';
import { ConsoleWatch, withoutReport } from './dead-end.ts';
import { createInstanceDir, type InstanceDir } from './instance.ts';
import { keepMode } from './keep.ts';
import { registerLive } from './registry.ts';
import { DEFAULT_BOOT_TIMEOUT_MS, loadFixture, resolveSpec, type GuestSpec, type ResolvedSpec } from './spec.ts';
import { DiskFullError, shutdownParts, StartedGuest, type BootTimings, type GuestParts, type TeardownParts } from './started-guest.ts';

export interface StartOptions {
  signal?: AbortSignal;
}

const SERIAL_TAIL_LINES = 50;
/** A dead-end error carries the guest's own report; a shorter console tail goes with it. */
const DEAD_END_TAIL_LINES = 20;
const DEAD_END_POLL_MS = 500;
const DEFAULT_MIN_FREE_DISK_MIB = 2048;

/** Boot a guest and return it once SSH works and cloud-init is done. A string names fixtures/NAME.yaml. */
export async function startGuest(specOrFixture: GuestSpec | string, options: StartOptions = {}): Promise<StartedGuest> {
  const spec = await specFrom(specOrFixture);
  const launched = await launchGuest(await freshBootPlan(spec, options));
  const guest = guestFromLaunch(launched);
  // Now that it answers: every member of its networks (itself included) lists every other by name.
  for (const network of launched.parts.networks ?? []) await network.joined(guest);
  return guest;
}

export async function specFrom(specOrFixture: GuestSpec | string): Promise<ResolvedSpec> {
  return resolveSpec(typeof specOrFixture === 'string' ? await loadFixture(specOrFixture) : specOrFixture);
}

/** What a launch puts into the instance directory before QEMU starts. */
export interface PreparedDisk {
  disk: string;
  seed: string;
  kernel?: { kernel: string; initrd: string; cmdline: string } | undefined;
  /** UEFI firmware (OVMF) with the guest's own variable store; undefined: SeaBIOS. */
  uefi?: { code: string; vars: string } | undefined;
  clientPrivateKey: string;
  hostPublicKey: string;
  attachments: NetworkAttachment[];
  /** QEMU `-incoming` URI: the guest resumes from a saved state instead of booting. */
  incoming?: string | undefined;
  /**
   * The saved state leaves out guest RAM held in a shared file (migration capability
   * x-ignore-shared): the clone maps that file copy-on-write (`memoryFile`) instead of loading it.
   */
  incomingIgnoresShared?: boolean | undefined;
  memoryFile?: { path: string; shared: boolean } | undefined;
  /** The serial log already holds the console of the boot this guest was cloned from. */
  serialAppend?: boolean | undefined;
}

type BootFailure = (phase: string, problem: string, details: { timedOut: boolean; cause?: unknown }) => Promise<Error>;

/**
 * One way to bring up a guest: a fresh boot, or a clone restored from a template. launchGuest()
 * does everything the two share (budget, instance directory, QEMU, QMP, SSH) and calls these for
 * the rest.
 */
export interface LaunchPlan {
  spec: ResolvedSpec;
  accel: Accel;
  bootTimeoutMs: number;
  log: Logger;
  signal?: AbortSignal | undefined;
  /** performance.now() when the start began; timings count from here. */
  t0: number;
  imageReadyMs: number;
  /** Writes disk, seed and keys into the new instance directory. */
  prepare(instance: InstanceDir, parts: TeardownParts): Promise<PreparedDisk>;
  /** Once SSH is authenticated: wait for cloud-init, or fix up a restored clone. */
  settle(session: SshSession, context: { bootFailure: BootFailure; deadline: number }): Promise<void>;
  clonedFrom?: string | undefined;
}

export interface LaunchedGuest {
  plan: LaunchPlan;
  parts: GuestParts['parts'];
  instance: InstanceDir;
  port: number;
  hostKey: string;
  timings: BootTimings;
  leaseWaitMs: number;
  attachments: NetworkAttachment[];
  /** The direct kernel boot it was started with (a clone must match its template's). */
  kernel: PreparedDisk['kernel'];
  /** The UEFI firmware it was started with, if any (a clone copies the variable store). */
  uefi: PreparedDisk['uefi'];
}

/** The plan for a fresh boot from the image: new keys, a new seed, cloud-init to the end. */
export async function freshBootPlan(spec: ResolvedSpec, options: StartOptions = {}): Promise<LaunchPlan> {
  const { signal } = options;
  const log = rootLog.child(spec.name);
  const t0 = performance.now();
  const host = await probeHost();
  const accel = chooseAccel(spec.accel, host.kvm);
  await sweepOnce(log);
  const image = await ensureImage(spec.image, { log, signal });
  const firmware = spec.firmware ?? image.firmware;
  // Looked up before the budget and the instance: a host without OVMF fails at once.
  const ovmf = firmware === 'uefi' ? await findOvmf() : undefined;
  const imageReadyMs = Math.round(performance.now() - t0);
  const bootTimeoutMs = spec.bootTimeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS[accel];
  return {
    spec,
    accel,
    bootTimeoutMs,
    log,
    signal,
    t0,
    imageReadyMs,
    async prepare(instance, parts) {
      const clientKey = generateEd25519(`guestlab@${instance.id}`);
      const hostKey = generateEd25519(`root@${spec.name}`);
      await writePrivateFile(instance.file('clientKey'), clientKey.privateKey);
      await createOverlay(image.disk, instance.file('overlay'), signal);
      if (ovmf) await createVarStore(ovmf.vars, instance.file('efiVars'), signal);
      const attachments: NetworkAttachment[] = [];
      for (const [i, wanted] of spec.networks.entries()) {
        const network = networkForGuest(wanted.name);
        const attachment = await network.attach(spec.name, instance.id, `eth${i + 1}`, wanted.address);
        (parts.networks ??= []).push(network);
        attachments.push(attachment);
      }
      await writeSeedIso(instance.file('seed'), {
        instanceId: instance.id,
        hostname: spec.name,
        user: spec.user,
        authorizedKey: clientKey.publicKey,
        hostKey,
        cloudConfig: spec.cloudConfig,
        privateNics: attachments,
      }, signal);
      return {
        disk: instance.file('overlay'),
        seed: instance.file('seed'),
        kernel: image.kernel && image.initrd && image.cmdline ? { kernel: image.kernel, initrd: image.initrd, cmdline: image.cmdline } : undefined,
        uefi: ovmf && { code: ovmf.code, vars: instance.file('efiVars') },
        clientPrivateKey: clientKey.privateKey,
        hostPublicKey: hostKey.publicKey,
        attachments,
      };
    },
    async settle(session, { bootFailure, deadline }) {
      const status = await session.exec('cloud-init status --wait --long', { timeoutMs: Math.max(1000, deadline - Date.now()), signal });
      if (signal?.aborted) throw new AbortedError(`Starting guest ${spec.name} (waiting for cloud-init)`, { cause: signal.reason });
      const statusText = status.stdout.toString('utf8');
      if (status.timedOut) throw await bootFailure('cloud-init', `did not finish cloud-init within ${bootTimeoutMs} ms`, { timedOut: true });
      const state = /^status:\s*(\S+)/m.exec(statusText)?.[1];
      if (state !== 'done') {
        const output = await session.exec('sudo -n tail -n 40 /var/log/cloud-init-output.log', { timeoutMs: 10_000 }).catch(() => undefined);
        const detail = `${statusText.trim()}\n--- /var/log/cloud-init-output.log (last lines) ---\n${output?.stdout.toString('utf8').trim() ?? '(unavailable)'}`;
        throw new CloudInitError(`cloud-init finished with status "${state ?? 'unknown'}" in guest ${spec.name}; check the cloudConfig entries named below.\n${detail}`, detail);
      }
    },
  };
}


/** The StartedGuest for a launched QEMU. */
export function guestFromLaunch(launched: LaunchedGuest): StartedGuest {
  const { plan, parts, instance, port } = launched;
  return new StartedGuest({
    parts,
    name: plan.spec.name,
    image: plan.spec.image,
    accel: plan.accel,
    cpus: plan.spec.cpus,
    memoryMiB: plan.spec.memoryMiB,
    instance,
    ssh: {
      host: '127.0.0.1',
      port,
      user: plan.spec.user,
      hostKey: launched.hostKey,
      privateKeyPath: instance.file('clientKey'),
      knownHostsPath: instance.file('knownHosts'),
    },
    timings: launched.timings,
    leaseWaitMs: launched.leaseWaitMs,
    networks: launched.attachments.map(({ network, address, interfaceName, mac }) => ({ network, address, interfaceName, mac })),
    clonedFrom: plan.clonedFrom,
  });
}

/**
 * Everything a guest start shares, fresh or cloned: a budget lease, the instance directory, QEMU,
 * QMP, the SSH forward, then banner and authentication. Every resource is registered for teardown
 * before the step that could leak it; a failure tears down what exists.
 */
export async function launchGuest(plan: LaunchPlan): Promise<LaunchedGuest> {
  const { spec, accel, bootTimeoutMs, log, signal, t0 } = plan;
  const since = () => Math.round(performance.now() - t0);
  const checkAbort = (what: string) => {
    if (signal?.aborted) throw new AbortedError(`Starting guest ${spec.name} (${what})`, { cause: signal.reason });
  };
  checkAbort('image ready');
  const { instancesDir } = guestlabPaths();
  await preflightDisk(instancesDir);
  const lease = await acquireLease({ guest: spec.name, cpus: spec.cpus, memoryMiB: spec.memoryMiB, log, signal });
  const parts: TeardownParts = { lease, log };
  let consoleWatch: ConsoleWatch | undefined;
  try {
    const instance = await createInstanceDir(instancesDir, spec.name);
    parts.instance = instance;
    registerLive(instance.id, { dir: instance.dir, leaseId: lease.id });
    const prepared = await plan.prepare(instance, parts);
    const boot = `${prepared.uefi ? 'UEFI' : 'SeaBIOS'}${prepared.kernel ? ', direct kernel boot' : ', bootloader on the disk'}`;
    log.debug(`${plan.clonedFrom ? `cloning ${plan.clonedFrom}` : `booting ${spec.image}`} (${accel}, ${spec.cpus} cpu, ${spec.memoryMiB} MiB, ${boot}) in ${instance.dir}`);
    checkAbort('disk and seed ready');

    const argv = buildQemuArgv({
      name: spec.name,
      tag: qemuTag(instance.id, currentIdentity()),
      accel,
      cpus: spec.cpus,
      memoryMiB: spec.memoryMiB,
      disk: prepared.disk,
      seed: prepared.seed,
      kernel: prepared.kernel,
      uefi: prepared.uefi,
      qmpSocket: instance.file('qmp'),
      serialLog: instance.file('serial'),
      serialAppend: prepared.serialAppend,
      sshHostPort: 0,
      extraNics: prepared.attachments.map((a, i) => ({ id: `lan${i}`, mac: a.mac, localPort: a.qemuPort, remotePort: a.switchPort })),
      incoming: prepared.incoming && prepared.incomingIgnoresShared ? 'defer' : prepared.incoming,
      memoryFile: prepared.memoryFile,
    });
    // From the end of what the serial log holds now: a clone's log starts with its template's boot.
    consoleWatch = await ConsoleWatch.from(instance.file('serial'));
    const watch = consoleWatch;
    const bootStarted = performance.now();
    const deadline = Date.now() + bootTimeoutMs;
    const qemu = await launchQemu(argv, log, { outputFile: instance.file('qemuLog'), keepable: keepMode() !== 'never' });
    parts.qemu = qemu;
    registerLive(instance.id, { dir: instance.dir, pid: qemu.pid });
    // From here on the budget counts what this QEMU really uses, not only what it asked for.
    await lease.attach(qemu.pid);
    const qmp = await connectQmp(instance, qemu, deadline);
    parts.qmp = qmp;
    qmp.on('event', (event) => {
      log.debug(`QMP event ${event.event} ${JSON.stringify(event.data ?? {})}`);
      // A full host disk pauses the guest; say so instead of leaving it hanging.
      if (event.event === 'BLOCK_IO_ERROR' && event.data?.nospace === true && !parts.diskFull) {
        parts.diskFull = new DiskFullError(spec.name, instance.dir);
        log.warn(parts.diskFull.message);
        parts.session?.close(parts.diskFull);
      }
    });
    let restoreMs: number | undefined;
    if (prepared.incoming) {
      if (prepared.incomingIgnoresShared) {
        await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
        await qmp.execute('migrate-incoming', { uri: prepared.incoming });
      }
      await resumeIncoming(qmp, qemu, deadline, spec.name);
      restoreMs = since();
    }
    const port = parseUsernetForward(await qmp.hmp('info usernet'), 22);
    if (!port) throw new QemuError(`QEMU did not report the SSH forward (info usernet); QEMU output:\n${qemu.outputTail()}`);
    const qemuStartedMs = since();
    const endpoint = { host: '127.0.0.1', port, user: spec.user, privateKey: prepared.clientPrivateKey, hostKey: prepared.hostPublicKey };
    await fs.writeFile(instance.file('knownHosts'), `[127.0.0.1]:${port} ${prepared.hostPublicKey}\n`, { mode: 0o600 });
    await fs.writeFile(
      instance.file('info'),
      JSON.stringify({ id: instance.id, name: spec.name, image: spec.image, accel, cpus: spec.cpus, memoryMiB: spec.memoryMiB, sshPort: port, user: spec.user, qemuPid: qemu.pid, ownerPid: process.pid, clonedFrom: plan.clonedFrom, startedAt: new Date().toISOString() }, null, 2) + '\n',
      { mode: 0o600 },
    );

    /**
     * The error for a start that went wrong, with the serial console's tail as evidence; a dead end
     * the guest reported on its console (a unit failed for good, emergency mode, panic) wins.
     */
    const bootFailure: BootFailure = async (phase, problem, { timedOut, cause }) => {
      const serial = tailLines(await fs.readFile(instance.file('serial'), 'utf8').catch(() => ''), SERIAL_TAIL_LINES);
      const deadEnd = await watch.poll().catch(() => undefined);
      if (deadEnd) return new GuestDeadEndError(spec.name, deadEnd, phase, performance.now() - bootStarted, tailLines(withoutReport(serial), DEAD_END_TAIL_LINES));
      const elapsed = ((performance.now() - bootStarted) / 1000).toFixed(1);
      const text = `Guest ${spec.name} (${spec.image}, ${accel}${plan.clonedFrom ? `, clone of ${plan.clonedFrom}` : ''}) ${problem} (phase: ${phase}, ${elapsed}s after QEMU started).\n` +
        `--- serial console, last ${SERIAL_TAIL_LINES} lines ---\n${serial || '(empty)'}`;
      if (qemu.hasExited) return new QemuError(`${text}\n--- QEMU output ---\n${qemu.outputTail()}`, { cause });
      return timedOut ? new BootTimeoutError(text, bootTimeoutMs, phase, { cause }) : new GuestlabError(text, { cause });
    };
    const qemuGone = () => (qemu.hasExited ? 'QEMU exited' : parts.diskFull ? 'the host disk is full' : watch.deadEnd ? 'the guest reached a dead end' : undefined);
    watch.start(DEAD_END_POLL_MS);

    // Banner, then authentication. Retried until the deadline: sshd may be up before cloud-init
    // has created the user. A host key mismatch is final.
    let session: SshSession | undefined;
    let sshBannerMs = 0;
    let lastAuthError: unknown;
    while (!session) {
      checkAbort('waiting for SSH');
      const banner = await waitForSshBanner({ host: endpoint.host, port, deadline, shouldStop: qemuGone, signal });
      if (!banner) throw await bootFailure('ssh-banner', `did not answer SSH within ${bootTimeoutMs} ms`, { timedOut: true, cause: lastAuthError });
      if ('stopped' in banner) {
        checkAbort('waiting for SSH');
        if (parts.diskFull) throw parts.diskFull;
        throw await bootFailure('ssh-banner', `stopped before SSH answered: ${qemu.hasExited ? `QEMU ${describeExit(await qemu.exited)}` : banner.stopped}`, { timedOut: false });
      }
      sshBannerMs ||= since();
      try {
        session = await SshSession.connect(endpoint, { sock: banner.socket, readyTimeoutMs: Math.max(1000, deadline - Date.now()) });
      } catch (error) {
        if ((error as GuestlabError).code === 'ERR_HOST_KEY_MISMATCH') throw error;
        lastAuthError = error;
        log.debug(`SSH not ready yet: ${(error as Error).message}`);
        if (Date.now() >= deadline) throw await bootFailure('ssh-auth', `did not accept the SSH key within ${bootTimeoutMs} ms`, { timedOut: true, cause: error });
        if (watch.deadEnd) throw await bootFailure('ssh-auth', 'reached a dead end before it accepted the SSH key', { timedOut: false, cause: error });
        await sleep(500);
      }
    }
    parts.session = session;
    const sshReadyMs = since();
    log.debug(`SSH ready after ${(sshReadyMs / 1000).toFixed(1)}s`);
    // A guest that panics or halts while cloud-init runs leaves the SSH command hanging: the
    // console watch ends the wait.
    const deadEndWhileSettling = watch.found.then(async () => {
      throw await bootFailure(plan.clonedFrom ? 'restore' : 'cloud-init', 'reached a dead end while settling', { timedOut: false });
    });
    await Promise.race([plan.settle(session, { bootFailure, deadline }), deadEndWhileSettling]).catch((error: unknown) => {
      throw parts.diskFull ?? error;
    });
    watch.stop();
    checkAbort('settling');
    const timings: BootTimings = { imageReadyMs: plan.imageReadyMs, qemuStartedMs, sshBannerMs, sshReadyMs, cloudInitDoneMs: since(), ...(restoreMs === undefined ? {} : { restoreMs }) };
    log.debug(`ready: ${JSON.stringify(timings)}`);
    return {
      plan,
      // The same object the QMP event handler updates, now with every part set.
      parts: parts as GuestParts['parts'],
      instance,
      port,
      hostKey: prepared.hostPublicKey,
      timings,
      leaseWaitMs: lease.waitedMs,
      attachments: prepared.attachments,
      kernel: prepared.kernel,
      uefi: prepared.uefi,
    };
  } catch (error) {
    consoleWatch?.stop();
    await shutdownParts(parts).catch((stopError) => log.warn(`cleanup after a failed start also failed: ${(stopError as Error).message}`));
    if (error instanceof SshError || error instanceof GuestlabError) throw error;
    throw new GuestlabError(`Starting guest ${spec.name} failed: ${(error as Error).message}`, { cause: error });
  }
}

/** Waits for an incoming migration (-incoming) to load, then lets the guest run. */
async function resumeIncoming(qmp: QmpClient, qemu: QemuProcess, deadline: number, name: string): Promise<void> {
  for (;;) {
    if (qemu.hasExited) throw new QemuError(`QEMU ${describeExit(await qemu.exited)} while restoring guest ${name}:\n${qemu.outputTail()}`);
    const { status } = await qmp.execute<{ status: string }>('query-status');
    if (status === 'running') return;
    if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') {
      // The template was saved paused; a restored clone stays paused until told to run.
      await qmp.execute('cont');
      return;
    }
    if (status !== 'inmigrate') throw new QemuError(`Restoring guest ${name} failed: QEMU is in state "${status}":\n${qemu.outputTail()}`);
    if (Date.now() >= deadline) throw new BootTimeoutError(`Guest ${name}: restoring the saved state did not finish in time`, 0, 'restore');
    await sleep(10);
  }
}

/** Refuse to boot when the disk that holds overlays is nearly full: a full disk pauses guests. */
async function preflightDisk(instancesDir: string): Promise<void> {
  const raw = process.env.GUESTLAB_MIN_FREE_DISK_MIB;
  const minMiB = raw ? expectPositiveInteger('GUESTLAB_MIN_FREE_DISK_MIB', Number(raw)) : DEFAULT_MIN_FREE_DISK_MIB;
  const freeMiB = Math.floor((await freeDiskBytes(instancesDir)) / 1048576);
  if (freeMiB < minMiB) {
    throw new HostRequirementError(
      `Only ${freeMiB} MiB free at ${instancesDir}, below the ${minMiB} MiB a guest's overlay may need. ` +
        'Free disk space there, point GUESTLAB_INSTANCES_DIR at a larger disk, or lower GUESTLAB_MIN_FREE_DISK_MIB.',
    );
  }
}

export function chooseAccel(requested: 'auto' | 'kvm' | 'tcg', kvm: { usable: boolean; reason: string }): Accel {
  if (requested === 'tcg') return 'tcg';
  if (kvm.usable) return 'kvm';
  if (requested === 'kvm') throw new HostRequirementError(`accel: 'kvm' was requested but KVM is not usable: ${kvm.reason}`);
  return 'tcg';
}

async function connectQmp(instance: InstanceDir, qemu: QemuProcess, deadline: number): Promise<QmpClient> {
  // QEMU creates the socket while it initializes; poll briefly for it.
  const until = Math.min(deadline, Date.now() + 30_000);
  let lastError: unknown;
  while (Date.now() < until) {
    if (qemu.hasExited) {
      throw new QemuError(`QEMU ${describeExit(await qemu.exited)} during startup:\n${qemu.outputTail()}`);
    }
    try {
      return await QmpClient.connect(instance.file('qmp'));
    } catch (error) {
      lastError = error;
      await sleep(50);
    }
  }
  throw new QemuError(`QEMU's QMP socket did not come up within 30 s: ${(lastError as Error)?.message}\n${qemu.outputTail()}`, { cause: lastError });
}

