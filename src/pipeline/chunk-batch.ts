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

  /** What is held, as one Buffer (the chunk itself when there is one), and empties the batch. */
  take(): Buffer {
    const out =
      this.#parts.length === 1
        ? (this.#parts[0] as Buffer)
        : Buffer.concat(this.#parts, this.#length);
    this.#parts = [];
    this.#length = 0;
    return out;
  }
}
