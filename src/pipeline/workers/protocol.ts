/**
 * What the main thread and a codec worker say to each other, and the one
 * thing a worker does: compress one block into one independent gzip member or
 * zstd frame. Kept apart from the worker's entry (codec-worker.ts) so that a
 * test can run another worker speaking the same protocol (one that fails).
 *
 * A request moves (transfers) its block to the worker; the answer moves the
 * compressed block back. Neither is copied on the way.
 */
import * as zlib from "node:zlib";

export type BlockCodec = "gzip" | "zstd";

export interface BlockRequest {
  id: number;
  codec: BlockCodec;
  level: number;
  buf: ArrayBuffer;
  length: number;
}

export type BlockAnswer =
  | { id: number; buf: ArrayBuffer; offset: number; length: number; input?: ArrayBuffer }
  | { id: number; error: string; input?: ArrayBuffer };

/**
 * One block as a complete gzip member or zstd frame (with its content
 * checksum), which `gunzip` and `zstd -d` read back to back as one stream.
 */
export function compressBlock(codec: BlockCodec, level: number, block: Uint8Array): Buffer {
  switch (codec) {
    // One output chunk large enough for the whole member or frame: zlib then
    // returns a view of it instead of concatenating 16 KiB pieces.
    case "gzip":
      return zlib.gzipSync(block, { level, chunkSize: bound(block.length) });
    case "zstd":
      return zlib.zstdCompressSync(block, {
        chunkSize: bound(block.length),
        params: {
          [zlib.constants.ZSTD_c_compressionLevel]: level,
          [zlib.constants.ZSTD_c_checksumFlag]: 1,
        },
      });
  }
}

/** More than any member or frame of `n` input bytes can take (deflate's and zstd's bounds are below it). */
function bound(n: number): number {
  return Math.max(64 * 1024, n + (n >> 7) + 1024);
}

/**
 * The answer to send for `out`, and what to transfer: the output's own
 * buffer (never Node's shared pool, which a small Buffer may sit in) and the
 * request's input block, handed back so that the main thread reuses it: a
 * block left here would be freed only at this thread's next GC, which a
 * thread that allocates little seldom runs.
 */
export function answerOf(
  id: number,
  out: Buffer,
  input?: ArrayBuffer,
): { answer: BlockAnswer; transfer: ArrayBuffer[] } {
  const own = out.buffer.byteLength > Buffer.poolSize ? out : new Uint8Array(out);
  const buf = own.buffer as ArrayBuffer;
  const back = input && input !== buf ? { input } : {};
  return {
    answer: { id, buf, offset: own.byteOffset, length: own.byteLength, ...back },
    transfer: input && input !== buf ? [buf, input] : [buf],
  };
}
