/**
 * Chunks held back to be passed on as one write: the restore's decoding stages
 * (codec.ts Coalesce, zstd-frames.ts ZstdFrameCheck) join the download's small
 * chunks, one TLS record each, into writes of about 1 MiB.
 */
export class ChunkBatch {
  #parts: Buffer[] = [];
  #length = 0;

  /** Bytes held. */
  get length(): number {
    return this.#length;
  }

  add(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#parts.push(chunk);
    this.#length += chunk.length;
  }

  /**
   * What is held, as one Buffer (the chunk itself when there is one), and
   * empties the batch. `into` may give the memory to join them in: a Buffer
   * of exactly that many bytes, or undefined for a new one.
   */
  take(into?: (size: number) => Buffer | undefined): Buffer {
    let out: Buffer;
    if (this.#parts.length === 1) out = this.#parts[0] as Buffer;
    else {
      const target = into?.(this.#length);
      if (target === undefined) out = Buffer.concat(this.#parts, this.#length);
      else {
        let at = 0;
        for (const part of this.#parts) at += part.copy(target, at);
        out = target;
      }
    }
    this.#parts = [];
    this.#length = 0;
    return out;
  }
}
