/**
 * The multipart upload of one stream, without lib-storage's part assembly.
 *
 * lib-storage collects each part as a list of the stream's chunks and then
 * copies them into one new Buffer (Buffer.concat), so every part exists
 * twice and each is a fresh 16 MiB allocation that V8 frees only at its next
 * GC. Here the stream's bytes are copied once, into one of queueSize + 1 part
 * buffers that are reused for the whole upload: at most queueSize parts are
 * on the wire and one is filling. The buffers are SharedArrayBuffers, so the
 * hashing worker reads a part's bytes for its Content-MD5 in place
 * (src/pipeline/workers/digest.ts), with no copy either.
 *
 * Contract (as lib-storage's, which S3Store.upload relied on): the body is
 * read only as fast as parts go out; a body that ends before the first part
 * is full goes up as one PutObject; otherwise CreateMultipartUpload, the
 * parts (SSE-C and the checksum mode's header on every one; the SDK retries
 * each), and CompleteMultipartUpload with every part in order. The first
 * failure (a part, or the body) stops the reading, cancels the other parts
 * in flight and rejects; the upload is never completed then, and aborting it
 * is the caller's job (uploadId names it as soon as the server has).
 */
import type { Readable } from "node:stream";
import {
  type ChecksumAlgorithm,
  type CompletedPart,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";

export interface PartParams {
  Bucket: string;
  Key: string;
  ContentType: string;
  /** Absent for an age-only target: no SSE-C header is ever sent then. */
  SSECustomerAlgorithm?: string;
  SSECustomerKey?: string;
  ChecksumAlgorithm?: ChecksumAlgorithm;
}

export interface MultipartOptions {
  client: S3Client;
  params: PartParams;
  body: Readable;
  partSize: number;
  queueSize: number;
  /** Called once, when the server has named the upload. */
  onUploadId?: (uploadId: string) => void;
}

export class MultipartUpload {
  uploadId: string | undefined;
  readonly #o: MultipartOptions;
  readonly #free: Buffer[] = [];
  readonly #waiters: (() => void)[] = [];
  readonly #inFlight = new Set<Promise<void>>();
  readonly #parts: CompletedPart[] = [];
  readonly #cancel = new AbortController();
  #failure: { err: unknown } | undefined;

  constructor(o: MultipartOptions) {
    this.#o = o;
  }

  async done(): Promise<{ VersionId?: string | undefined }> {
    const { partSize } = this.#o;
    let part = this.#take();
    let fill = 0;
    let number = 0;
    try {
      for await (const c of this.#o.body as AsyncIterable<Buffer>) {
        let off = 0;
        while (off < c.length) {
          const n = c.copy(part, fill, off);
          fill += n;
          off += n;
          if (fill === partSize) {
            if (number === 0) await this.#create();
            await this.#slot();
            if (this.#failure) break;
            this.#send(++number, part, fill);
            part = this.#take();
            fill = 0;
          }
        }
        if (this.#failure) break;
      }
    } catch (err) {
      this.#fail(err);
    }
    if (!this.#failure && number === 0) return this.#putObject(part.subarray(0, fill));
    if (!this.#failure && fill > 0) this.#send(++number, part, fill);
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
    if (this.#failure) throw this.#failure.err;
    const p = this.#o.params;
    const res = await this.#o.client.send(
      new CompleteMultipartUploadCommand({
        Bucket: p.Bucket,
        Key: p.Key,
        UploadId: this.uploadId,
        MultipartUpload: {
          Parts: this.#parts.sort((a, b) => (a.PartNumber ?? 0) - (b.PartNumber ?? 0)),
        },
        ...(p.SSECustomerAlgorithm && p.SSECustomerKey
          ? { SSECustomerAlgorithm: p.SSECustomerAlgorithm, SSECustomerKey: p.SSECustomerKey }
          : {}),
      }),
    );
    return { VersionId: res.VersionId };
  }

  async #create(): Promise<void> {
    const res = await this.#o.client.send(new CreateMultipartUploadCommand({ ...this.#o.params }));
    if (!res.UploadId)
      throw new Error("the server started a multipart upload without an upload ID");
    this.uploadId = res.UploadId;
    this.#o.onUploadId?.(res.UploadId);
  }

  async #putObject(body: Buffer): Promise<{ VersionId?: string | undefined }> {
    const res = await this.#o.client.send(new PutObjectCommand({ ...this.#o.params, Body: body }));
    return { VersionId: res.VersionId };
  }

  #send(partNumber: number, buf: Buffer, length: number): void {
    const { ContentType: _type, ...p } = this.#o.params;
    const sending = this.#o.client
      .send(
        new UploadPartCommand({
          ...p,
          UploadId: this.uploadId,
          PartNumber: partNumber,
          Body: buf.subarray(0, length),
        }),
        { abortSignal: this.#cancel.signal },
      )
      .then(
        (res) => {
          this.#parts.push({
            PartNumber: partNumber,
            ETag: res.ETag,
            ...(res.ChecksumCRC32 ? { ChecksumCRC32: res.ChecksumCRC32 } : {}),
            ...(res.ChecksumCRC32C ? { ChecksumCRC32C: res.ChecksumCRC32C } : {}),
            ...(res.ChecksumSHA1 ? { ChecksumSHA1: res.ChecksumSHA1 } : {}),
            ...(res.ChecksumSHA256 ? { ChecksumSHA256: res.ChecksumSHA256 } : {}),
          });
        },
        (err: unknown) => this.#fail(err),
      )
      .finally(() => {
        this.#inFlight.delete(sending);
        this.#give(buf);
      });
    this.#inFlight.add(sending);
  }

  #fail(err: unknown): void {
    if (this.#failure) return;
    this.#failure = { err };
    this.#cancel.abort();
    // A reader waiting for a free buffer must see the failure too.
    for (const w of this.#waiters.splice(0)) w();
  }

  /**
   * A part buffer to fill: a free one, else a new one. At most queueSize
   * parts are in flight (#slot), so no more than queueSize + 1 are ever made.
   */
  #take(): Buffer {
    return this.#free.pop() ?? Buffer.from(new SharedArrayBuffer(this.#o.partSize));
  }

  /** Resolves once fewer than queueSize parts are in flight, or the upload failed. */
  async #slot(): Promise<void> {
    while (!this.#failure && this.#inFlight.size >= this.#o.queueSize) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
  }

  #give(buf: Buffer): void {
    this.#free.push(buf);
    this.#waiters.shift()?.();
  }
}
