/**
 * The manifest of a backup: a small object beside the archive that describes it
 * without the catalog (format version, host, job, the archive's version, size
 * and SHA-256, how it is encrypted, and an index of its entries with their
 * offsets in the uncompressed tar). Pure: encoding, decoding and comparing with
 * what the catalog recorded; writing and locking it is src/flows/backup.ts's.
 *
 * On the wire it is gzip of one JSON document (README "Manifests"): a tree of
 * 25,000 files makes a few hundred kilobytes of JSON that gzip shrinks about
 * tenfold. This layout is part of the bucket format; a change that old readers
 * cannot take raises formatVersion.
 */
import { gunzipSync, gzipSync } from "node:zlib";
import {
  COMPRESSIONS,
  type Compression,
  ENCRYPTION_SCHEMES,
  type EncryptionScheme,
} from "../config/config.js";
import type { ArchiveEntry } from "../pipeline/archive.js";
import {
  byteStringFrom,
  byteStringOf,
  displayName,
  fsPath,
  textOf,
} from "../pipeline/file-names.js";

export const MANIFEST_FORMAT = 1;
/**
 * A manifest whose file index is age-encrypted (encryption scheme age or
 * both, src/repo/age-manifest.ts): `files` is empty and `sealedFiles` holds
 * the index. Readers of format 1 refuse it by its number.
 */
export const SEALED_MANIFEST_FORMAT = 2;

/** The largest manifest decodeManifest inflates: a hostile object must not exhaust memory. */
const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;

export interface ManifestFile {
  /** Printable form (src/pipeline/file-names.ts displayName), as `tar -t` shows it. */
  path: string;
  /** The name's raw bytes in base64, present when `path` does not spell them exactly (not UTF-8, or escaped). */
  pathBytes?: string;
  type: ArchiveEntry["type"];
  size: number;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** Symlink target or hard link's earlier name, printable; `linkBytes` as for `pathBytes`. */
  link?: string;
  linkBytes?: string;
  /** Where the entry's first header block starts in the uncompressed tar. */
  offset: number;
}

export interface Manifest {
  formatVersion: typeof MANIFEST_FORMAT | typeof SEALED_MANIFEST_FORMAT;
  host: string;
  job: string;
  /** ISO 8601, the run's start (the time in the archive key). */
  createdAt: string;
  archive: {
    key: string;
    versionId: string;
    size: number;
    sha256: string;
    compression: Compression;
  };
  /** `recipients`: the age recipients (`age1…`) the archive and the index were encrypted to (age and both). */
  encryption: { scheme: EncryptionScheme; keyDerivation: string; recipients?: string[] };
  /** The backup this one builds on; always null until incremental backups exist. */
  parent: null;
  /**
   * The job's cron schedule when it ran, null for a manual-only job; absent in
   * manifests written before it existed. The auditor (src/flows/audit.ts), which has
   * no other host's config, judges the newest backup's age by it.
   */
  schedule?: string | null;
  /** The schedule's IANA time zone, when the job set one. */
  timezone?: string;
  files: ManifestFile[];
  /** SEALED_MANIFEST_FORMAT: base64 of an age file holding gzip of the index's JSON array. */
  sealedFiles?: string;
}

/** Collects the index while the archive is written (ArchiveOptions.onEntry). */
export class ManifestIndex {
  readonly files: ManifestFile[] = [];

  add(e: Readonly<ArchiveEntry>): void {
    const f: ManifestFile = {
      path: displayName(e.name),
      ...bytesOf("path", e.name),
      type: e.type,
      size: e.size,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      mtime: e.mtime,
      offset: e.offset,
    };
    if (e.linkname !== undefined)
      Object.assign(f, { link: displayName(e.linkname), ...bytesOf("link", e.linkname) });
    this.files.push(f);
  }
}

/** `{pathBytes}` / `{linkBytes}` when the printable form does not spell the name's bytes exactly. */
function bytesOf(field: "path" | "link", name: string): Record<string, string> {
  return textOf(name) === displayName(name)
    ? {}
    : { [`${field}Bytes`]: fsPath(name).toString("base64") };
}

/** The byte string (src/pipeline/file-names.ts) of an index entry's name. */
export function fileName(f: Pick<ManifestFile, "path" | "pathBytes">): string {
  return f.pathBytes === undefined
    ? byteStringOf(f.path)
    : byteStringFrom(Buffer.from(f.pathBytes, "base64"));
}

/** The byte string of an index entry's link target, if it has one. */
export function linkName(f: Pick<ManifestFile, "link" | "linkBytes">): string | undefined {
  if (f.linkBytes !== undefined) return byteStringFrom(Buffer.from(f.linkBytes, "base64"));
  return f.link === undefined ? undefined : byteStringOf(f.link);
}

/** createdAt as immutd writes it (Date.toISOString). */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

export function encodeManifest(m: Manifest): Buffer {
  return gzipSync(JSON.stringify(m), { level: 9 });
}

/** Decodes a manifest object; throws one line saying what is wrong with it. */
export function decodeManifest(body: Buffer): Manifest {
  let doc: unknown;
  try {
    doc = JSON.parse(gunzipSync(body, { maxOutputLength: MAX_MANIFEST_BYTES }).toString("utf8"));
  } catch (err) {
    throw new Error(`not a manifest (${(err as Error).message})`);
  }
  const m = doc as Partial<Manifest> | null;
  if (typeof m !== "object" || m === null) throw new Error("not a manifest (not a JSON object)");
  if (m.formatVersion !== MANIFEST_FORMAT && m.formatVersion !== SEALED_MANIFEST_FORMAT)
    throw new Error(`manifest format ${String(m.formatVersion)} is not one this immutd reads`);
  const sealed = m.formatVersion === SEALED_MANIFEST_FORMAT;
  const a = m.archive;
  if (
    typeof m.host !== "string" ||
    typeof m.job !== "string" ||
    typeof m.createdAt !== "string" ||
    !ISO_TIME.test(m.createdAt) ||
    Number.isNaN(Date.parse(m.createdAt)) ||
    typeof a !== "object" ||
    a === null ||
    typeof a.key !== "string" ||
    typeof a.versionId !== "string" ||
    typeof a.size !== "number" ||
    typeof a.sha256 !== "string" ||
    !(COMPRESSIONS as readonly unknown[]).includes(a.compression) ||
    !(ENCRYPTION_SCHEMES as readonly unknown[]).includes(m.encryption?.scheme) ||
    (m.encryption?.scheme === "sse-c") === sealed ||
    typeof m.encryption?.keyDerivation !== "string" ||
    (sealed &&
      (typeof m.sealedFiles !== "string" ||
        !Array.isArray(m.encryption.recipients) ||
        !m.encryption.recipients.every((r) => typeof r === "string") ||
        m.files?.length !== 0)) ||
    (m.schedule !== undefined && m.schedule !== null && typeof m.schedule !== "string") ||
    (m.timezone !== undefined && typeof m.timezone !== "string") ||
    !Array.isArray(m.files) ||
    !m.files.every(isFile)
  ) {
    throw new Error("malformed manifest (a required field is missing or of the wrong type)");
  }
  return m as Manifest;
}

/**
 * Every field ls and find print or restore uses has the type and form immutd
 * writes: a manifest is read with a key the host holds, so one forged on a
 * host an attacker owns must not crash the reader or reach a terminal as
 * escape sequences.
 */
export function isFile(f: unknown): f is ManifestFile {
  const x = f as Partial<ManifestFile> | null;
  return (
    typeof x === "object" &&
    x !== null &&
    typeof x.path === "string" &&
    typeof x.type === "string" &&
    /^[a-z-]{1,32}$/.test(x.type) &&
    isCount(x.offset) &&
    isCount(x.size) &&
    isCount(x.mode) &&
    isCount(x.uid) &&
    isCount(x.gid) &&
    Number.isSafeInteger(x.mtime) &&
    optionalString(x.pathBytes) &&
    optionalString(x.link) &&
    optionalString(x.linkBytes)
  );
}

function isCount(n: unknown): boolean {
  return Number.isSafeInteger(n) && (n as number) >= 0;
}

function optionalString(s: unknown): boolean {
  return s === undefined || typeof s === "string";
}

/**
 * Why a manifest does not describe the backup the catalog recorded, as a
 * phrase; undefined when it does. Pure.
 */
export function manifestMismatch(
  m: Manifest,
  b: { key: string; versionId: string; size: number; sha256: string | null },
): string | undefined {
  if (m.archive.key !== b.key) return `it names archive ${m.archive.key}`;
  if (m.archive.versionId !== b.versionId)
    return `it names archive version ${m.archive.versionId}, not ${b.versionId}`;
  if (m.archive.size !== b.size) return `it gives ${m.archive.size} bytes, not ${b.size}`;
  if (b.sha256 !== null && m.archive.sha256 !== b.sha256)
    return `its SHA-256 ${m.archive.sha256} is not the recorded ${b.sha256}`;
  return undefined;
}
