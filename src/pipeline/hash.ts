/**
 * The hash stage: bytes in, the same bytes out, counted and hashed.
 *
 * In: the bytes exactly as they go to the sink (after codec and cipher).
 * Out: the same chunks, unchanged and in order; `bytes` counts them as they
 * pass (onBytes sees every new total), and digest() is the hex SHA-256 of all
 * of them once the stream has ended. That SHA-256 and size are what the
 * catalog and the manifest record and what verify compares with the bucket.
 *
 * The SHA-256 is computed on the hashing worker thread (workers/digest.ts):
 * the bytes are copied into 1 MiB batches that are handed over, at most
 * IN_FLIGHT batches ahead of the worker, so the main thread only copies and
 * memory stays bounded. The stream ends (and digest() is known) only after
 * the worker has hashed every batch; a worker failure fails the stream.
 */
import { Transform, type TransformCallback } from "node:stream";
import { StreamSha256 } from "./workers/digest.js";

const BATCH = 1024 * 1024;
/** Batches handed over and not yet hashed, at most. */
const IN_FLIGHT = 4;

/** Passes bytes through while counting them and hashing them with SHA-256: exactly what is uploaded. */
export class HashingCounter extends Transform {
  bytes = 0;
  readonly #hash = new StreamSha256();
  readonly #onBytes: ((n: number) => void) | undefined;
  readonly #inFlight: Promise<unknown>[] = [];
  /** Batches the worker handed back, to fill again. */
  readonly #free: ArrayBuffer[] = [];
  #batch: Buffer | undefined;
  #fill = 0;
  #digest: string | undefined;

  constructor(onBytes?: (n: number) => void) {
    super();
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.#onBytes?.(this.bytes);
    let off = 0;
    while (off < chunk.length) {
      if (!this.#batch) {
        const reused = this.#free.pop();
        this.#batch = reused ? Buffer.from(reused) : Buffer.allocUnsafeSlow(BATCH);
      }
      const n = chunk.copy(this.#batch, this.#fill, off);
      this.#fill += n;
      off += n;
      if (this.#fill === BATCH) this.#handOver();
    }
    this.push(chunk);
    if (this.#inFlight.length <= IN_FLIGHT) cb();
    else this.#settle(IN_FLIGHT).then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    if (this.#fill > 0) this.#handOver();
    this.#settle(0)
      .then(() => this.#hash.digest())
      .then((d) => {
        this.#digest = d;
        cb();
      }, cb);
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    if (this.#digest === undefined) this.#hash.drop();
    cb(err);
  }

  /** Hex SHA-256 of everything that passed; only after the stream ended. */
  digest(): string {
    if (this.#digest === undefined) throw new Error("digest() before the stream ended");
    return this.#digest;
  }

  #handOver(): void {
    const b = this.#batch;
    if (!b) return;
    const p = this.#hash.updateOwned(b.buffer as ArrayBuffer, this.#fill).then((back) => {
      if (back?.byteLength === BATCH && this.#free.length <= IN_FLIGHT) this.#free.push(back);
    });
    // Awaited in order by #settle; a rejection is seen there, never unhandled.
    p.catch(() => {});
    this.#inFlight.push(p);
    this.#batch = undefined;
    this.#fill = 0;
  }

  async #settle(atMost: number): Promise<void> {
    while (this.#inFlight.length > atMost) await this.#inFlight.shift();
  }
}
