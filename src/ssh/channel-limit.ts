// How many SSH channels one connection opens at once. The guest's sshd refuses sessions beyond its
// MaxSessions, so commands past the limit wait their turn here instead of failing there.

/** OpenSSH's default MaxSessions is 10; stay below it and queue the rest. */
export const MAX_CHANNELS = 6;

/** Slots for channels: at most `max` taken at once, the rest waiting in order. */
export class ChannelLimit {
  readonly max: number;
  #active = 0;
  #queue: (() => void)[] = [];

  constructor(max = MAX_CHANNELS) {
    this.max = max;
  }

  /** Resolves once a slot is free and taken; give it back with release(). */
  async acquire(): Promise<void> {
    if (this.#active < this.max) {
      this.#active++;
      return;
    }
    await new Promise<void>((resolve) => this.#queue.push(resolve));
    this.#active++;
  }

  release(): void {
    this.#active--;
    this.#queue.shift()?.();
  }
}
