/**
 * The cipher stage: decides how one object is encrypted, and how a stored one
 * is read back.
 *
 * In: the master key, the bucket, the object's key and the job's `encryption:`
 * (src/config/config.ts encryptionOf). Out: the Transforms that encrypt the
 * stream on the client, the SSE-C key the sink sends with every request for
 * this object (none for age alone: then no SSE-C header is ever sent), and the
 * scheme and key-derivation id the catalog and the manifest record so that a
 * restore years later reads it the same way.
 *
 * - sse-c: the server encrypts (AES256, a key derived per object by HKDF from
 *   the master key, src/repo/keys.ts); the host can read its own backups.
 * - age: the host encrypts to the recipients (src/pipeline/age.ts) and holds
 *   no key that decrypts; the server stores the age file as it is.
 * - both: age inside SSE-C.
 *
 * The key-derivation id is the catalog's record of the scheme (the catalog has
 * no scheme column; a row's id says it): KEY_DERIVATION for sse-c, AGE_LAYER
 * for age, the two joined by "+" for both. An age-only row stores an empty
 * SSE-C key.
 */
import type { Transform } from "node:stream";
import type { EncryptionConfig, EncryptionScheme } from "../config/config.js";
import { UsageError } from "../errors.js";
import { parseRecipient } from "../repo/age-keys.js";
import { deriveSseKey, KEY_DERIVATION } from "../repo/keys.js";
import { AgeDecrypt, AgeEncrypt, type AgeIdentity } from "./age.js";

/** The key-derivation id of the age layer: the format's own name. */
export const AGE_LAYER = "age-encryption.org/v1";

export interface Cipher {
  /** What the manifest records as encryption.scheme. */
  scheme: EncryptionScheme;
  /** What the catalog and the manifest record as the key-derivation id. */
  keyDerivation: string;
  /** The 32-byte SSE-C key of this object, undefined for age alone: never logged, never sent over plain HTTP. */
  sseKey: Buffer | undefined;
  /** The age recipients (`age1…`) the stream is encrypted to; empty for sse-c. */
  recipients: string[];
  /** Stream stages that encrypt on the client, in order (none for SSE-C). */
  stages: Transform[];
}

const SSE_C: EncryptionConfig = { scheme: "sse-c", recipients: [] };

export function cipherFor(
  masterKey: Buffer,
  bucket: string,
  objectKey: string,
  encryption: EncryptionConfig = SSE_C,
): Cipher {
  const { scheme } = encryption;
  const age = scheme !== "sse-c";
  const recipients = age ? encryption.recipients : [];
  return {
    scheme,
    keyDerivation: keyDerivationOf(scheme),
    sseKey: sseKeyFor(masterKey, bucket, objectKey, scheme),
    recipients,
    stages: age ? [new AgeEncrypt(recipients.map(parseRecipient))] : [],
  };
}

/** The SSE-C key of an object under `scheme`: none for age alone. */
export function sseKeyFor(
  masterKey: Buffer,
  bucket: string,
  objectKey: string,
  scheme: EncryptionScheme,
): Buffer | undefined {
  return scheme === "age" ? undefined : deriveSseKey(masterKey, bucket, objectKey);
}

export function keyDerivationOf(scheme: EncryptionScheme): string {
  if (scheme === "sse-c") return KEY_DERIVATION;
  return scheme === "age" ? AGE_LAYER : `${KEY_DERIVATION}+${AGE_LAYER}`;
}

/** The scheme a recorded key-derivation id stands for; undefined for one this immutd does not know. */
export function schemeOf(keyDerivation: string): EncryptionScheme | undefined {
  if (keyDerivation === KEY_DERIVATION) return "sse-c";
  if (keyDerivation === AGE_LAYER) return "age";
  if (keyDerivation === `${KEY_DERIVATION}+${AGE_LAYER}`) return "both";
  return undefined;
}

/** Whether a recorded backup's bytes are an age file (restore needs an identity). */
export function isAgeEncrypted(keyDerivation: string): boolean {
  const s = schemeOf(keyDerivation);
  return s === "age" || s === "both";
}

/** The catalog's SSE-C key as the store takes it: an age-only row's empty key means none. */
export function storedSseKey(k: Buffer): Buffer | undefined {
  return k.length ? k : undefined;
}

/** What the catalog stores as the SSE-C key of a backup made with `cipher`. */
export function catalogSseKey(cipher: Pick<Cipher, "sseKey">): Buffer {
  return cipher.sseKey ?? Buffer.alloc(0);
}

/**
 * The Transforms that turn a stored archive back into the codec's stream:
 * the age decrypter for age and both (SSE-C is undone by the server).
 */
export function decryptStages(
  keyDerivation: string,
  identities: readonly AgeIdentity[] | undefined,
  what: string,
): Transform[] {
  if (!isAgeEncrypted(keyDerivation)) return [];
  if (!identities?.length)
    throw new UsageError(`${what} is age-encrypted: an age identity is needed to read it`);
  return [new AgeDecrypt(identities, what)];
}
