/**
 * ObjectStore on a real S3 server through @aws-sdk/client-s3 and lib-storage.
 *
 * Two guards live in the client's middleware so that no code path can bypass
 * them: an SSE-C key is never sent over plain http unless the target allows it,
 * and in md5 mode every request with a body carries Content-MD5 (Object-Lock
 * buckets require a checksum on every part, shared/S3-PITFALLS.md 1-2).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import type { Readable } from "node:stream";
import { rootCertificates } from "node:tls";
import {
  AbortMultipartUploadCommand,
  type ChecksumAlgorithm,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { ChecksumMode, Credential, RetentionMode, TargetConfig } from "../config.js";
import { ConfigError, RefusedError, StorageError } from "../errors.js";
import type {
  BucketLockState,
  ObjectStore,
  PendingUpload,
  Retention,
  Target,
  UploadRequest,
  VersionEntry,
} from "./store.js";

const SSE_KEY_HEADER = "x-amz-server-side-encryption-customer-key";

export interface S3StoreOptions {
  /** Replaces the HTTP layer (unit tests record requests with it). */
  requestHandler?: S3ClientConfig["requestHandler"];
}

export function openTarget(t: TargetConfig, opts: S3StoreOptions = {}): Target {
  const make = (c: Credential) => new S3Store(t, c, opts);
  return {
    name: t.name,
    bucket: t.bucket,
    prefix: t.prefix,
    writer: make(t.credentials.writer),
    reader: make(t.credentials.reader),
    ...(t.credentials.admin ? { admin: make(t.credentials.admin) } : {}),
  };
}

export class S3Store implements ObjectStore {
  readonly bucket: string;
  readonly client: S3Client;
  readonly #target: TargetConfig;

  constructor(target: TargetConfig, cred: Credential, opts: S3StoreOptions = {}) {
    this.bucket = target.bucket;
    this.#target = target;
    this.client = new S3Client({
      endpoint: target.endpoint,
      region: target.region,
      forcePathStyle: target.forcePathStyle,
      credentials: {
        accessKeyId: cred.accessKeyId,
        secretAccessKey: cred.secretAccessKey.reveal(),
      },
      // md5 mode sends Content-MD5 itself; leaving the SDK on WHEN_SUPPORTED would
      // add CRC32 headers (or aws-chunked trailers for streams) that older servers refuse.
      requestChecksumCalculation: target.checksum === "md5" ? "WHEN_REQUIRED" : "WHEN_SUPPORTED",
      responseChecksumValidation: "WHEN_REQUIRED",
      maxAttempts: 4,
      requestHandler: opts.requestHandler ?? httpHandler(target),
    });
    installGuards(this.client, target);
  }

  async lockState(): Promise<BucketLockState> {
    const versioning = await this.#call("read versioning of", undefined, () =>
      this.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket })),
    );
    let objectLock = false;
    let defaultRetention: BucketLockState["defaultRetention"];
    try {
      const res = await this.client.send(
        new GetObjectLockConfigurationCommand({ Bucket: this.bucket }),
      );
      const cfg = res.ObjectLockConfiguration;
      objectLock = cfg?.ObjectLockEnabled === "Enabled";
      const d = cfg?.Rule?.DefaultRetention;
      if (d?.Mode && (d.Days || d.Years)) {
        defaultRetention = {
          mode: d.Mode as RetentionMode,
          days: d.Days ?? (d.Years ?? 0) * 365,
        };
      }
    } catch (err) {
      if (errorName(err) !== "ObjectLockConfigurationNotFoundError") {
        throw this.#wrap(err, "read the Object Lock configuration of", undefined);
      }
    }
    const status = versioning.Status;
    return {
      versioning: status === "Enabled" || status === "Suspended" ? status : "Off",
      objectLock,
      ...(defaultRetention ? { defaultRetention } : {}),
    };
  }

  async upload(req: UploadRequest): Promise<{ versionId: string }> {
    const upload = new Upload({
      client: this.client,
      partSize: this.#target.partSizeMiB * 1024 * 1024,
      queueSize: this.#target.queueSize,
      leavePartsOnError: false,
      params: {
        Bucket: this.bucket,
        Key: req.key,
        Body: req.body,
        ContentType: "application/x-tar",
        ...sseParams(req.sseKey),
        ...checksumParam(this.#target.checksum),
      },
    });
    let reported = false;
    const report = () => {
      if (!reported && upload.uploadId && req.onUploadId) {
        reported = true;
        req.onUploadId(upload.uploadId);
      }
    };
    upload.on("httpUploadProgress", report);
    try {
      const res = await upload.done();
      if (!res.VersionId) {
        throw new StorageError(
          `s3://${this.bucket}/${req.key} was stored without a version ID: the bucket does not keep versions, so it cannot protect backups`,
          { transient: false },
        );
      }
      return { versionId: res.VersionId };
    } catch (err) {
      // lib-storage aborts the multipart upload before rejecting; abort again in
      // case that request itself failed, so that nothing is left billed and half-written.
      if (upload.uploadId) {
        try {
          await this.abortUpload(req.key, upload.uploadId);
        } catch (abortErr) {
          throw this.#wrap(
            err,
            `upload (and the abort of multipart upload ${upload.uploadId} also failed: ${describe(abortErr)}) of`,
            req.key,
          );
        }
      }
      if (err instanceof StorageError || err instanceof RefusedError) throw err;
      throw this.#wrap(err, "upload", req.key);
    }
  }

  async head(key: string, versionId: string, sseKey: Buffer): Promise<{ size: number }> {
    const res = await this.#call("read", key, () =>
      this.client.send(
        new HeadObjectCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          ...sseParams(sseKey),
        }),
      ),
    );
    return { size: res.ContentLength ?? 0 };
  }

  async retention(key: string, versionId: string): Promise<Retention | undefined> {
    try {
      const res = await this.client.send(
        new GetObjectRetentionCommand({ Bucket: this.bucket, Key: key, VersionId: versionId }),
      );
      const r = res.Retention;
      if (!r?.Mode || !r.RetainUntilDate) return undefined;
      return { mode: r.Mode as RetentionMode, retainUntil: new Date(r.RetainUntilDate) };
    } catch (err) {
      if (errorName(err) === "NoSuchObjectLockConfiguration") return undefined;
      throw this.#wrap(err, "read the retention of", key);
    }
  }

  async get(
    key: string,
    versionId: string,
    sseKey: Buffer,
    signal?: AbortSignal,
  ): Promise<Readable> {
    const res = await this.#call("download", key, () =>
      this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          ...sseParams(sseKey),
        }),
        signal ? { abortSignal: signal } : {},
      ),
    );
    return res.Body as Readable;
  }

  async listVersions(prefix: string): Promise<VersionEntry[]> {
    const out: VersionEntry[] = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const res = await this.#call("list versions under", prefix, () =>
        this.client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: prefix,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(versionMarker !== undefined ? { VersionIdMarker: versionMarker } : {}),
          }),
        ),
      );
      for (const v of res.Versions ?? []) {
        if (!v.Key || !v.VersionId) continue;
        out.push({
          key: v.Key,
          versionId: v.VersionId,
          size: v.Size ?? 0,
          lastModified: v.LastModified ?? new Date(0),
          isLatest: v.IsLatest ?? false,
          deleteMarker: false,
        });
      }
      for (const m of res.DeleteMarkers ?? []) {
        if (!m.Key || !m.VersionId) continue;
        out.push({
          key: m.Key,
          versionId: m.VersionId,
          size: 0,
          lastModified: m.LastModified ?? new Date(0),
          isLatest: m.IsLatest ?? false,
          deleteMarker: true,
        });
      }
      if (!res.IsTruncated) return out;
      keyMarker = res.NextKeyMarker;
      versionMarker = res.NextVersionIdMarker;
    }
  }

  async listUploads(prefix: string): Promise<PendingUpload[]> {
    const out: PendingUpload[] = [];
    let keyMarker: string | undefined;
    let uploadMarker: string | undefined;
    for (;;) {
      const res = await this.#call("list multipart uploads under", prefix, () =>
        this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: this.bucket,
            Prefix: prefix,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(uploadMarker !== undefined ? { UploadIdMarker: uploadMarker } : {}),
          }),
        ),
      );
      for (const u of res.Uploads ?? []) {
        if (u.Key && u.UploadId)
          out.push({ key: u.Key, uploadId: u.UploadId, initiated: u.Initiated });
      }
      if (!res.IsTruncated) return out;
      keyMarker = res.NextKeyMarker;
      uploadMarker = res.NextUploadIdMarker;
    }
  }

  async abortUpload(key: string, uploadId: string): Promise<void> {
    try {
      await this.client.send(
        new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }),
      );
    } catch (err) {
      if (errorName(err) === "NoSuchUpload") return;
      throw this.#wrap(err, "abort the multipart upload of", key);
    }
  }

  async #call<T>(what: string, key: string | undefined, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.#wrap(err, what, key);
    }
  }

  #wrap(err: unknown, what: string, key: string | undefined): Error {
    if (err instanceof RefusedError || err instanceof StorageError) return err;
    const where = key === undefined ? `bucket ${this.bucket}` : `s3://${this.bucket}/${key}`;
    const status = httpStatus(err);
    return new StorageError(
      `cannot ${what} ${where} at ${this.#target.endpoint} (target ${this.#target.name}): ${describe(err)}`,
      { transient: isTransient(err), status, cause: err },
    );
  }
}

function sseParams(key: Buffer) {
  if (key.length !== 32) throw new Error("SSE-C key must be 32 bytes");
  return { SSECustomerAlgorithm: "AES256", SSECustomerKey: key.toString("base64") };
}

function checksumParam(mode: ChecksumMode): { ChecksumAlgorithm?: ChecksumAlgorithm } {
  switch (mode) {
    case "md5":
      return {};
    case "crc32":
      return { ChecksumAlgorithm: "CRC32" };
    case "crc32c":
      return { ChecksumAlgorithm: "CRC32C" };
    case "sha1":
      return { ChecksumAlgorithm: "SHA1" };
    case "sha256":
      return { ChecksumAlgorithm: "SHA256" };
  }
}

function httpHandler(t: TargetConfig): NodeHttpHandler {
  let ca: string[] | undefined;
  if (t.caFile) {
    try {
      ca = [...rootCertificates, readFileSync(t.caFile, "utf8")];
    } catch (err) {
      throw new ConfigError(
        `targets.${t.name}.caFile: cannot read ${t.caFile}: ${(err as NodeJS.ErrnoException).code ?? describe(err)}`,
      );
    }
  }
  const sockets = t.queueSize + 4;
  return new NodeHttpHandler({
    httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: sockets, ...(ca ? { ca } : {}) }),
    httpAgent: new HttpAgent({ keepAlive: true, maxSockets: sockets }),
    connectionTimeout: 10_000,
    requestTimeout: 300_000,
  });
}

/**
 * The request-level guards: no SSE-C key over plain http (checked last, just
 * before sending); Content-MD5 on every body in md5 mode (added before signing).
 */
function installGuards(client: S3Client, t: TargetConfig): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const req = args.request as {
        protocol?: string;
        headers?: Record<string, string>;
        body?: unknown;
      };
      if (req.headers && SSE_KEY_HEADER in lower(req.headers)) {
        if (req.protocol === "http:" && !t.allowInsecureSseC) {
          throw new RefusedError(
            `refusing to send an SSE-C key over plain http to ${t.endpoint} (target ${t.name}, ${context.commandName}); use https or set allowInsecureSseC for a test server`,
          );
        }
      }
      return next(args);
    },
    { step: "finalizeRequest", name: "immutdSseGuard", priority: "low" },
  );
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as {
        protocol?: string;
        headers?: Record<string, string>;
        body?: unknown;
      };
      if (req.headers && req.body instanceof Uint8Array && req.body.length > 0) {
        const present = lower(req.headers);
        if (t.checksum === "md5" && !("content-md5" in present)) {
          req.headers["content-md5"] = createHash("md5").update(req.body).digest("base64");
        }
        // Over TLS the part is already protected in transit and its checksum is
        // verified by the server, so SigV4 need not hash the payload a second time
        // (a full SHA-256 pass over every byte on the hot path). Over http it must.
        if (req.protocol === "https:" && !("x-amz-content-sha256" in present)) {
          req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
        }
      }
      return next(args);
    },
    { step: "build", name: "immutdPartIntegrity", priority: "low" },
  );
}

function lower(h: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) out[k.toLowerCase()] = v;
  return out;
}

function errorName(err: unknown): string | undefined {
  return (err as { name?: string } | undefined)?.name;
}

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata
    ?.httpStatusCode;
}

function isTransient(err: unknown): boolean {
  const status = httpStatus(err);
  if (status !== undefined) return status >= 500 || status === 429 || status === 408;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return (
    errorName(err) === "TimeoutError" ||
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN"].includes(
      code ?? "",
    )
  );
}

/** Name, status and message of an SDK error; SDK errors carry no request headers, so no key can leak through here. */
export function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const status = httpStatus(err);
  const code = (err as NodeJS.ErrnoException).code;
  const parts = [
    err.name !== "Error" ? err.name : undefined,
    status ? `HTTP ${status}` : undefined,
    code,
  ]
    .filter(Boolean)
    .join(", ");
  const msg =
    err.message && err.message !== err.name && err.message !== "UnknownError" ? err.message : "";
  return [parts, msg].filter(Boolean).join(": ") || "unknown error";
}
