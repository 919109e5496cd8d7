/**
 * The cipher stage: decides how one object is encrypted.
 *
 * In: the master key, the bucket and the object's key. Out: the Transforms
 * that encrypt the stream on the client (none today), the SSE-C key the
 * sink sends with every request for this object, and the scheme and
 * key-derivation id that the catalog and the manifest record so that a
 * restore years later derives the same key. Today the server encrypts
 * (SSE-C, AES256 with a key derived per object by HKDF, src/repo/keys.ts); a
 * client-side scheme (age) would return its encrypting Transform here and a
 * new scheme name, and restore would pick the decrypting one by that name.
 */
import type { Transform } from "node:stream";
import { deriveSseKey, KEY_DERIVATION } from "../repo/keys.js";

export interface Cipher {
  /** What the manifest records as encryption.scheme. */
  scheme: "sse-c";
  /** What the catalog and the manifest record as the key-derivation id. */
  keyDerivation: string;
  /** The 32-byte SSE-C key of this object: never logged, never sent over plain HTTP. */
  sseKey: Buffer;
  /** Stream stages that encrypt on the client, in order (none for SSE-C). */
  stages: Transform[];
}

export function cipherFor(masterKey: Buffer, bucket: string, objectKey: string): Cipher {
  return {
    scheme: "sse-c",
    keyDerivation: KEY_DERIVATION,
    sseKey: deriveSseKey(masterKey, bucket, objectKey),
    stages: [],
  };
}
