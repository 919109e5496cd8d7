/**
 * An in-memory ObjectStore for fast tests: a versioned bucket that enforces
 * Object Lock retention, SSE-C keys and per-role permissions the way Ceph RGW
 * subusers do (write-only creator, read-only restorer, full main user). The
 * same contract suite (test/store-contract.ts) runs against it and against the
 * real server, so it cannot quietly promise more than S3 does.
 */
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { RetentionMode } from "../config.js";
import { StorageError } from "../errors.js";
import type {
  BucketLockState,
  ObjectStore,
  PendingUpload,
  Retention,
  Target,
  UploadRequest,
  VersionEntry,
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
}

const PERMS: Record<Role, ReadonlySet<string>> = {
  writer: new Set(["upload", "abort", "deleteMarker"]),
  reader: new Set(["lockState", "head", "retention", "get", "listVersions", "listUploads"]),
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
  ]),
};

export class MemoryBucket {
  readonly name: string;
  objectLock: boolean;
  versioning: BucketLockState["versioning"];
  defaultRetention: { mode: RetentionMode; days: number } | undefined;
  readonly versions: StoredVersion[] = [];
  readonly uploads = new Map<string, { key: string; initiated: Date }>();
  /** The clock; tests move it to expire retention. */
  now: () => Date = () => new Date();

  constructor(
    name: string,
    opts: { objectLock?: boolean; defaultRetention?: { mode: RetentionMode; days: number } } = {},
  ) {
    this.name = name;
    this.objectLock = opts.objectLock ?? true;
    this.versioning = this.objectLock ? "Enabled" : "Off";
    this.defaultRetention = this.objectLock
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
    if (req.sseKey.length !== 32) throw new Error("SSE-C key must be 32 bytes");
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
    const created = this.#b.now();
    const d = this.#b.defaultRetention;
    const versionId = randomBytes(12).toString("hex");
    this.#b.versions.push({
      key: req.key,
      versionId,
      data: Buffer.concat(chunks),
      keyHash: hashKey(req.sseKey),
      created,
      retention: d
        ? { mode: d.mode, retainUntil: new Date(created.getTime() + d.days * 86_400_000) }
        : undefined,
      deleteMarker: false,
    });
    return { versionId };
  }

  #find(key: string, versionId: string, sseKey: Buffer | undefined): StoredVersion {
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
    if (sseKey !== undefined && v.keyHash !== hashKey(sseKey)) {
      throw new StorageError(
        `cannot read s3://${this.bucket}/${key}: the SSE-C key does not match, HTTP 403`,
        {
          transient: false,
          status: 403,
        },
      );
    }
    return v;
  }

  async head(key: string, versionId: string, sseKey: Buffer): Promise<{ size: number }> {
    this.#allow("head", key);
    return { size: this.#find(key, versionId, sseKey).data.length };
  }

  async retention(key: string, versionId: string): Promise<Retention | undefined> {
    this.#allow("retention", key);
    const r = this.#find(key, versionId, undefined).retention;
    return r ? { ...r } : undefined;
  }

  async get(key: string, versionId: string, sseKey: Buffer): Promise<Readable> {
    this.#allow("get", key);
    return Readable.from([this.#find(key, versionId, sseKey).data]);
  }

  async listVersions(prefix: string): Promise<VersionEntry[]> {
    this.#allow("listVersions");
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

  /** A delete marker on top of key (what an attacker with write access can add). */
  putDeleteMarker(key: string): void {
    this.#allow("deleteMarker", key);
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
