// Host ports forwarded to a guest at run time (QEMU user-network hostfwd), one change at a time.
import { expectOneOf, expectPositiveInteger } from '../util/validate.ts';
import type { ForwardProtocol, QemuMonitor } from '../qemu/monitor.ts';

export class Forwards {
  /** Host ports by "protocol:guestPort". */
  readonly #ports = new Map<string, number>();
  /** Changes run one after another: two forwards made at once could each think the other's port was theirs. */
  #queue: Promise<unknown> = Promise.resolve();
  readonly #monitor: () => QemuMonitor;
  readonly #checkUsable: () => void;

  constructor(monitor: () => QemuMonitor, checkUsable: () => void) {
    this.#monitor = monitor;
    this.#checkUsable = checkUsable;
  }

  async add(guestPort: number, options: { protocol?: ForwardProtocol }): Promise<number> {
    const port = expectPositiveInteger('guestPort', guestPort);
    if (port > 65535) throw new TypeError(`Expected \`guestPort\` to be a port number from 1 to 65535, got ${port}`);
    const protocol = expectOneOf('protocol', options.protocol ?? 'tcp', ['tcp', 'udp'] as const);
    const key = `${protocol}:${port}`;
    return this.#serially(async () => {
      const known = this.#ports.get(key);
      if (known) return known;
      this.#checkUsable();
      const hostPort = await this.#monitor().addForward(protocol, port);
      this.#ports.set(key, hostPort);
      return hostPort;
    });
  }

  async remove(guestPort: number, options: { protocol?: ForwardProtocol }): Promise<void> {
    const protocol = options.protocol ?? 'tcp';
    const key = `${protocol}:${guestPort}`;
    return this.#serially(async () => {
      const hostPort = this.#ports.get(key);
      if (hostPort === undefined) return;
      this.#checkUsable();
      await this.#monitor().removeForward(protocol, hostPort);
      this.#ports.delete(key);
    });
  }

  /** After a restore: forget the forwards that the restored network state no longer has. */
  async forgetLost(): Promise<void> {
    await this.#serially(async () => {
      const live = new Set((await this.#monitor().forwards()).map((f) => `${f.protocol}:${f.guestPort}:${f.hostPort}`));
      for (const [key, hostPort] of this.#ports) if (!live.has(`${key}:${hostPort}`)) this.#ports.delete(key);
    });
  }

  #serially<T>(change: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(change);
    this.#queue = next.catch(() => undefined);
    return next;
  }
}
