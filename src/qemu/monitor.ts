// The guest's QEMU monitor: every command guestlab sends to a running QEMU, typed, each wait with a
// deadline that ends at once when QEMU dies. Nothing outside qemu/ speaks QMP or HMP.
import { QemuError } from '../errors.ts';
import { pollFor, retryUntil } from '../util/retry.ts';
import { quoteArg } from '../util/shell-quote.ts';
import { checkScsiDisk, HOTPLUG_PORTS, hotplugPortId, SCSI_CONTROLLER_ID, type ScsiDisk } from './argv.ts';
import { parseSnapshots, parseUsernetForwards, type SnapshotInfo, type UsernetForward } from './hmp.ts';
import { exitedError, type QemuProcess } from './process.ts';
import { QmpClient, type QmpEvent } from './qmp.ts';

/** QEMU creates its QMP socket while it initializes; it should answer within this long. */
const CONNECT_WITHIN_MS = 30_000;
/** The user network's NIC (see buildQemuArgv). */
const USER_NETDEV = 'net0';
/**
 * Unplugging a SCSI disk needs no guest cooperation: QEMU 7.2 sends DEVICE_DELETED 50-140 ms after
 * device_del even when paused at -S with no OS (the guest is told, not asked).
 */
const DETACH_WITHIN_MS = 10_000;

export type ForwardProtocol = 'tcp' | 'udp';

/** A disk image to hot-plug read-only (see ScsiDisk); only raw images, never probed. */
export interface AttachDiskOptions extends ScsiDisk {
  format: 'raw';
}

/** A NIC to hot-plug onto a private network: a stream netdev that connects to the switch's unix socket. */
export interface AttachNicOptions {
  /** QEMU id of the netdev; the device is `<id>-nic`. */
  id: string;
  mac: string;
  /** Where the network's switch listens for this NIC. */
  socketPath: string;
  /** Which of the guest's empty root ports (0 to HOTPLUG_PORTS - 1). */
  slot: number;
}

/** A block device as QEMU lists it (query-block). */
export interface BlockDeviceInfo {
  /** The device's id (qdev id, or its QOM path when it has none). */
  device: string;
  /** The block node's name; QEMU makes one up (`#block123`) for nodes it named itself. */
  node: string | undefined;
  file: string | undefined;
  readOnly: boolean;
}

export interface MonitorOptions {
  /** Names the guest in messages ("guest web-1"). */
  label: string;
  /** Epoch ms after which connecting gives up. */
  deadline: number;
}

export class QemuMonitor {
  readonly #qmp: QmpClient;
  readonly #qemu: QemuProcess;
  readonly #label: string;

  private constructor(qmp: QmpClient, qemu: QemuProcess, label: string) {
    this.#qmp = qmp;
    this.#qemu = qemu;
    this.#label = label;
  }

  /** Connects to a starting QEMU's QMP socket, retrying while QEMU creates it; fails at once if QEMU exits. */
  static async connect(socketPath: string, qemu: QemuProcess, options: MonitorOptions): Promise<QemuMonitor> {
    let lastError: unknown;
    try {
      const qmp = await retryUntil(() => QmpClient.connect(socketPath), {
        deadline: Math.min(options.deadline, Date.now() + CONNECT_WITHIN_MS),
        // A clone's QEMU answers about 170 ms after it started here: a backoff to 200 ms between
        // tries cost up to 150 ms of a clone's half second; a connect() to a missing socket is cheap.
        minDelayMs: 10,
        maxDelayMs: 10,
        stopWhen: () => exitedError(qemu, 'during startup'),
        onRetry: (error) => (lastError = error),
      });
      return new QemuMonitor(qmp, qemu, options.label);
    } catch (error) {
      if (error instanceof QemuError && qemu.hasExited) throw error;
      throw new QemuError(`QEMU's QMP socket for ${options.label} did not come up within ${CONNECT_WITHIN_MS / 1000} s: ${(lastError as Error | undefined)?.message ?? (error as Error).message}\n${qemu.outputTail()}`, { cause: error });
    }
  }

  get closed(): boolean {
    return this.#qmp.closed;
  }

  /** QMP events (BLOCK_IO_ERROR, STOP, ...), as QEMU sends them. */
  onEvent(listener: (event: QmpEvent) => void): void {
    this.#qmp.on('event', listener);
  }

  /** Drops the connection; QEMU runs on. */
  close(): void {
    this.#qmp.close();
  }

  /** The run state: running, paused, inmigrate, postmigrate, ... */
  async status(): Promise<string> {
    return (await this.#qmp.execute<{ status: string }>('query-status')).status;
  }

  /** Asks QEMU to exit. Resolves when it has answered or closed the connection. */
  async quit(): Promise<void> {
    await this.#qmp.execute('quit');
  }

  /** The user network's host forwards. */
  async forwards(): Promise<UsernetForward[]> {
    return parseUsernetForwards(await this.#hmp('info usernet'));
  }

  /** The host port forwarded to a guest TCP port (the SSH forward, made on the command line). */
  async hostPortOf(guestPort: number): Promise<number> {
    const forward = (await this.forwards()).find((f) => f.protocol === 'tcp' && f.guestPort === guestPort);
    if (!forward) throw new QemuError(`QEMU does not list a forward to port ${guestPort} of ${this.#label} (info usernet); QEMU output:\n${this.#qemu.outputTail()}`);
    return forward.hostPort;
  }

  /** Forwards a free port on the host's 127.0.0.1 (the kernel picks it) to `guestPort`; returns the host port. */
  async addForward(protocol: ForwardProtocol, guestPort: number): Promise<number> {
    const before = new Set((await this.forwards()).map((f) => `${f.protocol}:${f.hostPort}`));
    const reply = await this.#hmp(`hostfwd_add ${USER_NETDEV} ${protocol}:127.0.0.1:0-:${guestPort}`);
    if (reply.trim()) throw new QemuError(`QEMU refused to forward ${protocol} port ${guestPort} of ${this.#label}: ${reply.trim()}`);
    const added = (await this.forwards()).find(
      (f) => f.protocol === protocol && f.guestPort === guestPort && f.hostAddress === '127.0.0.1' && !before.has(`${f.protocol}:${f.hostPort}`),
    );
    if (!added) throw new QemuError(`QEMU accepted a forward to ${protocol} port ${guestPort} of ${this.#label} but does not list it (info usernet)`);
    return added.hostPort;
  }

  /** Removes a forward by its host port; the port is closed. */
  async removeForward(protocol: ForwardProtocol, hostPort: number): Promise<void> {
    const reply = await this.#hmp(`hostfwd_remove ${USER_NETDEV} ${protocol}:127.0.0.1:${hostPort}`);
    if (!/removed/i.test(reply) && reply.trim()) throw new QemuError(`QEMU could not remove the forward of ${protocol} host port ${hostPort} of ${this.#label}: ${reply.trim()}`);
  }

  /**
   * Hot-plugs a raw image as a read-only SCSI disk on the guest's virtio-scsi controller: a block node
   * named `id`, then a scsi-hd with id `id` and serial `serial`. If the device cannot be added, the
   * node is removed again.
   */
  async attachDisk(disk: AttachDiskOptions): Promise<void> {
    checkScsiDisk(disk);
    if (disk.format !== 'raw') throw new TypeError(`Expected \`format\` of disk ${disk.id} to be 'raw', got ${JSON.stringify(disk.format)}`);
    const what = `read-only disk ${disk.id} (${disk.file}) of ${this.#label}`;
    try {
      await this.#qmp.execute('blockdev-add', {
        driver: 'raw',
        'node-name': disk.id,
        'read-only': true,
        file: { driver: 'file', filename: disk.file, 'read-only': true },
      });
    } catch (error) {
      throw this.#failed(`QEMU could not open ${what}`, error);
    }
    try {
      await this.#qmp.execute('device_add', { driver: 'scsi-hd', bus: `${SCSI_CONTROLLER_ID}.0`, drive: disk.id, id: disk.id, serial: disk.serial });
    } catch (error) {
      await this.#qmp.execute('blockdev-del', { 'node-name': disk.id }).catch(() => undefined);
      throw this.#failed(`QEMU could not plug in ${what}`, error);
    }
  }

  /**
   * Hot-plugs a virtio NIC on one of the guest's empty PCIe root ports (see HOTPLUG_PORTS), on a new
   * stream netdev connected to the switch. If the device cannot be added, the netdev is removed again. The guest sees a new
   * interface a moment later (PCIe hotplug); configuring it is the guest's business.
   */
  async attachNic(nic: AttachNicOptions): Promise<void> {
    if (!Number.isInteger(nic.slot) || nic.slot < 0 || nic.slot >= HOTPLUG_PORTS) {
      throw new TypeError(`Expected \`slot\` of NIC ${nic.id} to be an integer from 0 to ${HOTPLUG_PORTS - 1} (the guest has ${HOTPLUG_PORTS} hot-plug ports), got ${nic.slot}`);
    }
    const what = `NIC ${nic.id} (${nic.mac}) of ${this.#label}`;
    try {
      await this.#qmp.execute('netdev_add', { type: 'stream', id: nic.id, server: false, addr: { type: 'unix', path: nic.socketPath } });
    } catch (error) {
      throw this.#failed(`QEMU could not open the network port of ${what}`, error);
    }
    try {
      await this.#qmp.execute('device_add', { driver: 'virtio-net-pci', id: `${nic.id}-nic`, netdev: nic.id, mac: nic.mac, bus: hotplugPortId(nic.slot) });
    } catch (error) {
      await this.#qmp.execute('netdev_del', { id: nic.id }).catch(() => undefined);
      throw this.#failed(`QEMU could not plug in ${what}`, error);
    }
  }

  /**
   * Unplugs a disk added by attachDisk() (or on the command line as a ScsiDisk) and closes its image:
   * device_del, wait for DEVICE_DELETED, blockdev-del. A part that is already gone is skipped. The
   * guest should have unmounted it first: the disk vanishes under it.
   */
  async detachDisk(id: string, deadline = Date.now() + DETACH_WITHIN_MS): Promise<void> {
    const what = `disk ${id} of ${this.#label}`;
    if (await this.#hasDevice(id)) {
      let deleted = false;
      const onEvent = (event: QmpEvent) => {
        if (event.event === 'DEVICE_DELETED' && event.data?.device === id) deleted = true;
      };
      this.#qmp.on('event', onEvent);
      try {
        await this.#qmp.execute('device_del', { id }).catch((error: unknown) => {
          throw this.#failed(`QEMU could not unplug ${what}`, error);
        });
        // The event is the signal. The device leaves its QOM parent a little earlier, which covers an
        // event that was missed (a second call); blockdev-del below waits for the rest.
        await pollFor(async () => (deleted || !(await this.#hasDevice(id)) ? true : undefined), {
          deadline,
          minDelayMs: 10,
          maxDelayMs: 200,
          isFinal: (error) => error instanceof QemuError,
          stopWhen: () => exitedError(this.#qemu, `while unplugging ${what}`),
          onDeadline: () => new QemuError(`QEMU did not finish unplugging ${what} in time (no DEVICE_DELETED event): the guest may be holding it`),
        });
      } finally {
        this.#qmp.off('event', onEvent);
      }
    }
    const nodes = await this.#qmp.execute<{ 'node-name'?: string }[]>('query-named-block-nodes', { flat: true });
    if (!nodes.some((node) => node['node-name'] === id)) return;
    // QEMU lets go of the node only when the device is finalized, with DEVICE_DELETED ("in use" until then).
    await pollFor(async () => {
      try {
        await this.#qmp.execute('blockdev-del', { 'node-name': id });
        return true;
      } catch (error) {
        if (/is in use/i.test((error as Error).message) && !this.#qemu.hasExited) return undefined;
        throw this.#failed(`QEMU could not close the image of ${what}`, error);
      }
    }, {
      deadline,
      minDelayMs: 5,
      maxDelayMs: 100,
      isFinal: (error) => error instanceof QemuError,
      stopWhen: () => exitedError(this.#qemu, `while closing the image of ${what}`),
      onDeadline: () => new QemuError(`QEMU still holds the image of ${what} after unplugging it (blockdev-del: node in use)`),
    });
  }

  /** The block devices QEMU has, with their images and whether the guest may write them. */
  async blockDevices(): Promise<BlockDeviceInfo[]> {
    const devices = await this.#qmp.execute<{ device?: string; qdev?: string; inserted?: { 'node-name'?: string; file?: string; ro?: boolean } }[]>('query-block');
    return devices.map((d) => ({
      device: d.device || d.qdev || '',
      node: d.inserted?.['node-name'],
      file: d.inserted?.file,
      readOnly: d.inserted?.ro ?? true,
    }));
  }

  async #hasDevice(id: string): Promise<boolean> {
    const children = await this.#qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' });
    return children.some((child) => child.name === id);
  }

  /** QEMU's refusal, with its words and its last output (QEMU may have exited meanwhile). */
  #failed(message: string, error: unknown): QemuError {
    const gone = exitedError(this.#qemu, `(${message})`);
    return gone ?? new QemuError(`${message}: ${(error as Error).message}`, { cause: error });
  }

  /** savevm: disk and running state into the guest's qcow2 overlay under `tag` (the guest pauses meanwhile). */
  async saveSnapshot(tag: string): Promise<SnapshotInfo | undefined> {
    const reply = await this.#hmp(`savevm ${tag}`);
    if (reply.trim()) throw new QemuError(`Saving checkpoint ${tag} of ${this.#label} failed: ${reply.trim()}`);
    return parseSnapshots(await this.#hmp('info snapshots')).find((snapshot) => snapshot.tag === tag);
  }

  /** loadvm: back to a snapshot taken by saveSnapshot(). */
  async loadSnapshot(tag: string): Promise<void> {
    const reply = await this.#hmp(`loadvm ${tag}`);
    if (reply.trim()) throw new QemuError(`Restoring checkpoint ${tag} of ${this.#label} failed: ${reply.trim()}`);
  }

  /**
   * Pauses the guest and writes its RAM and device state to `file` (migration to `exec:cat`),
   * leaving out RAM held in a shared memory file (x-ignore-shared). The guest stays paused.
   */
  async saveStateToFile(file: string, deadline: number): Promise<void> {
    await this.#qmp.execute('stop');
    await this.#ignoreShared();
    await this.#qmp.execute('migrate', { uri: `exec:cat > ${quoteArg(file)}` });
    await pollFor(async () => {
      const info = await this.#qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return true;
      if (info.status === 'failed' || info.status === 'cancelled') throw new QemuError(`Saving the state of ${this.#label} failed: ${info['error-desc'] ?? info.status}`);
      return undefined;
    }, {
      deadline,
      minDelayMs: 20,
      maxDelayMs: 200,
      isFinal: (error) => error instanceof QemuError,
      stopWhen: () => exitedError(this.#qemu, `while saving the state of ${this.#label}`),
      onDeadline: () => new QemuError(`Saving the state of ${this.#label} did not finish in time`),
    });
  }

  /**
   * Loads a saved state into a QEMU started with `-incoming` and lets the guest run. `deferred`: QEMU
   * was started with `-incoming defer`, so the capabilities are set and the migration started here.
   */
  async receiveState(deferred: { uri: string } | undefined, deadline: number): Promise<void> {
    if (deferred) {
      await this.#ignoreShared();
      await this.#qmp.execute('migrate-incoming', { uri: deferred.uri });
    }
    const status = await pollFor(async () => {
      const now = await this.status();
      return now === 'inmigrate' ? undefined : now;
    }, {
      deadline,
      // A clone's state loads in about 100 ms here; a backoff between polls would only add to it.
      minDelayMs: 5,
      maxDelayMs: 5,
      stopWhen: () => exitedError(this.#qemu, `while restoring ${this.#label}`),
      onDeadline: () => new QemuError(`Restoring the saved state of ${this.#label} did not finish in time`),
    });
    if (status === 'running') return;
    // The state was saved paused; a restored guest stays paused until told to run.
    if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') {
      await this.#qmp.execute('cont');
      return;
    }
    throw new QemuError(`Restoring ${this.#label} failed: QEMU is in state "${status}":\n${this.#qemu.outputTail()}`);
  }

  #ignoreShared(): Promise<unknown> {
    return this.#qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  }

  #hmp(commandLine: string): Promise<string> {
    return this.#qmp.hmp(commandLine);
  }
}
