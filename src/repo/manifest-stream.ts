/**
 * Encodes a manifest whose file index comes as a stream (the spool of
 * src/pipeline/index-spool.ts) rather than an array in memory, to the same
 * document encodeManifest and sealIndex make (src/repo/manifest.ts,
 * src/repo/age-manifest.ts): gzip (MANIFEST_GZIP_LEVEL) of the manifest's JSON, with
 * `files` its last key; for an age backup (format 2) `files` is empty,
 * `sealedFiles` holds the age-encrypted gzip of the index's JSON array and
 * `fileCount` the clear count of files and hard links.
 * Readers see no difference, so every format stays as it was.
 *
 * Memory: only the compressed output is held (about 25 bytes per entry at
 * level 6 for a typical tree, 2.5 MB for 100,000 files), never the index's
 * JSON text or its objects.
 */
import { createGzip } from "node:zlib";
import { ageEncrypt } from "../pipeline/age.js";
import { parseRecipient } from "./age-keys.js";
import {
  MANIFEST_GZIP_LEVEL,
  MAX_MANIFEST_BYTES,
  type Manifest,
  SEALED_MANIFEST_FORMAT,
} from "./manifest.js";

/** The manifest without its index; `files` and `sealedFiles` are ignored. */
export type ManifestHead = Omit<Manifest, "files" | "sealedFiles"> &
  Partial<Pick<Manifest, "files">>;

/**
 * The manifest's bytes: `head` with `files` the entries of `contents` (the
 * JSON array's contents: entries joined by commas, as the spool holds them),
 * sealed to `recipients` when there are any.
 */
export async function encodeManifestStream(
  head: ManifestHead,
  contents: AsyncIterable<Buffer>,
  recipients: readonly string[] = [],
  /** For a sealed manifest: its clear count of files and hard links (SealedManifest, countFiles). */
  fileCount?: number,
  /** The most JSON stored (tests lower it); readers open no more than MAX_MANIFEST_BYTES. */
  maxBytes = MAX_MANIFEST_BYTES,
): Promise<Buffer> {
  const {
    files: _files,
    sealedFiles: _sealed,
    ...rest
  } = head as ManifestHead & Pick<Partial<Manifest>, "sealedFiles">;
  if (recipients.length) {
    const plain = await gzipParts(["[", contents, "]"], maxBytes);
    const sealed = {
      ...rest,
      formatVersion: SEALED_MANIFEST_FORMAT,
      encryption: { ...rest.encryption, recipients: [...recipients] },
      files: [],
      sealedFiles: ageEncrypt(plain, recipients.map(parseRecipient)).toString("base64"),
      ...(fileCount === undefined ? {} : { fileCount }),
    };
    return gzipParts([JSON.stringify(sealed)], maxBytes);
  }
  // `files` last, empty: the text ends with `"files":[]}`; the entries go between the brackets.
  const text = JSON.stringify({ ...rest, files: [] });
  if (!text.endsWith('"files":[]}')) throw new Error("unreachable: files is not the last key");
  return gzipParts([text.slice(0, -2), contents, "]}"], maxBytes);
}

/**
 * gzip (MANIFEST_GZIP_LEVEL) of the parts in order, as gzipSync of their concatenation.
 * More than maxBytes (MAX_MANIFEST_BYTES) of JSON is refused: readers would not inflate
 * it, so a locked manifest nobody can open would be stored (about 1.3
 * million files at 200 bytes per entry).
 */
async function gzipParts(
  parts: (string | AsyncIterable<Buffer>)[],
  maxBytes: number,
): Promise<Buffer> {
  let total = 0;
  const gz = createGzip({ level: MANIFEST_GZIP_LEVEL });
  const out: Buffer[] = [];
  gz.on("data", (c: Buffer) => out.push(c));
  const ended = new Promise<void>((resolve, reject) => {
    gz.once("end", resolve);
    gz.once("error", reject);
  });
  const write = async (chunk: string | Buffer): Promise<void> => {
    total += typeof chunk === "string" ? Buffer.byteLength(chunk) : chunk.length;
    if (total > maxBytes)
      throw new Error(
        `the manifest's index is more than ${maxBytes} bytes of JSON, the most a reader opens; split the job into several with fewer files`,
      );
    if (!gz.write(chunk)) await new Promise<void>((r) => gz.once("drain", r));
  };
  try {
    for (const p of parts) {
      if (typeof p === "string") await write(p);
      else for await (const c of p) await write(c);
    }
  } catch (err) {
    gz.destroy();
    throw err;
  }
  gz.end();
  await ended;
  return Buffer.concat(out);
}
