/**
 * The codec stage: compression of the tar stream on the way up, and its
 * inverse on the way down.
 *
 * In: bytes (the uncompressed tar). Out: bytes, compressed as the job's
 * `compression` says. encoderFor and decoderFor return the Transforms to put
 * in a stream pipeline, in order; "none" needs none, so they cost nothing.
 * decoderFor(c) undoes encoderFor(c) for every c. A new codec (zstd, parallel
 * compression on several cores) is one more case here and one more value of
 * Compression, whose name also goes into the object key (src/repo/naming.ts).
 */
import type { Transform } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import type { Compression } from "../config/config.js";

/** gzip's default level: within a few per cent of 9's size at a fraction of its CPU. */
const GZIP_LEVEL = 6;

export function encoderFor(compression: Compression): Transform[] {
  switch (compression) {
    case "gzip":
      return [createGzip({ level: GZIP_LEVEL })];
    case "none":
      return [];
  }
}

export function decoderFor(compression: Compression): Transform[] {
  switch (compression) {
    case "gzip":
      return [createGunzip()];
    case "none":
      return [];
  }
}
