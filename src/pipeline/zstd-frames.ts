/**
 * A check on the way down, before the zstd decoder: the compressed bytes
 * pass unchanged, and the stream must end where a frame ends.
 *
 * Node's zstd decoder (seen on 24.20) can end without an error when a stream
 * of several frames is cut inside a later frame (frames of raw blocks, the
 * cut arriving in the same write as the previous frame's end): it returns
 * what the complete frames held. Parallel compression (parallel-codec.ts) writes one
 * frame per block, so without this check a truncated archive would restore
 * as a shorter tar. This stage reads only the frame structure (RFC 8878:
 * frame header, block headers, content checksum, skippable frames) and skips
 * over block contents, so it costs next to nothing; the decoder still checks
 * each frame's contents and checksum.
 *
 * It also cuts the writes the decoder gets at frame ends. Node's zstd stream
 * (node:zlib processCallback, 24.20) takes input left over in a write, with
 * room left in its output buffer, as the end of the stream: a write that
 * holds the end of one frame and the start of the next ends the output after
 * the first frame, without an error (26.10 decodes such a write whole). Its
 * 16 KiB default output buffer was usually full at that point, which hid it;
 * with larger buffers it truncates every time. So no write passed on here spans a frame's end, and within a
 * frame the download's small chunks (one TLS record each) are joined into
 * writes of at least `batch` bytes: each write is one round trip to the libuv
 * pool, and with 16 KiB ones a restore's main thread waited on them for most
 * of its run.
 */
import { Transform, type TransformCallback } from "node:stream";
import { ChunkBatch } from "./chunk-batch.js";

const FRAME_MAGIC = 0xfd2fb528;

type Step = { want: number; next: (b: Buffer) => void } | { skip: number; next: () => void };

export class ZstdFrameCheck extends Transform {
  /** Bytes seen so far; for the error text. */
  #pos = 0;
  #step: Step;
  #got: number[] = [];
  #inFrame = false;
  #checksum = false;
  /** Set when a frame (or a skippable frame) has just ended. */
  #frameEnded = false;
  /** Bytes of the current frame not yet passed on. */
  readonly #held = new ChunkBatch();

  /** @param batch the least bytes per write passed on, but at a frame's end. */
  constructor(readonly batch = 1 << 20) {
    super();
    this.#step = this.#magic();
    this.#frameEnded = false;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      let i = 0;
      let from = 0;
      while (i < chunk.length) {
        if (this.#frameEnded) {
          this.#frameEnded = false;
          this.#pass(chunk.subarray(from, i));
          from = i;
        }
        const s = this.#step;
        if ("skip" in s) {
          const n = Math.min(s.skip, chunk.length - i);
          s.skip -= n;
          i += n;
          this.#pos += n;
          if (s.skip === 0) s.next();
          continue;
        }
        this.#got.push(chunk[i] as number);
        i++;
        this.#pos++;
        if (this.#got.length === s.want) {
          const b = Buffer.from(this.#got);
          this.#got = [];
          s.next(b);
        }
      }
      this.#held.add(chunk.subarray(from));
      if (this.#frameEnded || this.#held.length >= this.batch) {
        this.#frameEnded = false;
        this.#pass(Buffer.alloc(0));
      }
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  /** Passes on what is held and then `tail`, as one write. */
  #pass(tail: Buffer): void {
    this.#held.add(tail);
    if (this.#held.length > 0) this.push(this.#held.take());
  }

  override _flush(cb: TransformCallback): void {
    this.#pass(Buffer.alloc(0));
    if (this.#inFrame || this.#got.length > 0) {
      cb(
        new Error(
          `unexpected end of file: the zstd stream ends inside a frame (after ${this.#pos} bytes), the archive is truncated`,
        ),
      );
    } else cb();
  }

  #go(step: Step): void {
    if ("skip" in step && step.skip === 0) step.next();
    else this.#step = step;
  }

  #magic(): Step {
    this.#inFrame = false;
    this.#frameEnded = true;
    return {
      want: 4,
      next: (b) => {
        const m = b.readUInt32LE(0);
        if (m === FRAME_MAGIC) {
          this.#inFrame = true;
          this.#go(this.#header());
        } else if ((m & 0xfffffff0) >>> 0 === 0x184d2a50) {
          this.#inFrame = true;
          this.#go({
            want: 4,
            next: (s) => this.#go({ skip: s.readUInt32LE(0), next: () => this.#go(this.#magic()) }),
          });
        } else {
          throw new Error(`not a zstd frame at byte ${this.#pos - 4} of the archive`);
        }
      },
    };
  }

  #header(): Step {
    return {
      want: 1,
      next: (b) => {
        const fhd = b[0] as number;
        const fcsFlag = fhd >> 6;
        const single = (fhd >> 5) & 1;
        if ((fhd >> 3) & 1)
          throw new Error(`zstd frame header with a reserved bit set at byte ${this.#pos - 1}`);
        this.#checksum = ((fhd >> 2) & 1) === 1;
        const dict = [0, 1, 2, 4][fhd & 3] as number;
        const fcs = [single, 2, 4, 8][fcsFlag] as number;
        this.#go({ skip: (single ? 0 : 1) + dict + fcs, next: () => this.#go(this.#block()) });
      },
    };
  }

  #block(): Step {
    return {
      want: 3,
      next: (b) => {
        const h = b.readUIntLE(0, 3);
        const last = h & 1;
        const type = (h >> 1) & 3;
        const size = h >>> 3;
        if (type === 3) throw new Error(`zstd block of reserved type at byte ${this.#pos - 3}`);
        const after = last
          ? () => this.#go({ skip: this.#checksum ? 4 : 0, next: () => this.#go(this.#magic()) })
          : () => this.#go(this.#block());
        this.#go({ skip: type === 1 ? 1 : size, next: after });
      },
    };
  }
}
