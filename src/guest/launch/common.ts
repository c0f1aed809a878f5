// The steps every launch shares, fresh boot or clone: disk space, budget lease, instance directory,
// QEMU, its monitor and the SSH forward. The readiness requirements that follow: readiness.ts.
import fs from 'node:fs/promises';
import { acquireLease } from '../../budget/leases.ts';
import { guestlabPaths } from '../../config.ts';
import { readEnv } from '../../env.ts';
import { DiskFullError, HostRequirementError } from '../../errors.ts';
import { currentIdentity } from '../../host/process-identity.ts';
import { freeDiskBytes } from '../../host/probe.ts';
import { buildQemuArgv } from '../../qemu/argv.ts';
import { QemuMonitor } from '../../qemu/monitor.ts';
import { launchQemu } from '../../qemu/process.ts';
import { qemuTag } from '../../reaper/sweep.ts';
import { ConsoleWatch } from '../dead-end.ts';
import { createInstanceDir } from '../instance.ts';
import { keepMode } from '../keep.ts';
import { registerLive } from '../registry.ts';
import { need, sinceStart, type LaunchStep } from './steps.ts';

const DEAD_END_POLL_MS = 500;
const DEFAULT_MIN_FREE_DISK_MIB = 2048;

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
      machine: need(state.machine, 'machine type'),
      cpus: spec.cpus,
      memoryMiB: spec.memoryMiB,
      disk: need(media.disk, 'disk'),
      seed: media.seed,
      fwCfg: media.fwCfg,
      scsiDisks: media.scsiDisks,
      kernel: media.kernel,
      uefi: media.uefi,
      qmpSocket: instance.file('qmp'),
      agentSocket: instance.file('agent'),
      serialLog: instance.file('serial'),
      serialAppend: media.serialAppend,
      sshHostPort: 0,
      restrictUserNet: spec.internet === false,
      extraNics: state.attachments.map((a, i) => ({ id: `lan${i}`, mac: a.mac, socketPath: a.socketPath })),
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
        // Commands in flight would wait for a guest that does not run: both channels end now.
        resources.session?.close(resources.diskFull);
        resources.agent?.close();
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
