/**
 * Key material: the master key, and the per-backup SSE-C keys derived from it.
 *
 * Each backup's SSE-C key is HKDF-SHA256(master key, salt = empty,
 * info = "immutd/sse-c/v1:" + bucket + "/" + objectKey, 32 bytes), so the master
 * key and the bucket listing alone recover every backup when the catalog is lost.
 * This rule is part of the on-disk format: changing it orphans every backup.
 */
import { hkdfSync, randomBytes } from "node:crypto";
import { ConfigError } from "../errors.js";
import { writeKeyFile } from "./private-file.js";

export const MASTER_KEY_BYTES = 32;
export const KEY_DERIVATION = "hkdf-sha256/immutd/sse-c/v1";

/** Accepts the key file's contents: 32 raw bytes, 64 hex characters or base64 of 32 bytes (surrounding whitespace ignored). */
export function parseMasterKey(contents: Buffer): Buffer {
  if (contents.length === MASTER_KEY_BYTES) return Buffer.from(contents);
  const text = contents.toString("utf8").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  if (/^[A-Za-z0-9+/]{43}=$/.test(text)) {
    const b = Buffer.from(text, "base64");
    if (b.length === MASTER_KEY_BYTES) return b;
  }
  throw new ConfigError(
    "the master key must be 32 bytes: raw, 64 hex characters, or base64 (generate one with `immutd key generate FILE`)",
  );
}

export function deriveSseKey(masterKey: Buffer, bucket: string, objectKey: string): Buffer {
  // An age-only config has no master key (an empty one): an SSE-C object met
  // anyway (a backup from before the switch to age) cannot be read or written.
  if (masterKey.length !== MASTER_KEY_BYTES)
    throw new ConfigError(
      `s3://${bucket}/${objectKey} is encrypted with SSE-C, whose key comes from the master key, but the config has no masterKey or masterKeyFile (it uses only age); add the master key the backup was made with`,
    );
  const info = Buffer.from(`immutd/sse-c/v1:${bucket}/${objectKey}`, "utf8");
  return Buffer.from(hkdfSync("sha256", masterKey, Buffer.alloc(0), info, 32));
}

/**
 * Writes a new random master key as 64 hex characters and a newline, mode 0600.
 * Refuses to replace an existing file: overwriting a master key would make every
 * backup made with the old one unreadable once the catalog is gone.
 */
export function generateMasterKeyFile(path: string): void {
  writeKeyFile(path, `${randomBytes(MASTER_KEY_BYTES).toString("hex")}\n`, "the key");
}
