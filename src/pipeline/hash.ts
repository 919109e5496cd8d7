/**
 * The hash stage: bytes in, the same bytes out, counted and hashed.
 *
 * In: the bytes exactly as they go to the sink (after codec and cipher).
 * Out: the same chunks, unchanged and in order; `bytes` counts them as they
 * pass (onBytes sees every new total), and digest() is the hex SHA-256 of all
 * of them once the stream has ended. That SHA-256 and size are what the
 * catalog and the manifest record and what verify compares with the bucket.
 */
import { createHash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";

/** Passes bytes through while counting them and hashing them with SHA-256: exactly what is uploaded. */
export class HashingCounter extends Transform {
  bytes = 0;
  readonly #hash = createHash("sha256");
  readonly #onBytes: ((n: number) => void) | undefined;
  #digest: string | undefined;

  constructor(onBytes?: (n: number) => void) {
    super();
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    this.#onBytes?.(this.bytes);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.#digest = this.#hash.digest("hex");
    cb();
  }

  /** Hex SHA-256 of everything that passed; only after the stream ended. */
  digest(): string {
    if (this.#digest === undefined) throw new Error("digest() before the stream ended");
    return this.#digest;
  }
}
