/**
 * The codec stage: compression of the tar stream on the way up, and its
 * inverse on the way down.
 *
 * In: bytes (the uncompressed tar). Out: bytes, compressed as the job's
 * `compression` says. encoderFor and decoderFor return the Transforms to put
 * in a stream pipeline, in order; "none" needs none, so they cost nothing.
 * decoderFor(c) undoes encoderFor(c, level, threads) for every c, level and
 * thread count. With threads > 1 the encoder is parallel-codec.ts: independent
 * members or frames compressed on that many worker threads, which the same
 * decoder (and `gunzip`, `zstd -d`) reads as one stream; with 1 it is one
 * zlib stream on the libuv pool, as before. A new codec is one more case here
 * and one more value of Compression, whose name also goes into the object key
 * (src/repo/naming.ts).
 *
 * zstd is Node's own zlib binding of libzstd (Node.js 24.20 and 26.6 on;
 * earlier versions have it too, but their decoder ends a cut-off stream
 * without an error, so engines starts there;
 * still marked experimental there). Its output is a standard zstd frame with
 * a content checksum, which `zstd -d` reads. Its `ZSTD_c_nbWorkers` parameter
 * is never set: with workers on, Node's stream emits 'end' before end() is
 * called and the archive comes out truncated (seen on Node 22, 24 and 26).
 */
import { Transform, type TransformCallback } from "node:stream";
import * as zlib from "node:zlib";
import type { Compression } from "../config/config.js";
import { ChunkBatch } from "./chunk-batch.js";
import { ParallelEncoder } from "./parallel-codec.js";
import { ZstdFrameCheck } from "./zstd-frames.js";

/** Each codec's levels and default; the default is what a config without `compressionLevel` gets. */
export const LEVELS = {
  /** gzip's default level: within a few per cent of 9's size at a fraction of its CPU. */
  gzip: { min: 1, max: 9, default: 6 },
  /** zstd's own default: about gzip -6's ratio at several times its speed. 20–22 ("ultra") need windows too large for a daemon. */
  zstd: { min: 1, max: 19, default: 3 },
} as const;

/**
 * Undefined when this Node.js can run zstd, else why not (one line). Older
 * versions than package.json's engines are refused at start (src/cli/node-version.ts),
 * but an untested line (23.0–23.7) starts with a warning and lacks it.
 */
export function zstdUnavailable(): string | undefined {
  return typeof zlib.createZstdCompress === "function"
    ? undefined
    : `zstd needs Node.js 24.20 or 26.6 or newer, this is ${process.version}`;
}

function needZstd(): void {
  const why = zstdUnavailable();
  if (why) throw new Error(why);
}

/**
 * The compressing Transforms; `threads` > 1 compresses on that many worker
 * threads (parallel-codec.ts). The default 1 is a single zlib stream.
 */
export function encoderFor(compression: Compression, level?: number, threads = 1): Transform[] {
  if (compression !== "none" && threads > 1) {
    if (compression === "zstd") needZstd();
    return [
      new ParallelEncoder({
        codec: compression,
        level: level ?? LEVELS[compression].default,
        threads,
      }),
    ];
  }
  switch (compression) {
    case "gzip":
      return [zlib.createGzip({ level: level ?? LEVELS.gzip.default })];
    case "zstd":
      needZstd();
      return [
        zlib.createZstdCompress({
          params: {
            [zlib.constants.ZSTD_c_compressionLevel]: level ?? LEVELS.zstd.default,
            // XXH64 of the content at the frame's end: `zstd -d` and our decoder check it.
            [zlib.constants.ZSTD_c_checksumFlag]: 1,
          },
        }),
      ];
    case "none":
      return [];
  }
}

/**
 * Output chunk of the decoders: 1 MiB, not zlib's default 16 KiB. Each output
 * chunk is one round trip to the libuv pool and one write by the tar
 * extractor downstream; decoding 310 MB (250 MB random, 60 MB text) from a
 * file took 1.6 s (zstd) and 2.0 s (gzip) with 16 KiB and 0.40 s and 0.48 s
 * with 1 MiB on this 2-core machine (GNU gzip -d: 1.6 s). Memory: one chunk
 * per decoder in flight.
 */
export const DECODE_CHUNK = 1 << 20;

/**
 * Joins the download's chunks (one TLS record, at most 16 KiB, each) into
 * writes of at least DECODE_CHUNK for the gzip decoder: each write is one
 * serial round trip to the libuv pool (decoding 310 MB fed in 16 KiB chunks:
 * 1.94 s, joined: 1.54 s, of which reading the file took 1.2 s). Costs one
 * copy of the compressed bytes and at most DECODE_CHUNK held. Node's gunzip
 * reads on across members within a write; its zstd decoder does not, so
 * zstd batches in ZstdFrameCheck, which knows where frames end.
 */
export class Coalesce extends Transform {
  readonly #batch = new ChunkBatch();

  constructor(readonly min = DECODE_CHUNK) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#batch.length === 0 && chunk.length >= this.min) {
      cb(null, chunk);
      return;
    }
    this.#batch.add(chunk);
    cb(null, this.#batch.length < this.min ? undefined : this.#batch.take());
  }

  override _flush(cb: TransformCallback): void {
    cb(null, this.#batch.length > 0 ? this.#batch.take() : undefined);
  }
}

/** The decoding Transforms, in pipeline order: the last one's output is the tar. */
export function decoderFor(compression: Compression): Transform[] {
  switch (compression) {
    case "gzip":
      return [new Coalesce(), zlib.createGunzip({ chunkSize: DECODE_CHUNK })];
    case "zstd":
      needZstd();
      // The frame check first: Node's decoder misses a cut inside any frame but the
      // first, and ends early on a write that spans a frame's end (zstd-frames.ts).
      return [
        new ZstdFrameCheck(DECODE_CHUNK),
        zlib.createZstdDecompress({ chunkSize: DECODE_CHUNK }),
      ];
    case "none":
      // Coalescing here bought nothing: the tar reader takes 16 KiB chunks as
      // fast (restore of 300 MB to tmpfs 4.2-4.8 s either way).
      return [];
  }
}
