// Checkpoints of a running guest: its disk and running state saved into its own overlay (QEMU
// savevm), an inventory beside each for diffSince(), and restore(): loadvm, a new SSH session, the
// clock set to now, and the forwards the restored network no longer has forgotten.
import { GuestlabError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { QemuMonitor } from '../qemu/monitor.ts';
import { expectString } from '../util/validate.ts';
import type { Forwards } from './forwards.ts';
import { diffInventories, takeInventory, type GuestInventory, type InventoryDiff, type InventoryGuest, type InventoryOptions } from './inventory.ts';
import type { SshInfo } from './types.ts';

export interface CheckpointInfo {
  label: string;
  createdAt: Date;
  /** How long QEMU took to save the disk and memory state (the guest is paused meanwhile). */
  saveMs: number;
  /** Size of the saved memory state, from `info snapshots`, when QEMU reports it. */
  vmStateBytes?: number | undefined;
}

export interface RestoreTimings {
  /** QEMU loadvm. */
  loadMs: number;
  /** From the restored guest to an authenticated SSH session with the clock set right. */
  reconnectMs: number;
  totalMs: number;
}


export function checkpointLabel(label: unknown): string {
  const value = expectString('label', label, /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'use letters, digits, ".", "_" and "-" (at most 64)');
  if (/^\d+$/.test(value)) throw new GuestlabError(`Checkpoint label "${value}" is all digits, which QEMU would take for a snapshot id; add a letter`);
  return value;
}

/** What checkpoints need of their guest. */
export interface CheckpointedGuest extends InventoryGuest {
  readonly ssh: SshInfo;
  readonly timeoutScale: number;
  succeed(argv: string[], options?: { sudo?: boolean }): Promise<string>;
}

export interface CheckpointDeps {
  monitor: () => QemuMonitor;
  checkUsable: () => void;
  /** Ends the guest's channels (SSH, agent): a restore cuts off what runs on them. */
  closeChannels: (why: Error) => void;
  /** Connects again to the restored guest: its agent, or else SSH. */
  reconnect: () => Promise<void>;
  forwards: Forwards;
  log: Logger;
  /** An error once QEMU has exited: reconnecting after a restore stops at once then. */
  qemuGone: () => Error | undefined;
}

interface Saved {
  info: CheckpointInfo;
  inventory: GuestInventory | undefined;
  inventoryOptions: InventoryOptions;
}

export class Checkpoints {
  readonly #saved = new Map<string, Saved>();
  readonly #guest: CheckpointedGuest;
  readonly #deps: CheckpointDeps;

  constructor(guest: CheckpointedGuest, deps: CheckpointDeps) {
    this.#guest = guest;
    this.#deps = deps;
  }

  async save(label: string, options: { inventory?: InventoryOptions | false }): Promise<CheckpointInfo> {
    const name = checkpointLabel(label);
    this.#deps.checkUsable();
    const inventory = options.inventory === false ? undefined : await takeInventory(this.#guest, options.inventory ?? {});
    const started = performance.now();
    const listed = await this.#deps.monitor().saveSnapshot(name);
    const saveMs = Math.round(performance.now() - started);
    const info: CheckpointInfo = { label: name, createdAt: new Date(), saveMs, vmStateBytes: listed?.vmStateBytes };
    this.#saved.set(name, { info, inventory, inventoryOptions: options.inventory || {} });
    this.#deps.log.debug(`checkpoint ${name} saved in ${saveMs} ms`);
    return info;
  }

  async restore(label: string): Promise<RestoreTimings> {
    const name = checkpointLabel(label);
    this.#deps.checkUsable();
    const guest = this.#guest;
    if (!this.#saved.has(name)) throw new GuestlabError(`Guest ${guest.name} has no checkpoint "${name}" (has: ${[...this.#saved.keys()].join(', ') || 'none'}); take one with guest.checkpoint("${name}")`);
    const started = performance.now();
    this.#deps.closeChannels(new GuestlabError(`Guest ${guest.name} is being restored to checkpoint ${name}`));
    await this.#deps.monitor().loadSnapshot(name);
    const loadMs = Math.round(performance.now() - started);
    await this.#deps.reconnect();
    // The guest resumes with the checkpoint's clock.
    await guest.succeed(['date', '-u', '-s', `@${(Date.now() / 1000).toFixed(3)}`], { sudo: true });
    await this.#deps.forwards.forgetLost();
    const totalMs = Math.round(performance.now() - started);
    this.#deps.log.debug(`restored ${name}: loadvm ${loadMs} ms, total ${totalMs} ms`);
    return { loadMs, reconnectMs: totalMs - loadMs, totalMs };
  }

  list(): CheckpointInfo[] {
    return [...this.#saved.values()].map((c) => c.info);
  }

  async diffSince(label: string): Promise<InventoryDiff> {
    const saved = this.#saved.get(checkpointLabel(label));
    if (!saved?.inventory) throw new GuestlabError(`Guest ${this.#guest.name} has no inventory for checkpoint "${label}"; take it with guest.checkpoint("${label}") without inventory: false`);
    return diffInventories(saved.inventory, await takeInventory(this.#guest, saved.inventoryOptions));
  }
}
