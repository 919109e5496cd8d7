/**
 * An in-memory ObjectStore for fast tests: a versioned bucket that enforces
 * Object Lock retention, SSE-C keys and per-role permissions the way Ceph RGW
 * subusers do (write-only creator, read-only restorer, full main user). The
 * same contract suite (test/store-contract.ts) runs against it and against the
 * real server, so it cannot quietly promise more than S3 does.
 *
 * Ceph RGW 16's subusers can do two things beyond their access level, and the
 * fake does them too: both may change the bucket's Object Lock configuration
 * (unless a bucket policy denies it: `denyLockConfig`), and the write-only one
 * may set a version's retention (which keepLatestLocked relies on). Neither may
 * read the lifecycle configuration.
 */
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { RetentionMode } from "../config/config.js";
import { StorageError } from "../errors.js";
import { assertManifestKey } from "../repo/naming.js";
import {
  assertCanaryKey,
  type BucketLockState,
  type CanaryRequest,
  type DefaultRetention,
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

export type Role = "writer" | "reader" | "admin";

interface StoredVersion {
  key: string;
  versionId: string;
  data: Buffer;
  keyHash: string | undefined;
  created: Date;
  retention: Retention | undefined;
  deleteMarker: boolean;
  /** Object tags (PutObjectTagging); absent: none. */
  tags?: Record<string, string>;
}

const PERMS: Record<Role, ReadonlySet<string>> = {
  writer: new Set([
    "lockState",
    "upload",
    "abort",
    "deleteMarker",
    "delete",
    "extendRetention",
    "putDefaultRetention",
    "putTags",
  ]),
  reader: new Set([
    "lockState",
    "head",
    "retention",
    "get",
    "listVersions",
    "listUploads",
    "bucketExists",
    "putDefaultRetention",
    "tags",
  ]),
  admin: new Set([
    "lockState",
    "head",
    "retention",
    "get",
    "listVersions",
    "listUploads",
    "upload",
    "abort",
    "deleteMarker",
    "delete",
    "extendRetention",
    "putDefaultRetention",
    "bucketExists",
    "createBucket",
    "lifecycle",
    "putLifecycle",
    "putTags",
    "tags",
  ]),
};

export class MemoryBucket {
  readonly name: string;
  /** False until createBucket(), for a bucket constructed with exists: false. */
  exists: boolean;
  objectLock: boolean;
  versioning: BucketLockState["versioning"];
  defaultRetention: DefaultRetention | undefined;
  lifecycle: LifecycleRule[] = [];
  /** Roles a bucket policy denies PutObjectLockConfiguration (Ceph lets subusers do it otherwise). */
  denyLockConfig = new Set<Role>();
  /** Roles a bucket policy denies s3:DeleteObject (README's policy for Ceph subusers): no delete markers. */
  denyDelete = new Set<Role>();
  /** Roles refused PutObjectRetention (a provider or policy that does not allow it). */
  refuseRetention = new Set<Role>();
  /** PutObjectRetention calls answered AccessDenied before one is taken, as some providers do right after an upload. */
  retentionLag = 0;
  /** Accept wrong checksums, like a server that does not verify them. */
  ignoresChecksums = false;
  /** Refuse SSE-C writes with 403 AccessDenied, as AWS does on buckets created since April 2026. */
  blocksSseC = false;
  readonly versions: StoredVersion[] = [];
  /** listVersions calls so far, by any role: tests count a command's listings with it. */
  listings = 0;
  readonly uploads = new Map<string, { key: string; initiated: Date }>();
  /** The clock; tests move it to expire retention. */
  now: () => Date = () => new Date();

  constructor(
    name: string,
    opts: {
      objectLock?: boolean;
      defaultRetention?: { mode: RetentionMode; days: number } | null;
      exists?: boolean;
    } = {},
  ) {
    this.name = name;
    this.exists = opts.exists ?? true;
    this.objectLock = this.exists && (opts.objectLock ?? true);
    this.versioning = this.objectLock ? "Enabled" : "Off";
    this.defaultRetention =
      this.objectLock && opts.defaultRetention !== null
        ? (opts.defaultRetention ?? { mode: "COMPLIANCE", days: 1 })
        : undefined;
  }

  store(role: Role): MemoryStore {
    return new MemoryStore(this, role);
  }

  target(name = "memory", prefix = ""): Target {
    return {
      name,
      bucket: this.name,
      prefix,
      writer: this.store("writer"),
      reader: this.store("reader"),
      admin: this.store("admin"),
    };
  }

  /**
   * A delete of one version, as any credential could attempt it. immutd itself
   * never deletes; tests use this to show that the lock holds.
   */
  deleteVersion(key: string, versionId: string): void {
    const i = this.versions.findIndex((v) => v.key === key && v.versionId === versionId);
    if (i < 0) return;
    const v = this.versions[i] as StoredVersion;
    if (v.retention && v.retention.retainUntil > this.now()) {
      throw new StorageError(`AccessDenied: forbidden by object lock: ${key} ${versionId}`, {
        transient: false,
        status: 403,
      });
    }
    this.versions.splice(i, 1);
  }

  /** What a storage administrator can do behind S3's back: lose a version. */
  loseVersion(key: string, versionId: string): void {
    const i = this.versions.findIndex((v) => v.key === key && v.versionId === versionId);
    if (i >= 0) this.versions.splice(i, 1);
  }
}

export class MemoryStore implements ObjectStore {
  readonly bucket: string;
  readonly #b: MemoryBucket;
  readonly #role: Role;

  constructor(bucket: MemoryBucket, role: Role) {
    this.#b = bucket;
    this.bucket = bucket.name;
    this.#role = role;
  }

  #allow(op: string, key?: string): void {
    if (!this.#b.exists && op !== "createBucket" && op !== "bucketExists") {
      throw new StorageError(`cannot ${op} bucket ${this.bucket}: NoSuchBucket, HTTP 404`, {
        transient: false,
        status: 404,
      });
    }
    if (!PERMS[this.#role].has(op)) {
      throw new StorageError(
        `cannot ${op} ${key === undefined ? `bucket ${this.bucket}` : `s3://${this.bucket}/${key}`}: AccessDenied, HTTP 403`,
        { transient: false, status: 403 },
      );
    }
  }

  async lockState(): Promise<BucketLockState> {
    this.#allow("lockState");
    const b = this.#b;
    return {
      versioning: b.versioning,
      objectLock: b.objectLock,
      ...(b.defaultRetention ? { defaultRetention: { ...b.defaultRetention } } : {}),
    };
  }

  async upload(req: UploadRequest): Promise<{ versionId: string }> {
    this.#allow("upload", req.key);
    if (req.sseKey !== undefined && req.sseKey.length !== 32)
      throw new Error("SSE-C key must be 32 bytes");
    if (req.sseKey) this.#refuseSseC(req.key);
    const uploadId = randomBytes(8).toString("hex");
    this.#b.uploads.set(uploadId, { key: req.key, initiated: this.#b.now() });
    req.onUploadId?.(uploadId);
    const chunks: Buffer[] = [];
    try {
      for await (const c of req.body) chunks.push(Buffer.from(c as Buffer));
    } catch (err) {
      this.#b.uploads.delete(uploadId); // the abort the contract promises
      throw err;
    }
    this.#b.uploads.delete(uploadId);
    return { versionId: this.#store(req.key, Buffer.concat(chunks), req.sseKey) };
  }

  /** As AWS answers an SSE-C write to a bucket whose encryption configuration blocks SSE-C. */
  #refuseSseC(key: string): void {
    if (!this.#b.blocksSseC) return;
    throw new StorageError(
      `cannot write s3://${this.bucket}/${key}: the bucket blocks SSE-C (BlockedEncryptionTypes): AccessDenied, HTTP 403`,
      { transient: false, status: 403, code: "AccessDenied" },
    );
  }

  /** Stores a new version (SSE-C when given a key) with the bucket's default retention, as a PutObject or a completed upload does. */
  #store(key: string, data: Buffer, sseKey: Buffer | undefined): string {
    const created = this.#b.now();
    const d = this.#b.defaultRetention;
    const versionId = randomBytes(12).toString("hex");
    this.#b.versions.push({
      key,
      versionId,
      data,
      keyHash: sseKey ? hashKey(sseKey) : undefined,
      created,
      retention: d
        ? { mode: d.mode, retainUntil: new Date(created.getTime() + d.days * 86_400_000) }
        : undefined,
      deleteMarker: false,
    });
    return versionId;
  }

  /** `sseKey` null: any (a request that carries no key, such as GetObjectRetention). */
  #find(key: string, versionId: string, sseKey: Buffer | undefined | null): StoredVersion {
    const v = this.#b.versions.find(
      (x) => x.key === key && x.versionId === versionId && !x.deleteMarker,
    );
    if (!v) {
      throw new StorageError(
        `cannot read s3://${this.bucket}/${key} version ${versionId}: NoSuchVersion, HTTP 404`,
        {
          transient: false,
          status: 404,
        },
      );
    }
    if (sseKey !== null && v.keyHash !== (sseKey ? hashKey(sseKey) : undefined)) {
      // As Ceph RGW answers it (AWS says 403 AccessDenied).
      throw new StorageError(
        `cannot read s3://${this.bucket}/${key}: the SSE-C key does not match: InvalidArgument, HTTP 400`,
        { transient: false, status: 400, code: "InvalidArgument" },
      );
    }
    return v;
  }

  async head(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
  ): Promise<{ size: number; encrypted: boolean; retention?: Retention }> {
    this.#allow("head", key);
    // #find refuses any other key, a version stored without one, and a key for a plain one.
    const v = this.#find(key, versionId, sseKey);
    return {
      size: v.data.length,
      encrypted: sseKey !== undefined,
      ...(v.retention ? { retention: { ...v.retention } } : {}),
    };
  }

  async retention(key: string, versionId: string): Promise<Retention | undefined> {
    this.#allow("retention", key);
    const r = this.#find(key, versionId, null).retention;
    return r ? { ...r } : undefined;
  }

  async get(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
    opts: { start?: number; end?: number } = {},
  ): Promise<Readable> {
    this.#allow("get", key);
    const data = this.#find(key, versionId, sseKey).data;
    return Readable.from([data.subarray(opts.start ?? 0, opts.end ?? data.length)]);
  }

  async listVersions(prefix: string): Promise<VersionEntry[]> {
    this.#allow("listVersions");
    this.#b.listings++;
    const latest = new Map<string, StoredVersion>();
    for (const v of this.#b.versions) latest.set(v.key, v);
    return this.#b.versions
      .filter((v) => v.key.startsWith(prefix))
      .map((v) => ({
        key: v.key,
        versionId: v.versionId,
        size: v.data.length,
        lastModified: v.created,
        isLatest: latest.get(v.key) === v,
        deleteMarker: v.deleteMarker,
      }));
  }

  async listUploads(prefix: string): Promise<PendingUpload[]> {
    this.#allow("listUploads");
    return [...this.#b.uploads.entries()]
      .filter(([, u]) => u.key.startsWith(prefix))
      .map(([uploadId, u]) => ({ key: u.key, uploadId, initiated: u.initiated }));
  }

  async abortUpload(key: string, uploadId: string): Promise<void> {
    this.#allow("abort", key);
    this.#b.uploads.delete(uploadId);
  }

  async bucketExists(): Promise<boolean> {
    this.#allow("bucketExists");
    return this.#b.exists;
  }

  async createBucket(): Promise<void> {
    this.#allow("createBucket");
    const b = this.#b;
    if (b.exists) return; // Ceph answers 200 to its owner; AWS too outside us-east-1's legacy
    b.exists = true;
    b.objectLock = true;
    b.versioning = "Enabled";
    b.defaultRetention = undefined;
  }

  async putDefaultRetention(r: {
    mode: RetentionMode;
    days?: number;
    years?: number;
  }): Promise<void> {
    this.#allow("putDefaultRetention");
    if (this.#b.denyLockConfig.has(this.#role)) {
      throw new StorageError(
        `cannot set the default retention of bucket ${this.bucket}: AccessDenied, HTTP 403`,
        {
          transient: false,
          status: 403,
        },
      );
    }
    if (!this.#b.objectLock) {
      throw new StorageError(
        `cannot set the default retention of bucket ${this.bucket}: InvalidBucketState, HTTP 409`,
        { transient: false, status: 409 },
      );
    }
    this.#b.defaultRetention =
      r.years !== undefined
        ? { mode: r.mode, days: r.years * 365, years: r.years }
        : { mode: r.mode, days: r.days ?? 0 };
  }

  async lifecycle(): Promise<LifecycleRule[]> {
    this.#allow("lifecycle");
    return this.#b.lifecycle.map((r) => ({ ...r, native: { ...r, native: undefined } }));
  }

  async putLifecycle(rules: readonly LifecycleRule[]): Promise<void> {
    this.#allow("putLifecycle");
    if (rules.length === 0) throw new Error("putLifecycle: no rules");
    for (const r of rules) {
      const rule = (r.native as LifecycleRule | undefined) ?? r;
      if (rule.expiredObjectDeleteMarker && (rule.expirationDays ?? rule.expirationDate)) {
        throw new StorageError(
          `cannot set the lifecycle configuration of bucket ${this.bucket}: MalformedXML, HTTP 400`,
          { transient: false, status: 400 },
        );
      }
    }
    this.#b.lifecycle = rules.map((r) => {
      const { native, ...rest } = r;
      return native !== undefined ? { ...(native as LifecycleRule) } : rest;
    });
  }

  async extendRetention(
    key: string,
    versionId: string,
    r: Retention,
    opts: { upgradeGovernance?: boolean } = {},
  ): Promise<void> {
    this.#allow("extendRetention", key);
    if (this.#b.retentionLag > 0 || this.#b.refuseRetention.has(this.#role)) {
      if (this.#b.retentionLag > 0) this.#b.retentionLag--;
      throw new StorageError(
        `cannot extend the retention of s3://${this.bucket}/${key}: AccessDenied, HTTP 403`,
        { transient: false, status: 403 },
      );
    }
    const v = this.#find(key, versionId, null);
    const cur = v.retention;
    const now = this.#b.now();
    if (cur && cur.retainUntil > now) {
      // As Ceph RGW 16: a GOVERNANCE retention changes only with the bypass (the write subuser has it).
      const upgrade =
        opts.upgradeGovernance === true && cur.mode === "GOVERNANCE" && r.mode === "COMPLIANCE";
      if ((cur.mode !== r.mode && !upgrade) || r.retainUntil < cur.retainUntil) {
        throw new StorageError(
          `cannot extend the retention of s3://${this.bucket}/${key}: AccessDenied (would shorten or change the mode of a ${cur.mode} retention), HTTP 403`,
          { transient: false, status: 403 },
        );
      }
    }
    if (r.retainUntil <= now) {
      throw new StorageError(
        `cannot extend the retention of s3://${this.bucket}/${key}: InvalidArgument (date in the past), HTTP 400`,
        { transient: false, status: 400 },
      );
    }
    v.retention = { mode: r.mode, retainUntil: new Date(r.retainUntil) };
  }

  async putTags(key: string, versionId: string, tags: Record<string, string>): Promise<void> {
    this.#allow("putTags", key);
    this.#find(key, versionId, null).tags = { ...tags };
  }

  async tags(key: string, versionId: string): Promise<Record<string, string>> {
    this.#allow("tags", key);
    return { ...(this.#find(key, versionId, null).tags ?? {}) };
  }

  async putManifest(req: ManifestRequest): Promise<{ versionId: string }> {
    assertManifestKey(req.key);
    this.#allow("upload", req.key);
    if (req.sseKey !== undefined && req.sseKey.length !== 32)
      throw new Error("SSE-C key must be 32 bytes");
    if (req.sseKey) this.#refuseSseC(req.key);
    return { versionId: this.#store(req.key, Buffer.from(req.body), req.sseKey) };
  }

  async putCanary(req: CanaryRequest): Promise<{ versionId: string }> {
    assertCanaryKey(req.key);
    this.#allow("upload", req.key);
    const fail = (what: string, status: number) =>
      new StorageError(
        `cannot write the canary s3://${this.bucket}/${req.key}: ${what}, HTTP ${status}`,
        {
          transient: false,
          status,
        },
      );
    if (req.corruptChecksum && !this.#b.ignoresChecksums) throw fail("BadDigest", 400);
    if (req.retainUntil <= this.#b.now()) throw fail("InvalidArgument", 400);
    if (req.sseKey !== undefined && req.sseKey.length !== 32)
      throw new Error("SSE-C key must be 32 bytes");
    if (req.sseKey) this.#refuseSseC(req.key);
    const versionId = randomBytes(12).toString("hex");
    this.#b.versions.push({
      key: req.key,
      versionId,
      data: Buffer.from(req.body),
      keyHash: req.sseKey ? hashKey(req.sseKey) : undefined,
      created: this.#b.now(),
      retention: this.#b.objectLock
        ? { mode: "COMPLIANCE", retainUntil: new Date(req.retainUntil) }
        : undefined,
      deleteMarker: false,
    });
    return { versionId };
  }

  async deleteCanary(key: string, versionId: string): Promise<void> {
    assertCanaryKey(key);
    this.#allow("delete", key);
    this.#b.deleteVersion(key, versionId);
  }

  async hideCanary(key: string): Promise<void> {
    assertCanaryKey(key);
    this.putDeleteMarker(key);
  }

  async probeEndpoint(): Promise<EndpointProbe> {
    const local = new Date();
    // An HTTP Date header has whole seconds.
    const server = new Date(Math.floor(this.#b.now().getTime() / 1000) * 1000);
    return {
      url: "https://memory.invalid/",
      protocol: "https:",
      status: 200,
      date: server,
      localMidpoint: local,
      rttMs: 0,
      tls: "TLSv1.3",
    };
  }

  /** A delete marker on top of key (what an attacker with write access can add). */
  putDeleteMarker(key: string): void {
    this.#allow("deleteMarker", key);
    if (this.#b.denyDelete.has(this.#role)) {
      throw new StorageError(`cannot delete s3://${this.bucket}/${key}: AccessDenied, HTTP 403`, {
        transient: false,
        status: 403,
      });
    }
    this.#b.versions.push({
      key,
      versionId: randomBytes(12).toString("hex"),
      data: Buffer.alloc(0),
      keyHash: undefined,
      created: this.#b.now(),
      retention: undefined,
      deleteMarker: true,
    });
  }
}

function hashKey(k: Buffer): string {
  return createHash("sha256").update(k).digest("hex");
}
