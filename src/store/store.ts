/**
 * The storage contract immutd needs from an S3 bucket with Versioning and
 * Object Lock. Two implementations: S3Store (the real thing, through the AWS SDK)
 * and MemoryStore (a fast fake that keeps versions and enforces locks, for unit
 * tests). test/store-contract.ts runs one suite against both, so whatever the
 * fake promises is also proven on a real server.
 *
 * There is deliberately no delete and no overwrite of backups here: immutd
 * never removes or replaces a backup. Every read names a version ID; "latest" is
 * never trusted (a delete marker or a newer version can be written by an
 * attacker). The one write that is not a backup is `immutd doctor`'s canary: a
 * tiny object under a `.immutd-doctor/` folder, locked for one day, whose
 * deletion doctor attempts to prove that the lock holds, and on which it tries
 * to put a delete marker. The canary methods refuse every other key
 * (assertCanaryKey).
 */
import type { Readable } from "node:stream";
import type { RetentionMode } from "../config/config.js";

export interface BucketLockState {
  versioning: "Enabled" | "Suspended" | "Off";
  objectLock: boolean;
  /**
   * The bucket's default retention, if any, normalised to days (a year counts
   * 365). `years` is set when the server holds it in years, so that writing it
   * back (doctor's permission probe) changes nothing.
   */
  defaultRetention?: DefaultRetention;
}

export interface DefaultRetention {
  mode: RetentionMode;
  days: number;
  years?: number;
}

/**
 * One lifecycle rule, reduced to what immutd reasons about. `native` keeps the
 * rule exactly as the server returned it: rewriting a bucket's lifecycle
 * (PutBucketLifecycleConfiguration replaces every rule) sends rules immutd does
 * not manage back unchanged.
 */
export interface LifecycleRule {
  id: string;
  enabled: boolean;
  /** The key prefix the rule is limited to ("" for the whole bucket); a tag or size filter is not represented, so checks treat such a rule as applying to every key under the prefix. */
  prefix: string;
  /** Limited to versions with this object tag too (immutd's keep-tier rules: src/retention/lifecycle.ts). */
  tag?: { key: string; value: string };
  /** Current versions: expire (in a versioned bucket: get a delete marker) this many days after creation, or on a date. */
  expirationDays?: number;
  expirationDate?: Date;
  /** Remove delete markers that no longer have any version behind them. */
  expiredObjectDeleteMarker?: boolean;
  /** Noncurrent versions are removed this many days after they became noncurrent (never while locked). */
  noncurrentDays?: number;
  /** Multipart uploads still incomplete this many days after they started are aborted. */
  abortIncompleteDays?: number;
  native?: unknown;
}

/** Folder name of doctor's canary objects: `<prefix><host>/.immutd-doctor/…`. Job names cannot start with ".", so it never collides with a job's backups. */
export const CANARY_DIR = ".immutd-doctor";

/** Throws unless key is a doctor canary key: the guard that keeps the canary methods away from backups. */
export function assertCanaryKey(key: string): void {
  const parts = key.split("/");
  if (parts.length < 2 || parts.at(-2) !== CANARY_DIR || !parts.at(-1)) {
    throw new Error(`refusing a canary operation on ${key}: not a ${CANARY_DIR}/ key`);
  }
}

export interface CanaryRequest {
  /** Must pass assertCanaryKey. */
  key: string;
  body: Buffer;
  /** SSE-C key; omitted only to tell "SSE-C refused" apart from "cannot write". */
  sseKey?: Buffer;
  /** Explicit COMPLIANCE retention for this version (shorter than the bucket default is allowed). */
  retainUntil: Date;
  /** Send a checksum that does not match the body: a server that verifies checksums must refuse it. */
  corruptChecksum?: boolean;
}

export interface ManifestRequest {
  /** Must pass assertManifestKey (src/repo/naming.ts). */
  key: string;
  body: Buffer;
  /** 32-byte AES256 SSE-C key; undefined: no SSE-C header at all (an age-only target). */
  sseKey: Buffer | undefined;
}

export interface EndpointProbe {
  /** The URL the probe went to (the endpoint; no credentials). */
  url: string;
  protocol: "https:" | "http:";
  /** HTTP status of an anonymous GET of the endpoint. */
  status: number;
  /** The server's Date header, if it sent one. */
  date?: Date;
  /** Local time halfway through the request, to compare with date. */
  localMidpoint: Date;
  rttMs: number;
  /** Negotiated TLS version, for https. */
  tls?: string;
}

export interface UploadRequest {
  key: string;
  body: Readable;
  /** 32-byte AES256 SSE-C key; undefined: no SSE-C header at all (an age-only target). */
  sseKey: Buffer | undefined;
  /** Called with the multipart upload ID as soon as the server assigns one. */
  onUploadId?: (uploadId: string) => void;
}

export interface Retention {
  mode: RetentionMode;
  retainUntil: Date;
}

export interface VersionEntry {
  key: string;
  versionId: string;
  size: number;
  lastModified: Date;
  isLatest: boolean;
  deleteMarker: boolean;
}

export interface PendingUpload {
  key: string;
  uploadId: string;
  initiated: Date | undefined;
}

export interface ObjectStore {
  readonly bucket: string;
  /** Versioning and Object Lock settings of the bucket. */
  lockState(): Promise<BucketLockState>;
  /**
   * Streams body into a new version of key, SSE-C encrypted, with a checksum on
   * every request that carries data. Resolves with the new version's ID.
   * Contract: on any failure (body error, request failure) the multipart upload
   * is aborted before the promise rejects, so no parts are left behind; if even
   * the abort fails, the error says so and names the upload ID.
   */
  upload(req: UploadRequest): Promise<{ versionId: string }>;
  /**
   * Size of one version, read with its SSE-C key (which the server checks;
   * undefined for a version stored without SSE-C, as age-only backups are).
   * `encrypted`: the server confirmed the version is SSE-C encrypted with
   * exactly this key (it echoed the key's MD5). false for a version stored
   * without SSE-C, which Ceph RGW 16 serves in plain despite the key headers.
   * `retention`: the lock the server reported with the answer (S3 sends it to
   * a caller allowed GetObjectRetention); absent does not mean unlocked: ask
   * retention() then.
   */
  head(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
  ): Promise<{ size: number; encrypted: boolean; retention?: Retention }>;
  /** The version's retention, or undefined if it has none. */
  retention(key: string, versionId: string): Promise<Retention | undefined>;
  /**
   * The decrypted bytes of one version, from byte `start` (default 0) up to
   * but not including byte `end` (default: the end of the version).
   * The stream fails (never ends early) if the transfer breaks or stalls, so a
   * caller can resume it from the bytes it received.
   */
  get(
    key: string,
    versionId: string,
    sseKey: Buffer | undefined,
    opts?: { signal?: AbortSignal; start?: number; end?: number },
  ): Promise<Readable>;
  /** Every version and delete marker under prefix. */
  listVersions(prefix: string): Promise<VersionEntry[]>;
  /** Multipart uploads started under prefix and neither completed nor aborted. */
  listUploads(prefix: string): Promise<PendingUpload[]>;
  /** Idempotent: aborting an upload that no longer exists succeeds. */
  abortUpload(key: string, uploadId: string): Promise<void>;

  /** Whether the bucket exists (HeadBucket). Throws StorageError when the answer is neither yes nor no (403: someone else's bucket, or no permission). */
  bucketExists(): Promise<boolean>;
  /**
   * Creates the bucket with Object Lock enabled (which turns versioning on).
   * Object Lock can only be enabled here, never later.
   */
  createBucket(): Promise<void>;
  /** Sets the bucket's default retention (PutObjectLockConfiguration); give days or years. */
  putDefaultRetention(r: { mode: RetentionMode; days?: number; years?: number }): Promise<void>;
  /** The bucket's lifecycle rules; [] when it has none. */
  lifecycle(): Promise<LifecycleRule[]>;
  /** Replaces the bucket's lifecycle configuration with these rules (rules with `native` are sent as they are). */
  putLifecycle(rules: readonly LifecycleRule[]): Promise<void>;
  /**
   * Sets a version's retention (PutObjectRetention). Only ever used to extend:
   * the server refuses to shorten a COMPLIANCE retention or to change its mode,
   * and so does the fake. A version without retention (or whose retention has
   * passed) can be given any. `upgradeGovernance` raises a GOVERNANCE version to
   * COMPLIANCE: servers take any change of a GOVERNANCE retention only with
   * BypassGovernanceRetention, which this sends; the caller must ask for
   * COMPLIANCE and a retain-until no earlier than the current one, so the bypass
   * can only make the lock stricter. A credential without the bypass permission
   * is refused (403), as for any change it may not make.
   */
  extendRetention(
    key: string,
    versionId: string,
    r: Retention,
    opts?: { upgradeGovernance?: boolean },
  ): Promise<void>;
  /**
   * Replaces one version's object tags (PutObjectTagging). Tags only steer
   * lifecycle rules; they protect nothing (whoever may write may re-tag), the
   * lock does. Ceph RGW 16 drops tags sent with CreateMultipartUpload, so a
   * backup is tagged after its upload completed.
   */
  putTags(key: string, versionId: string, tags: Record<string, string>): Promise<void>;
  /** One version's object tags (GetObjectTagging); {} when it has none. */
  tags(key: string, versionId: string): Promise<Record<string, string>>;
  /**
   * Writes a backup's manifest: one PutObject, SSE-C encrypted, with a checksum
   * the server verifies. Refuses any key that is not a manifest key, so it can
   * never write a version at an archive's key. The version gets the bucket's
   * default retention; the caller locks it (src/retention/lock.ts).
   */
  putManifest(req: ManifestRequest): Promise<{ versionId: string }>;
  /** Writes doctor's canary (one small PutObject with a checksum). Refuses any key that is not a canary key. */
  putCanary(req: CanaryRequest): Promise<{ versionId: string }>;
  /** Attempts to delete one version of a canary (with BypassGovernanceRetention); resolves if it was deleted, rejects if refused. Refuses any key that is not a canary key. */
  deleteCanary(key: string, versionId: string): Promise<void>;
  /**
   * Puts a delete marker on a canary (DeleteObject without a version ID), as
   * anyone with write access can on any key: Object Lock does not stop it.
   * Resolves if the marker was written. Refuses any key that is not a canary key.
   */
  hideCanary(key: string): Promise<void>;
  /** An anonymous GET of the endpoint: reachability, TLS and the server's clock. */
  probeEndpoint(): Promise<EndpointProbe>;
}

/** The stores of one configured target, one per credential role. */
export interface Target {
  name: string;
  bucket: string;
  prefix: string;
  /** Uploads backups. May be unable to read them back (write-only credentials). */
  writer: ObjectStore;
  /** Reads, restores, verifies. May be unable to write. */
  reader: ObjectStore;
  admin?: ObjectStore;
}
