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
import {
  countsAsFile,
  isFile,
  MANIFEST_GZIP_LEVEL,
  type Manifest,
  SEALED_MANIFEST_FORMAT,
} from "./manifest.js";

/** The largest index a reader inflates: a hostile manifest must not exhaust memory. */
const MAX_INDEX_BYTES = 256 * 1024 * 1024;

/**
 * A sealed manifest with its clear file count. `fileCount` is an optional
 * field of format 2, added later: readers of format 2 take unknown fields
 * without a word (decodeManifest checks only the fields it knows), so it needs
 * no new format number, and a format 2 manifest without it stays readable.
 */
export type SealedManifest = Manifest & { fileCount?: number };

/** The files the catalog counts: regular files and hard links, as the archive walk does. */
export function countFiles(files: Manifest["files"]): number {
  return files.filter(countsAsFile).length;
}

/**
 * The manifest as an age backup stores it: the index sealed to `recipients`,
 * and beside it, in the clear, how many files it holds (what `catalog
 * rebuild` records without an identity). A count is no file name and no
 * content: the bucket already sees the archive's size, and the promise that
 * names and contents stay sealed holds.
 */
export function sealIndex(m: Manifest, recipients: readonly string[]): Manifest {
  const plain = gzipSync(JSON.stringify(m.files), { level: MANIFEST_GZIP_LEVEL });
  const sealed: SealedManifest = {
    ...m,
    formatVersion: SEALED_MANIFEST_FORMAT,
    encryption: { ...m.encryption, recipients: [...recipients] },
    files: [],
    sealedFiles: ageEncrypt(plain, recipients.map(parseRecipient)).toString("base64"),
    fileCount: countFiles(m.files),
  };
  return sealed;
}

/**
 * The clear file count of a sealed manifest; undefined when it has none (an
 * older format 2 manifest) or holds no whole number (hostile: not believed).
 */
export function sealedFileCount(m: Manifest): number | undefined {
  const n = (m as SealedManifest).fileCount;
  return typeof n === "number" && Number.isSafeInteger(n) && n >= 0 ? n : undefined;
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
  const { sealedFiles: _, fileCount: _n, ...rest } = m as SealedManifest;
  return { ...rest, files };
}
