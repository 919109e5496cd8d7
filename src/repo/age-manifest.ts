/**
 * The age-encrypted file index of a manifest (SEALED_MANIFEST_FORMAT): the
 * host that writes a backup encrypts its index to the same recipients as the
 * archive, so the bucket (and the host, and anyone who owns it later) learns
 * no file name, while the rest of the manifest (archive key, version, size,
 * SHA-256, compression, encryption, schedule) stays readable for verify, the
 * auditor, keepLatestLocked and `catalog rebuild`, which need no identity.
 */
import { gunzipSync, gzipSync } from "node:zlib";
import { AgeError, ageDecrypt, ageEncrypt } from "../pipeline/age.js";
import type { AgeIdentity } from "./age-keys.js";
import { parseRecipient } from "./age-keys.js";
import { isFile, type Manifest, SEALED_MANIFEST_FORMAT } from "./manifest.js";

/** The largest index a reader inflates: a hostile manifest must not exhaust memory. */
const MAX_INDEX_BYTES = 256 * 1024 * 1024;

/** The manifest as an age backup stores it: the index sealed to `recipients`. */
export function sealIndex(m: Manifest, recipients: readonly string[]): Manifest {
  const plain = gzipSync(JSON.stringify(m.files), { level: 9 });
  return {
    ...m,
    formatVersion: SEALED_MANIFEST_FORMAT,
    encryption: { ...m.encryption, recipients: [...recipients] },
    files: [],
    sealedFiles: ageEncrypt(plain, recipients.map(parseRecipient)).toString("base64"),
  };
}

/** Whether `m`'s file index needs an identity to be read. */
export function isSealed(m: Manifest): boolean {
  return m.sealedFiles !== undefined;
}

/**
 * The manifest with its index decrypted by one of `identities`. Throws
 * AgeError naming `what` for a wrong identity, an index that does not
 * authenticate, or one that is not an index.
 */
export function openIndex(m: Manifest, identities: readonly AgeIdentity[], what: string): Manifest {
  if (m.sealedFiles === undefined) return m;
  const plain = ageDecrypt(
    Buffer.from(m.sealedFiles, "base64"),
    identities,
    `${what} (its file index)`,
  );
  let files: unknown;
  try {
    files = JSON.parse(gunzipSync(plain, { maxOutputLength: MAX_INDEX_BYTES }).toString("utf8"));
  } catch (err) {
    throw new AgeError(
      `${what}: its file index decrypts but is not an index (${(err as Error).message})`,
    );
  }
  if (!Array.isArray(files) || !files.every(isFile))
    throw new AgeError(`${what}: its file index decrypts but is malformed`);
  const { sealedFiles: _, ...rest } = m;
  return { ...rest, files };
}
