/**
 * Encodes a manifest whose file index comes as a stream (the spool of
 * src/pipeline/index-spool.ts) rather than an array in memory, to the same
 * document encodeManifest and sealIndex make (src/repo/manifest.ts,
 * src/repo/age-manifest.ts): gzip (level 9) of the manifest's JSON, with
 * `files` its last key; for an age backup (format 2) `files` is empty and
 * `sealedFiles` holds the age-encrypted gzip of the index's JSON array.
 * Readers see no difference, so every format stays as it was.
 *
 * Memory: only the compressed output is held (about 25 bytes per entry at
 * level 9 for a typical tree, 2.5 MB for 100,000 files), never the index's
 * JSON text or its objects.
 */
import { createGzip } from "node:zlib";
import { ageEncrypt } from "../pipeline/age.js";
import { parseRecipient } from "./age-keys.js";
import { type Manifest, SEALED_MANIFEST_FORMAT } from "./manifest.js";

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
): Promise<Buffer> {
  const {
    files: _files,
    sealedFiles: _sealed,
    ...rest
  } = head as ManifestHead & Pick<Partial<Manifest>, "sealedFiles">;
  if (recipients.length) {
    const plain = await gzipParts(["[", contents, "]"]);
    const sealed = {
      ...rest,
      formatVersion: SEALED_MANIFEST_FORMAT,
      encryption: { ...rest.encryption, recipients: [...recipients] },
      files: [],
      sealedFiles: ageEncrypt(plain, recipients.map(parseRecipient)).toString("base64"),
    };
    return gzipParts([JSON.stringify(sealed)]);
  }
  // `files` last, empty: the text ends with `"files":[]}`; the entries go between the brackets.
  const text = JSON.stringify({ ...rest, files: [] });
  if (!text.endsWith('"files":[]}')) throw new Error("unreachable: files is not the last key");
  return gzipParts([text.slice(0, -2), contents, "]}"]);
}

/** gzip level 9 of the parts in order, as gzipSync of their concatenation. */
async function gzipParts(parts: (string | AsyncIterable<Buffer>)[]): Promise<Buffer> {
  const gz = createGzip({ level: 9 });
  const out: Buffer[] = [];
  gz.on("data", (c: Buffer) => out.push(c));
  const ended = new Promise<void>((resolve, reject) => {
    gz.once("end", resolve);
    gz.once("error", reject);
  });
  const write = async (chunk: string | Buffer): Promise<void> => {
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
