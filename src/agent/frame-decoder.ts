// Cuts the agent's byte stream into frames. Chunks are kept as they arrived and a payload is
// handed on as the pieces of them it spans (a 256 KiB STDOUT frame arrives in several socket
// reads): output is never copied here, and no buffer is allocated per frame. Before the handshake it skips
// everything up to the HELLO reply that carries this host's nonce (stale bytes of a previous host).
import { Frame, HEADER_BYTES, MAX_PAYLOAD } from './protocol.ts';

export class FrameDecoder {
  #chunks: Buffer[] = [];
  #length = 0;
  #sync: { type: number; marker: Buffer } | undefined;

  readonly maxPayload: number;

  constructor(maxPayload = MAX_PAYLOAD) {
    this.maxPayload = maxPayload;
  }

  /** Discards input until a frame of `type` and id 0 whose payload starts with `marker`. */
  syncOn(type: number, marker: Buffer): void {
    this.#sync = { type, marker };
  }

  /** The complete frames `chunk` finishes; throws on a frame no agent sends (the stream is then unusable). */
  push(chunk: Buffer): Frame[] {
    if (chunk.length) {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
    }
    const frames: Frame[] = [];
    if (this.#sync && !this.#findSync()) return frames;
    while (this.#length >= HEADER_BYTES) {
      const header = this.#peek(HEADER_BYTES);
      const length = header.readUInt32LE(0);
      if (length > this.maxPayload || header[5] !== 0 || header.readUInt16LE(6) !== 0) {
        throw new Error(`a frame header the protocol does not allow (${length} bytes, type 0x${header[4]!.toString(16)}, flags ${header.subarray(5, 8).toString('hex')})`);
      }
      if (this.#length < HEADER_BYTES + length) break;
      const type = header[4]!;
      const id = header.readUInt32LE(8);
      this.#take(HEADER_BYTES);
      frames.push(new Frame(type, id, this.#take(length)));
    }
    return frames;
  }

  /** The first n bytes without consuming them. */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    let count = 0;
    for (let have = 0; have < n; count++) have += this.#chunks[count]!.length;
    const merged = Buffer.concat(this.#chunks.slice(0, count));
    this.#chunks.splice(0, count, merged);
    return merged.subarray(0, n);
  }

  /** The next n bytes, as pieces of the chunks they span. */
  #take(n: number): Buffer[] {
    this.#length -= n;
    const first = this.#chunks[0];
    if (n === 0 || !first) return [Buffer.alloc(0)];
    if (first.length > n) {
      this.#chunks[0] = first.subarray(n);
      return [first.subarray(0, n)];
    }
    if (first.length === n) return [this.#chunks.shift()!];
    const parts: Buffer[] = [];
    let left = n;
    let used = 0;
    while (left > 0) {
      const chunk = this.#chunks[used]!;
      if (chunk.length <= left) {
        parts.push(chunk);
        used++;
        left -= chunk.length;
      } else {
        parts.push(chunk.subarray(0, left));
        this.#chunks[used] = chunk.subarray(left);
        left = 0;
      }
    }
    this.#chunks.splice(0, used); // once: shifting chunk by chunk is quadratic for a payload of many small reads
    return parts;
  }

  /** True once the wanted frame starts the buffer; otherwise keeps only a tail that could begin it. */
  #findSync(): boolean {
    const { type, marker } = this.#sync!;
    const data = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    for (let at = data.indexOf(marker, HEADER_BYTES); at >= 0; at = data.indexOf(marker, at + 1)) {
      const start = at - HEADER_BYTES;
      const length = data.readUInt32LE(start);
      if (data[start + 4] === type && data[start + 5] === 0 && data.readUInt16LE(start + 6) === 0 && data.readUInt32LE(start + 8) === 0 &&
          length >= marker.length && length <= this.maxPayload) {
        this.#chunks = [data.subarray(start)];
        this.#length = data.length - start;
        this.#sync = undefined;
        return true;
      }
    }
    const keep = Math.min(data.length, HEADER_BYTES + marker.length - 1);
    this.#chunks = keep ? [Buffer.from(data.subarray(data.length - keep))] : [];
    this.#length = keep;
    return false;
  }
}
