/**
 * The storage contract immutd needs from an S3 bucket with Versioning and
 * Object Lock. Two implementations: S3Store (the real thing, through the AWS SDK)
 * and MemoryStore (a fast fake that keeps versions and enforces locks, for unit
 * tests). test/store-contract.ts runs one suite against both, so whatever the
 * fake promises is also proven on a real server.
 *
 * There is deliberately no delete and no overwrite here: immutd never removes
 * or replaces a backup. Every read names a version ID; "latest" is never trusted
 * (a delete marker or a newer version can be written by an attacker).
 */
import type { Readable } from "node:stream";
import type { RetentionMode } from "../config.js";

export interface BucketLockState {
  versioning: "Enabled" | "Suspended" | "Off";
  objectLock: boolean;
  /** The bucket's default retention, if any, normalised to days. */
  defaultRetention?: { mode: RetentionMode; days: number };
}

export interface UploadRequest {
  key: string;
  body: Readable;
  /** 32-byte AES256 SSE-C key. */
  sseKey: Buffer;
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
  /** Size of one version, read with its SSE-C key (which the server checks). */
  head(key: string, versionId: string, sseKey: Buffer): Promise<{ size: number }>;
  /** The version's retention, or undefined if it has none. */
  retention(key: string, versionId: string): Promise<Retention | undefined>;
  /** The decrypted bytes of one version. */
  get(key: string, versionId: string, sseKey: Buffer, signal?: AbortSignal): Promise<Readable>;
  /** Every version and delete marker under prefix. */
  listVersions(prefix: string): Promise<VersionEntry[]>;
  /** Multipart uploads started under prefix and neither completed nor aborted. */
  listUploads(prefix: string): Promise<PendingUpload[]>;
  /** Idempotent: aborting an upload that no longer exists succeeds. */
  abortUpload(key: string, uploadId: string): Promise<void>;
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
