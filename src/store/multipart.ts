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
 *
 * Part sizes grow (partSizeOf): S3 allows at most 10,000 parts, each at least
 * 5 MiB except the last and at most 5 GiB, and the parts of one upload need
 * not be the same size. The archive's size is unknown until its stream ends,
 * so a fixed part size either caps the archive (8 MiB x 10,000 = 78 GiB) or
 * spends memory on every small backup. Instead the part size doubles every
 * GROW_EVERY (2,000) parts. With the default first size of 8 MiB: memory
 * stays at (queueSize + 1) x 8 MiB for archives up to 16 GiB, parts are at
 * most 16 MiB (the old fixed default) up to 47 GiB, and 10,000 parts hold
 * 484 GiB (parts of 8, 16, 32, 64 and 128 MiB); a larger first size scales
 * all of it (partSizeMiB: 64 holds 3.8 TiB).
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
import { copied } from "../pipeline/workers/lent.js";

export interface PartParams {
  Bucket: string;
  Key: string;
  ContentType: string;
  /** Absent for an age-only target: no SSE-C header is ever sent then. */
  SSECustomerAlgorithm?: string;
  SSECustomerKey?: string;
  ChecksumAlgorithm?: ChecksumAlgorithm;
}

/** Parts of one size before the size doubles. */
export const GROW_EVERY = 2000;
/** S3's largest part. */
export const MAX_PART = 5 * 1024 ** 3;
/** S3's most parts in one upload. */
export const MAX_PARTS = 10_000;

/** The size of part `n` (from 1) of an upload whose first part is `first` bytes. */
export function partSizeOf(first: number, n: number, growEvery = GROW_EVERY): number {
  const doublings = Math.floor((n - 1) / growEvery);
  return Math.min(MAX_PART, first * 2 ** Math.min(doublings, 30));
}

/** The largest archive a multipart upload starting at `first`-byte parts can hold. */
export function largestUpload(first: number, growEvery = GROW_EVERY, maxParts = MAX_PARTS): number {
  let total = 0;
  for (let block = 0; block * growEvery < maxParts; block++) {
    const parts = Math.min(growEvery, maxParts - block * growEvery);
    total += parts * partSizeOf(first, block * growEvery + 1, growEvery);
  }
  return total;
}

export interface MultipartOptions {
  client: S3Client;
  params: PartParams;
  body: Readable;
  /** The size of the first parts; it doubles every growEvery parts (partSizeOf). */
  partSize: number;
  queueSize: number;
  /** GROW_EVERY unless a test needs the growth sooner. */
  growEvery?: number;
  /** MAX_PARTS unless a test needs the limit sooner. */
  maxParts?: number;
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
    let number = 0;
    let part = this.#take(this.#sizeOf(1));
    let size = part.length;
    let fill = 0;
    try {
      for await (const c of this.#o.body as AsyncIterable<Buffer>) {
        let off = 0;
        while (off < c.length) {
          const n = c.copy(part, fill, off);
          fill += n;
          off += n;
          if (fill === size) {
            if (number === 0) await this.#create();
            await this.#slot();
            if (this.#failure) break;
            if (!this.#room(number)) break;
            this.#send(++number, part, fill);
            size = this.#sizeOf(number + 1);
            part = this.#take(size);
            fill = 0;
          }
        }
        if (this.#failure) break;
        // Every byte of it is in a part buffer now (src/pipeline/workers/lent.ts).
        copied(c);
      }
    } catch (err) {
      this.#fail(err);
    }
    if (!this.#failure && number === 0) return this.#putObject(part.subarray(0, fill));
    if (!this.#failure && fill > 0 && this.#room(number)) this.#send(++number, part, fill);
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
   * Whether part `sent + 1` may go: S3 refuses part 10,001 only after every
   * earlier part went up, so the upload fails here instead, before sending it
   * (and the caller aborts it, as after any failure).
   */
  #room(sent: number): boolean {
    const max = this.#o.maxParts ?? MAX_PARTS;
    if (sent < max) return true;
    this.#fail(
      new Error(
        `Exceeded ${max} parts: the archive is larger than ${largestUpload(this.#o.partSize, this.#o.growEvery, max)} bytes`,
      ),
    );
    return false;
  }

  #sizeOf(n: number): number {
    return partSizeOf(this.#o.partSize, n, this.#o.growEvery);
  }

  /**
   * A part buffer of `size` bytes to fill: a free one, else a new one. At most
   * queueSize parts are in flight (#slot), so no more than queueSize + 1 are
   * ever live; a free buffer smaller than the grown part size is dropped.
   */
  #take(size: number): Buffer {
    let buf = this.#free.pop();
    while (buf && buf.length !== size) buf = this.#free.pop();
    return buf ?? Buffer.from(new SharedArrayBuffer(size));
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
