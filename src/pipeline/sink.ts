/**
 * The sink stage: bytes in, one stored version out.
 *
 * In: a Readable of the bytes to store (the hash stage's output). Out: the
 * version ID the server assigned, once the whole body is stored. The S3 sink
 * streams the body as an SSE-C multipart upload (ObjectStore.upload, whose
 * contract is that any failure aborts the upload), reads it only as fast as
 * parts are sent, and reports the upload ID as soon as the server names it
 * (so that crash recovery can find it). When the upload fails it destroys
 * the body with the error, which tears down every stage upstream, back to
 * the walk, so that no stage keeps reading or holds a file open. Several
 * targets would be a fanout sink with the same signature.
 */
import type { Readable } from "node:stream";
import type { ObjectStore } from "../store/store.js";

export type Sink = (body: Readable) => Promise<{ versionId: string }>;

export function s3Sink(
  store: ObjectStore,
  req: { key: string; sseKey: Buffer | undefined; onUploadId?: (uploadId: string) => void },
): Sink {
  return (body) =>
    store.upload({ ...req, body }).catch((err: unknown) => {
      body.destroy(err instanceof Error ? err : new Error(String(err)));
      throw err;
    });
}
