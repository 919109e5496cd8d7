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
  | { id: number; buf: ArrayBuffer; offset: number; length: number }
  | { id: number; error: string };

/**
 * One block as a complete gzip member or zstd frame (with its content
 * checksum), which `gunzip` and `zstd -d` read back to back as one stream.
 */
export function compressBlock(codec: BlockCodec, level: number, block: Uint8Array): Buffer {
  switch (codec) {
    case "gzip":
      return zlib.gzipSync(block, { level });
    case "zstd":
      return zlib.zstdCompressSync(block, {
        params: {
          [zlib.constants.ZSTD_c_compressionLevel]: level,
          [zlib.constants.ZSTD_c_checksumFlag]: 1,
        },
      });
  }
}

/** The answer to send for `out`, and what to transfer: a buffer of its own, never Node's shared pool. */
export function answerOf(
  id: number,
  out: Buffer,
): { answer: BlockAnswer; transfer: ArrayBuffer[] } {
  const own =
    out.byteOffset === 0 && out.byteLength === out.buffer.byteLength && out.byteLength >= 4096
      ? out
      : new Uint8Array(out);
  const buf = own.buffer as ArrayBuffer;
  return { answer: { id, buf, offset: own.byteOffset, length: own.byteLength }, transfer: [buf] };
}
