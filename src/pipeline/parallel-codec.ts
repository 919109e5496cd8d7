/**
 * Parallel compression: the codec stage on several cores.
 *
 * In: bytes (the tar). Out: the same bytes compressed, as a sequence of
 * independent gzip members or zstd frames, one per block of BLOCK_BYTES input,
 * in input order. `gunzip`/`gzip -t` read concatenated members as one stream
 * and `zstd -d` concatenated frames, so the archive is an ordinary .tar.gz or
 * .tar.zst; immutd's restore decodes it with the same decoder as a one-stream
 * archive (codec.ts decoderFor).
 *
 * Blocks are compressed by worker threads (workers/codec-worker.ts), never by
 * zstd's own nbWorkers (Node's stream ends early with it and truncates the
 * output). The input block is moved to the worker and the output moved back,
 * without a copy. Memory is bounded: at most `2 × threads` blocks are in
 * flight (one compressing and one waiting per worker), so the stage holds at
 * most about 2 × threads × 2 × BLOCK_BYTES (input plus output) besides the
 * workers themselves; when the next stage is slow, Transform backpressure
 * stops the intake.
 *
 * A worker that fails a block, throws or exits fails the stage with an error
 * that names the codec and the block, which fails the backup (the sink
 * aborts the upload): an archive with a block missing is never stored as ok.
 */

import { Transform, type TransformCallback } from "node:stream";
import { Worker } from "node:worker_threads";
import { moduleUrl } from "../paths.js";
import { OrderedWindow } from "./ordered-window.js";
import { copied } from "./workers/lent.js";
import type { BlockAnswer, BlockCodec, BlockRequest } from "./workers/protocol.js";

/** Input bytes per member or frame: large enough that restarting the dictionary costs little (gzip's window is 32 KiB, zstd -3's 2 MiB), small enough to keep every core busy on a modest archive. */
export const BLOCK_BYTES: Record<BlockCodec, number> = {
  gzip: 1024 * 1024,
  zstd: 4 * 1024 * 1024,
};

const WORKER = moduleUrl("pipeline/workers/codec-worker.js");

export interface ParallelOptions {
  codec: BlockCodec;
  level: number;
  threads: number;
  /** Input bytes per block (default BLOCK_BYTES[codec]). */
  blockBytes?: number;
  /** A worker script speaking workers/protocol.ts (default codec-worker.js; tests pass a failing one). */
  worker?: URL;
}

interface Job {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

/** What a block's input buffer is handed back to, for reuse. */
type Recycle = (input: ArrayBuffer) => void;

/** Worker threads that compress blocks; a job goes to the one with the fewest waiting. */
class CodecPool {
  readonly #workers: { w: Worker; jobs: Map<number, Job>; dead?: Error }[] = [];
  #closed = false;

  constructor(threads: number, script: URL, what: string, recycle: Recycle) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(script);
      const slot: { w: Worker; jobs: Map<number, Job>; dead?: Error } = { w, jobs: new Map() };
      const die = (why: string) => {
        if (this.#closed || slot.dead) return;
        slot.dead = new Error(`${what} worker ${i + 1} of ${threads} ${why}`);
        for (const j of slot.jobs.values()) j.reject(slot.dead);
        slot.jobs.clear();
      };
      w.on("message", (a: BlockAnswer) => {
        const job = slot.jobs.get(a.id);
        if (!job) return;
        slot.jobs.delete(a.id);
        if (slot.jobs.size === 0) w.unref();
        if (a.input) recycle(a.input);
        if ("error" in a) job.reject(new Error(`${what} failed: ${a.error}`));
        else job.resolve(Buffer.from(a.buf, a.offset, a.length));
      });
      w.on("error", (err) => die(`failed: ${err.message}`));
      w.on("exit", (code) => die(`exited (code ${code}) with blocks unfinished`));
      // A worker keeps the process alive only while it holds blocks (see run and the answer).
      w.unref();
      this.#workers.push(slot);
    }
  }

  run(req: BlockRequest): Promise<Buffer> {
    const live = this.#workers.filter((s) => !s.dead);
    const slot = live.sort((a, b) => a.jobs.size - b.jobs.size)[0];
    if (!slot) {
      const dead = this.#workers[0]?.dead;
      return Promise.reject(dead ?? new Error("no codec worker"));
    }
    return new Promise((resolve, reject) => {
      slot.jobs.set(req.id, { resolve, reject });
      slot.w.ref();
      slot.w.postMessage(req, [req.buf]);
    });
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#workers) {
      for (const j of s.jobs.values()) j.reject(new Error("codec pool closed"));
      s.jobs.clear();
      void s.w.terminate();
    }
  }
}

export class ParallelEncoder extends Transform {
  readonly #codec: BlockCodec;
  readonly #level: number;
  readonly #blockBytes: number;
  readonly #limit: number;
  readonly #pool: CodecPool;
  /** Blocks sent to the workers and not yet handed on, in input order. */
  readonly #inFlight: OrderedWindow<Buffer>;
  /** Input blocks the workers handed back, to fill again (at most one per block in flight). */
  readonly #free: ArrayBuffer[] = [];
  #block: Buffer | undefined;
  #fill = 0;
  #id = 0;
  readonly #push = (out: Buffer): void => {
    this.push(out);
  };

  constructor(o: ParallelOptions) {
    super();
    if (!Number.isInteger(o.threads) || o.threads < 1) throw new Error("threads must be >= 1");
    this.#codec = o.codec;
    this.#level = o.level;
    this.#blockBytes = o.blockBytes ?? BLOCK_BYTES[o.codec];
    this.#limit = 2 * o.threads;
    const blockBytes = this.#blockBytes;
    this.#inFlight = new OrderedWindow<Buffer>(
      this.#limit,
      (err, done) =>
        new Error(
          `${err.message} (block ${done + 1}, input bytes from ${done * blockBytes}); the archive is incomplete and is not stored`,
          { cause: err },
        ),
    );
    this.#pool = new CodecPool(o.threads, o.worker ?? WORKER, `${o.codec} compression`, (b) => {
      if (b.byteLength === this.#blockBytes && this.#free.length < this.#limit) this.#free.push(b);
    });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let off = 0;
    while (off < chunk.length) {
      if (!this.#block) {
        const reused = this.#free.pop();
        this.#block = reused ? Buffer.from(reused) : Buffer.allocUnsafeSlow(this.#blockBytes);
      }
      const n = chunk.copy(this.#block, this.#fill, off);
      this.#fill += n;
      off += n;
      if (this.#fill === this.#blockBytes) this.#dispatch();
    }
    copied(chunk); // all of it is in blocks now (workers/lent.ts)
    this.#inFlight.handOn(this.#push).then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    // An empty input still gets one (empty) member or frame: a zero-byte file is no valid .gz.
    if (this.#fill > 0 || this.#id === 0) this.#dispatch();
    this.#inFlight.drain(this.#push).then(
      () => {
        this.#pool.close();
        cb();
      },
      (err: Error) => cb(err),
    );
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    this.#pool.close();
    cb(err);
  }

  #dispatch(): void {
    const block = this.#block ?? Buffer.allocUnsafeSlow(0);
    const length = this.#fill;
    this.#block = undefined;
    this.#fill = 0;
    const id = this.#id++;
    this.#inFlight.add(
      this.#pool.run({
        id,
        codec: this.#codec,
        level: this.#level,
        buf: block.buffer as ArrayBuffer,
        length,
      }),
    );
  }
}
