/**
 * ObjectStore on a real S3 server through @aws-sdk/client-s3 (uploads: multipart.ts).
 *
 * Two guards live in the client's middleware so that no code path can bypass
 * them: an SSE-C key is never sent over plain http unless the target allows it,
 * and in md5 mode every request with a body carries Content-MD5 (Object-Lock
 * buckets require a checksum on every part, shared/S3-PITFALLS.md 1-2).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { PassThrough, Readable } from "node:stream";
import { rootCertificates, type TLSSocket } from "node:tls";
import {
  AbortMultipartUploadCommand,
  type ChecksumAlgorithm,
  CreateBucketCommand,
  DeleteObjectCommand,
  GetBucketLifecycleConfigurationCommand,
  GetBucketVersioningCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  GetObjectTaggingCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectVersionsCommand,
  PutBucketLifecycleConfigurationCommand,
  PutObjectCommand,
  PutObjectLockConfigurationCommand,
  PutObjectRetentionCommand,
  PutObjectTaggingCommand,
  S3Client,
  type S3ClientConfig,
  type LifecycleRule as SdkLifecycleRule,
} from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { ChecksumMode, Credential, RetentionMode, TargetConfig } from "../config/config.js";
import { ConfigError, RefusedError, StorageError, UsageError } from "../errors.js";
import { http as nodeHttp, https as nodeHttps } from "../node-http.js";
import { md5Base64 } from "../pipeline/workers/digest.js";
import { assertManifestKey } from "../repo/naming.js";
import { MultipartUpload } from "./multipart.js";
import {
  assertCanaryKey,
  type BucketLockState,
  type CanaryRequest,
  type EndpointProbe,
  type LifecycleRule,
  type ManifestRequest,
  type ObjectStore,
  type PendingUpload,
  type Retention,
  type Target,
  type UploadRequest,
  type VersionEntry,
} from "./store.js";

const { Agent: HttpAgent, request: httpRequest } = nodeHttp;
const { Agent: HttpsAgent, request: httpsRequest } = nodeHttps;

const SSE_KEY_HEADER = "x-amz-server-side-encryption-customer-key";
/**
 * Bucket and retention settings carry Content-MD5 whatever the target's
 * checksum mode: AWS requires a checksum on them, and Content-MD5 is the one
 * every server verifies (Ceph RGW 16 ignores x-amz-checksum-*).
 */
const MD5_ALWAYS = new Set([
  "PutObjectLockConfigurationCommand",
  "PutBucketLifecycleConfigurationCommand",
  "PutObjectRetentionCommand",
  "PutObjectTaggingCommand",
]);

export interface S3StoreOptions {
  /** Replaces the HTTP layer (unit tests record requests with it). */
  requestHandler?: S3ClientConfig["requestHandler"];
  /** Requests the caller runs at once besides uploads (verify.concurrency), so that sockets do not queue them. */
  parallel?: number;
}

export function openTarget(t: TargetConfig, opts: S3StoreOptions = {}): Target {
  const make = (c: Credential) => new S3Store(t, c, opts);
  if (!t.credentials.writer) {
    throw new UsageError(
      `target ${t.name} has no writer credential (targets.${t.name}.credentials.writer): only \`immutd audit\` works with the reader alone`,
    );
  }
  return {
    name: t.name,
    bucket: t.bucket,
    prefix: t.prefix,
    writer: make(t.credentials.writer),
    reader: make(t.credentials.reader),
    ...(t.credentials.admin ? { admin: make(t.credentials.admin) } : {}),
  };
}

/**
 * Destroys a target's S3 clients, closing their keep-alive sockets. Stores
 * without a client (the in-memory fake) are skipped.
 */
export function closeTarget(t: Target): void {
  for (const s of [t.writer, t.reader, t.admin])
    (s as { client?: { destroy(): void } } | undefined)?.client?.destroy();
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
      requestHandler: opts.requestHandler ?? httpHandler(target, opts.parallel ?? 0),
    });
    installGuards(this.client, target);
  }

  async lockState(): Promise<BucketLockState> {
    // Both asked at once (one round trip, not two, before every backup);
    // versioning's failure is reported first, as when they were asked in turn.
    const [versioned, locked] = await Promise.allSettled([
      this.#call("read versioning of", undefined, () =>
        this.client.send(new GetBucketVersioningCommand({ Bucket: this.bucket })),
      ),
      this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket })),
    ]);
    if (versioned.status === "rejected") throw versioned.reason;
    const versioning = versioned.value;
    let objectLock = false;
    let defaultRetention: BucketLockState["defaultRetention"];
    if (locked.status === "fulfilled") {
      const cfg = locked.value.ObjectLockConfiguration;
      objectLock = cfg?.ObjectLockEnabled === "Enabled";
      const d = cfg?.Rule?.DefaultRetention;
      if (d?.Mode && (d.Days || d.Years)) {
        defaultRetention = {
          mode: d.Mode as RetentionMode,
          days: d.Days ?? (d.Years ?? 0) * 365,
          ...(d.Days ? {} : { years: d.Years as number }),
        };
      }
    } else if (errorName(locked.reason) !== "ObjectLockConfigurationNotFoundError") {
      throw this.#wrap(locked.reason, "read the Object Lock configuration of", undefined);
    }
    const status = versioning.Status;
    return {
      versioning: status === "Enabled" || status === "Suspended" ? status : "Off",
      objectLock,
      ...(defaultRetention ? { defaultRetention } : {}),
    };
  }

  async upload(req: UploadRequest): Promise<{ versionId: string }> {
    let reported = false;
    const report = () => {
      if (!reported && upload.uploadId && req.onUploadId) {
        reported = true;
        req.onUploadId(upload.uploadId);
      }
    };
    // Our own part loop (multipart.ts): one copy per byte into reused part buffers.
    const upload = new MultipartUpload({
      client: this.client,
      partSize: this.#target.partSizeMiB * 1024 * 1024,
      queueSize: this.#target.queueSize,
      body: req.body,
      params: {
        Bucket: this.bucket,
        Key: req.key,
        ContentType: "application/x-tar",
        ...(req.sseKey ? sseParams(req.sseKey) : {}),
        ...checksumParam(this.#target.checksum),
      },
      onUploadId: report,
    });
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
      report(); // before the abort: if that fails too, the catalog still names the upload
      const cause = this.#wrap(err, "upload", req.key);
      if (!upload.uploadId) throw cause;
      // Bounded: a server that stopped answering parts may not answer this either.
      const limit = this.#target.idleTimeoutSeconds * 2;
      const deadline = AbortSignal.timeout(limit * 1000);
      try {
        await this.abortUpload(req.key, upload.uploadId, deadline);
      } catch (abortErr) {
        const e = cause instanceof StorageError ? cause : undefined;
        const why = deadline.aborted
          ? `no answer within ${limit} s`
          : describe((abortErr as Error).cause ?? abortErr);
        throw new StorageError(
          `${cause.message}; the abort of multipart upload ${upload.uploadId} also failed (${why}), so its parts stay on the server until it is aborted`,
          { transient: e?.transient ?? false, status: e?.status, code: e?.code, cause },
        );
      }
      throw cause;
    }
  }

  async head(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
  ): Promise<{ size: number; encrypted: boolean; retention?: Retention }> {
    const res = await this.#call("read", key, () =>
      this.client.send(
        new HeadObjectCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          ...(sseKey ? sseParams(sseKey) : {}),
        }),
      ),
    );
    const size = res.ContentLength ?? 0;
    const encrypted =
      sseKey !== undefined &&
      res.SSECustomerKeyMD5 === createHash("md5").update(sseKey).digest("base64");
    const mode = res.ObjectLockMode;
    const until = res.ObjectLockRetainUntilDate;
    if ((mode !== "COMPLIANCE" && mode !== "GOVERNANCE") || !until) return { size, encrypted };
    return { size, encrypted, retention: { mode, retainUntil: new Date(until) } };
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
      // AWS names a version without retention NoSuchObjectLockConfiguration; Ceph RGW 16
      // ObjectLockConfigurationNotFoundError (404 both): no retention, not a missing version.
      const name = errorName(err);
      if (
        name === "NoSuchObjectLockConfiguration" ||
        name === "ObjectLockConfigurationNotFoundError"
      )
        return undefined;
      throw this.#wrap(err, "read the retention of", key);
    }
  }

  async get(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
    opts: { signal?: AbortSignal; start?: number; end?: number } = {},
  ): Promise<Readable> {
    const start = opts.start ?? 0;
    // HTTP ranges name the last byte; `end` is exclusive.
    const last = opts.end === undefined ? "" : String(opts.end - 1);
    const ranged = start > 0 || opts.end !== undefined;
    const res = await this.#call("download", key, () =>
      this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          ...(ranged ? { Range: `bytes=${start}-${last}` } : {}),
          ...(sseKey ? sseParams(sseKey) : {}),
        }),
        opts.signal ? { abortSignal: opts.signal } : {},
      ),
    );
    const body = res.Body as Readable;
    // A server that ignored the Range would send the object from byte 0 again,
    // which a resumed stream must never append.
    const expected = `bytes ${start}-${last}${last === "" ? "" : "/"}`;
    if (ranged && !res.ContentRange?.startsWith(expected)) {
      body.destroy();
      throw new StorageError(
        `cannot resume the download of s3://${this.bucket}/${key} version ${versionId} at byte ${start}: the server answered ${res.ContentRange ? `range ${res.ContentRange}` : "with the whole object"} (target ${this.#target.name})`,
        { transient: false },
      );
    }
    return this.#guardBody(body, key, res.ContentLength);
  }

  /**
   * The body as a stream whose errors name the object and the target, and that
   * fails (rather than ends) when fewer bytes arrive than the server announced.
   * A body that stops moving is ended by the socket's idle timeout (httpHandler)
   * with an error, so the caller can resume it.
   */
  #guardBody(body: Readable, key: string, expected: number | undefined): Readable {
    const out = new PassThrough();
    let received = 0;
    body.on("data", (c: Buffer) => {
      received += c.length;
    });
    body.on("error", (err) => out.destroy(this.#wrap(err, "download", key)));
    body.on("end", () => {
      if (expected !== undefined && received !== expected) {
        out.destroy(
          this.#wrap(
            Object.assign(new Error(`the body ended after ${received} of ${expected} bytes`), {
              code: "ECONNRESET",
            }),
            "download",
            key,
          ),
        );
      }
    });
    out.on("close", () => {
      if (!body.readableEnded) body.destroy();
    });
    body.pipe(out);
    return out;
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

  async abortUpload(key: string, uploadId: string, signal?: AbortSignal): Promise<void> {
    try {
      await this.client.send(
        new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }),
        signal ? { abortSignal: signal } : {},
      );
    } catch (err) {
      if (errorName(err) === "NoSuchUpload") return;
      throw this.#wrap(err, "abort the multipart upload of", key);
    }
  }

  async bucketExists(): Promise<boolean> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
      return true;
    } catch (err) {
      if (httpStatus(err) === 404) return false;
      throw this.#wrap(err, "look up", undefined);
    }
  }

  async createBucket(): Promise<void> {
    const region = this.#target.region;
    await this.#call("create", undefined, () =>
      this.client.send(
        new CreateBucketCommand({
          Bucket: this.bucket,
          ObjectLockEnabledForBucket: true,
          // us-east-1 is the one region that must not be named here.
          ...(region !== "us-east-1"
            ? { CreateBucketConfiguration: { LocationConstraint: region as never } }
            : {}),
        }),
      ),
    );
  }

  async putDefaultRetention(r: {
    mode: RetentionMode;
    days?: number;
    years?: number;
  }): Promise<void> {
    const period = r.years !== undefined ? { Years: r.years } : { Days: r.days };
    await this.#call("set the default retention of", undefined, () =>
      this.client.send(
        new PutObjectLockConfigurationCommand({
          Bucket: this.bucket,
          ObjectLockConfiguration: {
            ObjectLockEnabled: "Enabled",
            Rule: { DefaultRetention: { Mode: r.mode, ...period } },
          },
        }),
      ),
    );
  }

  async lifecycle(): Promise<LifecycleRule[]> {
    try {
      const res = await this.client.send(
        new GetBucketLifecycleConfigurationCommand({ Bucket: this.bucket }),
      );
      return (res.Rules ?? []).map(fromSdkRule);
    } catch (err) {
      if (errorName(err) === "NoSuchLifecycleConfiguration") return [];
      throw this.#wrap(err, "read the lifecycle configuration of", undefined);
    }
  }

  async putLifecycle(rules: readonly LifecycleRule[]): Promise<void> {
    if (rules.length === 0)
      throw new Error("putLifecycle: no rules (immutd never removes a lifecycle configuration)");
    await this.#call("set the lifecycle configuration of", undefined, () =>
      this.client.send(
        new PutBucketLifecycleConfigurationCommand({
          Bucket: this.bucket,
          LifecycleConfiguration: { Rules: rules.map(toSdkRule) },
        }),
      ),
    );
  }

  async extendRetention(
    key: string,
    versionId: string,
    r: Retention,
    opts: { upgradeGovernance?: boolean } = {},
  ): Promise<void> {
    // The bypass only where the contract allows it: to COMPLIANCE, never to shorten.
    const bypass = opts.upgradeGovernance === true && r.mode === "COMPLIANCE";
    await this.#call("extend the retention of", key, () =>
      this.client.send(
        new PutObjectRetentionCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          Retention: { Mode: r.mode, RetainUntilDate: r.retainUntil },
          ...(bypass ? { BypassGovernanceRetention: true } : {}),
        }),
      ),
    );
  }

  async putTags(key: string, versionId: string, tags: Record<string, string>): Promise<void> {
    await this.#call("tag", key, () =>
      this.client.send(
        new PutObjectTaggingCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          Tagging: { TagSet: Object.entries(tags).map(([Key, Value]) => ({ Key, Value })) },
        }),
      ),
    );
  }

  async tags(key: string, versionId: string): Promise<Record<string, string>> {
    const res = await this.#call("read the tags of", key, () =>
      this.client.send(
        new GetObjectTaggingCommand({ Bucket: this.bucket, Key: key, VersionId: versionId }),
      ),
    );
    return Object.fromEntries((res.TagSet ?? []).map((t) => [t.Key ?? "", t.Value ?? ""]));
  }

  /** The version ID a PutObject answered with; a bucket without versioning answers none. */
  #versionOf(versionId: string | undefined, key: string): string {
    if (versionId) return versionId;
    throw new StorageError(
      `s3://${this.bucket}/${key} was stored without a version ID: the bucket does not keep versions`,
      { transient: false },
    );
  }

  async putManifest(req: ManifestRequest): Promise<{ versionId: string }> {
    assertManifestKey(req.key);
    const res = await this.#call("write the manifest", req.key, () =>
      this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: req.key,
          Body: req.body,
          ContentType: "application/gzip",
          ...(req.sseKey ? sseParams(req.sseKey) : {}),
          ...checksumParam(this.#target.checksum),
        }),
      ),
    );
    return { versionId: this.#versionOf(res.VersionId, req.key) };
  }

  async putCanary(req: CanaryRequest): Promise<{ versionId: string }> {
    assertCanaryKey(req.key);
    const res = await this.#call("write the canary", req.key, () =>
      this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: req.key,
          Body: req.body,
          ContentType: "application/octet-stream",
          ObjectLockMode: "COMPLIANCE",
          ObjectLockRetainUntilDate: req.retainUntil,
          ...(req.sseKey ? sseParams(req.sseKey) : {}),
          ...(req.corruptChecksum
            ? wrongChecksum(this.#target.checksum, req.body)
            : checksumParam(this.#target.checksum)),
        }),
      ),
    );
    return { versionId: this.#versionOf(res.VersionId, req.key) };
  }

  async deleteCanary(key: string, versionId: string): Promise<void> {
    assertCanaryKey(key);
    await this.#call("delete", key, () =>
      this.client.send(
        new DeleteObjectCommand({
          Bucket: this.bucket,
          Key: key,
          VersionId: versionId,
          BypassGovernanceRetention: true,
        }),
      ),
    );
  }

  async hideCanary(key: string): Promise<void> {
    assertCanaryKey(key);
    await this.#call("put a delete marker on", key, () =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })),
    );
  }

  probeEndpoint(): Promise<EndpointProbe> {
    const t = this.#target;
    const url = new URL(`${t.endpoint}/`);
    const https = url.protocol === "https:";
    const ca = https ? extraCa(t) : undefined;
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const opts = { method: "GET", timeout: 10_000, ...(ca ? { ca } : {}) };
      const req = (https ? httpsRequest : httpRequest)(url, opts, (res) => {
        const ended = Date.now();
        const tls = https ? (res.socket as TLSSocket).getProtocol?.() : undefined;
        res.resume();
        const date = res.headers.date ? new Date(res.headers.date) : undefined;
        resolve({
          url: url.toString(),
          protocol: https ? "https:" : "http:",
          status: res.statusCode ?? 0,
          ...(date && !Number.isNaN(date.getTime()) ? { date } : {}),
          localMidpoint: new Date((started + ended) / 2),
          rttMs: ended - started,
          ...(tls ? { tls } : {}),
        });
      });
      req.on("timeout", () =>
        req.destroy(Object.assign(new Error("no answer within 10 s"), { code: "ETIMEDOUT" })),
      );
      req.on("error", (err) =>
        reject(
          new StorageError(`cannot reach ${url} (target ${t.name}): ${describe(err)}`, {
            transient: isTransient(err),
            cause: err,
          }),
        ),
      );
      req.end();
    });
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
    const t = this.#target;
    return new StorageError(
      `cannot ${what} ${where} at ${t.endpoint} (target ${t.name}): ${describeTimeout(err, t) ?? describe(err)}`,
      { transient: isTransient(err), status: httpStatus(err), code: s3Code(err), cause: err },
    );
  }
}

/** The two timeouts of httpHandler in the operator's terms, naming the setting; undefined for other errors. */
function describeTimeout(err: unknown, t: TargetConfig): string | undefined {
  if (errorName(err) !== "TimeoutError") return undefined;
  const msg = (err as Error).message ?? "";
  if (/establish a connection/.test(msg))
    return `no connection within ${t.connectTimeoutSeconds} s (targets.${t.name}.connectTimeoutSeconds)`;
  if (/inactivity/.test(msg))
    return `no byte sent or received for ${t.idleTimeoutSeconds} s (targets.${t.name}.idleTimeoutSeconds)`;
  return undefined;
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

/** The system's CAs plus the target's caFile, or undefined for the system's alone. */
function extraCa(t: TargetConfig): string[] | undefined {
  if (!t.caFile) return undefined;
  try {
    return [...rootCertificates, readFileSync(t.caFile, "utf8")];
  } catch (err) {
    throw new ConfigError(
      `targets.${t.name}.caFile: cannot read ${t.caFile}: ${(err as NodeJS.ErrnoException).code ?? describe(err)}`,
    );
  }
}

/** A checksum header that does not match body, in the target's checksum mode (doctor's probe). */
function wrongChecksum(
  mode: ChecksumMode,
  body: Buffer,
): {
  ContentMD5?: string;
  ChecksumCRC32?: string;
  ChecksumCRC32C?: string;
  ChecksumSHA1?: string;
  ChecksumSHA256?: string;
} {
  const other = Buffer.concat([body, Buffer.from("x")]);
  const digest = (alg: string, n: number) =>
    createHash(alg).update(other).digest().subarray(0, n).toString("base64");
  switch (mode) {
    case "md5":
      return { ContentMD5: digest("md5", 16) };
    case "crc32":
      return { ChecksumCRC32: digest("sha256", 4) };
    case "crc32c":
      return { ChecksumCRC32C: digest("sha256", 4) };
    case "sha1":
      return { ChecksumSHA1: digest("sha1", 20) };
    case "sha256":
      return { ChecksumSHA256: digest("sha256", 32) };
  }
}

function fromSdkRule(r: SdkLifecycleRule): LifecycleRule {
  // Old servers (Ceph RGW 16) answer with the rule-level Prefix instead of a Filter.
  const legacyPrefix = (r as { Prefix?: string }).Prefix;
  const prefix = r.Filter?.Prefix ?? r.Filter?.And?.Prefix ?? legacyPrefix ?? "";
  // Ceph RGW 16 answers an And{Prefix, Tag} filter as Prefix and Tag side by side.
  const t = r.Filter?.Tag ?? r.Filter?.And?.Tags?.[0];
  const tagged = (r.Filter?.And?.Tags?.length ?? 0) <= 1 && t?.Key !== undefined;
  const e = r.Expiration;
  return {
    id: r.ID ?? "",
    enabled: r.Status === "Enabled",
    prefix,
    ...(tagged && t?.Key !== undefined ? { tag: { key: t.Key, value: t.Value ?? "" } } : {}),
    ...(e?.Days !== undefined ? { expirationDays: e.Days } : {}),
    ...(e?.Date !== undefined ? { expirationDate: new Date(e.Date) } : {}),
    ...(e?.ExpiredObjectDeleteMarker ? { expiredObjectDeleteMarker: true } : {}),
    ...(r.NoncurrentVersionExpiration?.NoncurrentDays !== undefined
      ? { noncurrentDays: r.NoncurrentVersionExpiration.NoncurrentDays }
      : {}),
    ...(r.AbortIncompleteMultipartUpload?.DaysAfterInitiation !== undefined
      ? { abortIncompleteDays: r.AbortIncompleteMultipartUpload.DaysAfterInitiation }
      : {}),
    native: r,
  };
}

function toSdkRule(r: LifecycleRule): SdkLifecycleRule {
  if (r.native !== undefined) return r.native as SdkLifecycleRule;
  // Sent as given: a combination the server does not accept is for it to refuse.
  const expiration = {
    ...(r.expirationDays !== undefined ? { Days: r.expirationDays } : {}),
    ...(r.expirationDate !== undefined ? { Date: r.expirationDate } : {}),
    ...(r.expiredObjectDeleteMarker ? { ExpiredObjectDeleteMarker: true } : {}),
  };
  return {
    ID: r.id,
    Status: r.enabled ? "Enabled" : "Disabled",
    Filter: r.tag
      ? { And: { Prefix: r.prefix, Tags: [{ Key: r.tag.key, Value: r.tag.value }] } }
      : { Prefix: r.prefix },
    ...(Object.keys(expiration).length ? { Expiration: expiration } : {}),
    ...(r.noncurrentDays !== undefined
      ? { NoncurrentVersionExpiration: { NoncurrentDays: r.noncurrentDays } }
      : {}),
    ...(r.abortIncompleteDays !== undefined
      ? { AbortIncompleteMultipartUpload: { DaysAfterInitiation: r.abortIncompleteDays } }
      : {}),
  };
}

/**
 * Timeouts, per target: `connectionTimeout` bounds the TCP connect;
 * `socketTimeout` is an idle timeout on the socket (Node's socket.setTimeout),
 * so it covers every phase in which nothing moves: a TLS handshake, a part the server stops
 * reading, an answer that never comes, and a download body that stalls (the
 * handler keeps it armed until the response ends, and destroys the body with a
 * TimeoutError). The SDK retries such an attempt (maxAttempts); restore resumes
 * a download. `requestTimeout` is left unset: in this handler it bounds only the
 * wait for response headers and, without throwOnRequestTimeout, merely warns.
 */
function httpHandler(t: TargetConfig, parallel: number): NodeHttpHandler {
  const ca = extraCa(t);
  const sockets = Math.max(t.queueSize, parallel) + 4;
  return new NodeHttpHandler({
    httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: sockets, ...(ca ? { ca } : {}) }),
    httpAgent: new HttpAgent({ keepAlive: true, maxSockets: sockets }),
    connectionTimeout: t.connectTimeoutSeconds * 1000,
    socketTimeout: t.idleTimeoutSeconds * 1000,
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
      const req = args.request as { body?: unknown };
      const body = req.body;
      if (!(body instanceof Uint8Array) || body.length <= BODY_SLICE) return next(args);
      // A fresh stream per attempt (this runs after the retry middleware), and
      // the Buffer back on the request afterwards for the next attempt.
      req.body = Readable.from(slices(body), { objectMode: false });
      try {
        return await next(args);
      } finally {
        req.body = body;
      }
    },
    { step: "finalizeRequest", name: "immutdSlicedBody", priority: "low" },
  );
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const req = args.request as {
        protocol?: string;
        headers?: Record<string, string>;
        body?: unknown;
      };
      if (req.headers && req.body instanceof Uint8Array && req.body.length > 0) {
        const present = lower(req.headers);
        const md5 = t.checksum === "md5" || MD5_ALWAYS.has(context.commandName ?? "");
        if (md5 && !("content-md5" in present)) {
          // A part's MD5 on the hashing worker (the main thread copies the part
          // once, at memory speed); small bodies here.
          req.headers["content-md5"] =
            (await md5Base64(req.body)) ?? createHash("md5").update(req.body).digest("base64");
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

/**
 * A part's body goes to the socket in slices of this size (views, no copy).
 * Written as one Buffer, the TLS socket takes the whole part at once: it is
 * copied into one allocation with the request head and encrypted in one go,
 * so every part in flight costs about two more part-sized native buffers.
 * Measured with `npm run bench` on Node 24 (16 MiB x 4): peak RSS 404-460 MiB
 * with whole-part writes, 331-369 MiB with 1 MiB slices, at the same speed.
 * The slices are made per attempt: this middleware runs after the retry one.
 */
const BODY_SLICE = 1024 * 1024;

function* slices(body: Uint8Array): Generator<Buffer> {
  for (let off = 0; off < body.length; off += BODY_SLICE) {
    yield Buffer.from(body.buffer, body.byteOffset + off, Math.min(BODY_SLICE, body.length - off));
  }
}

function lower(h: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) out[k.toLowerCase()] = v;
  return out;
}

function errorName(err: unknown): string | undefined {
  return (err as { name?: string } | undefined)?.name;
}

/** The S3 error code of a server's answer (SDK service exceptions are named by it); undefined when the answer had none. */
function s3Code(err: unknown): string | undefined {
  const e = err as { $fault?: string; name?: string; Code?: string } | undefined;
  const code = e?.Code ?? (e?.$fault ? e.name : undefined);
  return code && code !== "Unknown" && code !== "UnknownError" ? code : undefined;
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
  // The SDK renames ECONNRESET, EPIPE and ETIMEDOUT errors "TimeoutError": the code says more.
  const named = err.name !== "Error" && err.name !== "Unknown";
  const parts = [
    named && !(err.name === "TimeoutError" && code) ? err.name : undefined,
    status ? `HTTP ${status}` : undefined,
    code,
  ]
    .filter(Boolean)
    .join(", ");
  const msg =
    err.message && err.message !== err.name && err.message !== "UnknownError" ? err.message : "";
  return [parts, msg].filter(Boolean).join(": ") || "unknown error";
}
