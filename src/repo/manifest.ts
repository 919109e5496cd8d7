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
} from "../config/names.js";
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
/**
 * The format of an incremental backup's manifest (src/repo/chain.ts): its index
 * names, per entry, the member of the chain whose archive holds it. An immutd
 * that reads only formats 1 and 2 would take every entry for one of this
 * archive's and restore a fraction of the tree without a word, so it must refuse.
 */
export const INCREMENTAL_FORMAT = 3;

/**
 * The largest manifest decodeManifest inflates (and, sealed, the largest
 * index): a hostile object must not exhaust memory. The writer refuses to
 * store a bigger one (src/repo/manifest-stream.ts), which no reader could open.
 */
export const MAX_MANIFEST_BYTES = 256 * 1024 * 1024;

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
  /** Where the entry's first header block starts in the uncompressed tar (of the member `member` names). */
  offset: number;
  /**
   * What the next incremental compares (src/pipeline/changes.ts), as decimal
   * strings (nanoseconds and 64-bit inode numbers exceed a JSON number):
   * inode, mtime and ctime in nanoseconds. Absent in manifests made before
   * incremental backups; an index without them cannot be a parent.
   */
  ino?: string;
  mtimeNs?: string;
  ctimeNs?: string;
  /**
   * Format 3 only: the entry's bytes are in the archive of `chain[member]`, an
   * earlier member of the chain; absent: in this manifest's own archive.
   */
  member?: number;
}

/** One earlier member of a chain, as an incremental's manifest names it (oldest, the full, first). */
export interface ChainMember {
  key: string;
  versionId: string;
  size: number;
  sha256: string;
  compression: Compression;
  /** Its manifest's key and version (the manifest of the member before it names the one before, and so on). */
  manifestVersionId: string;
  createdAt: string;
}

export interface Manifest {
  formatVersion: typeof MANIFEST_FORMAT | typeof SEALED_MANIFEST_FORMAT | typeof INCREMENTAL_FORMAT;
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
  /**
   * The backup this one builds on: null for a full backup; for an incremental
   * (format 3) the chain's previous member, which is `chain`'s last.
   */
  parent: null | { key: string; versionId: string; manifestVersionId: string };
  /** Format 3: every earlier member of the chain, the full first; `files[].member` indexes it. */
  chain?: ChainMember[];
  /**
   * What was walked (src/repo/chain.ts walkFingerprint: paths, excludes,
   * oneFileSystem, excludeIfPresent): an incremental builds only on a parent
   * that walked the same, or deletions and additions would be misread.
   */
  walk?: string;
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

/**
 * Where the index goes while the archive is written (ArchiveOptions.onEntry,
 * and the incremental planner's carried entries): in memory (ManifestIndex)
 * or spooled to disk (src/pipeline/index-spool.ts, what a backup uses).
 */
export interface IndexWriter {
  add(e: Readonly<ArchiveEntry>): void;
  /** Records already encoded (ArchiveOptions.onIndex), in order after those before. */
  addText(t: IndexText): void;
  carry(f: ManifestFile): void;
}

/**
 * Index records as the JSON text the manifest holds: `json` is `count`
 * records (indexFile's, as JSON.stringify writes them) joined by commas, no
 * brackets; `files` of them are regular files or hard links.
 */
export interface IndexText {
  json: string;
  count: number;
  files: number;
}

/** True for the records the catalog counts as files: regular files and hard links. */
export function countsAsFile(f: { type: ManifestFile["type"] }): boolean {
  return f.type === "file" || f.type === "link";
}

/** Collects the index records of entries into IndexText batches. */
export class IndexTextBatch {
  #parts: string[] = [];
  #files = 0;

  get count(): number {
    return this.#parts.length;
  }

  add(e: Readonly<ArchiveEntry>): void {
    if (countsAsFile(e)) this.#files++;
    this.#parts.push(JSON.stringify(indexFile(e)));
  }

  /** The records added since the last take, or undefined when there are none. */
  take(): IndexText | undefined {
    if (this.#parts.length === 0) return undefined;
    const t = { json: this.#parts.join(","), count: this.#parts.length, files: this.#files };
    this.#parts = [];
    this.#files = 0;
    return t;
  }
}

/** Collects the index in memory while the archive is written (ArchiveOptions.onEntry). */
export class ManifestIndex implements IndexWriter {
  readonly files: ManifestFile[] = [];

  add(e: Readonly<ArchiveEntry>): void {
    this.files.push(indexFile(e));
  }

  addText(t: IndexText): void {
    for (const f of JSON.parse(`[${t.json}]`) as ManifestFile[]) this.files.push(f);
  }

  /** An entry the incremental left out: its record as the parent's index has it, member resolved (src/pipeline/changes.ts). */
  carry(f: ManifestFile): void {
    this.files.push(f);
  }
}

/** The index record of an archived entry. */
export function indexFile(e: Readonly<ArchiveEntry>): ManifestFile {
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
  if (e.stat) Object.assign(f, e.stat);
  return f;
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

/**
 * The gzip level of every manifest and sealed index. 6, not 9: for 100,000
 * small files level 9 took 648 ms at the end of the backup, after the
 * archive's upload, for a manifest of 2.34 MB; level 6 takes 312 ms for
 * 2.46 MB. Readers inflate any level, so older manifests read as before.
 */
export const MANIFEST_GZIP_LEVEL = 6;

export function encodeManifest(m: Manifest): Buffer {
  return gzipSync(JSON.stringify(m), { level: MANIFEST_GZIP_LEVEL });
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
  if (
    m.formatVersion !== MANIFEST_FORMAT &&
    m.formatVersion !== SEALED_MANIFEST_FORMAT &&
    m.formatVersion !== INCREMENTAL_FORMAT
  )
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
    !m.files.every(isFile) ||
    (m.walk !== undefined && typeof m.walk !== "string")
  ) {
    throw new Error("malformed manifest (a required field is missing or of the wrong type)");
  }
  const chainProblem = chainShape(m as Manifest);
  if (chainProblem) throw new Error(`malformed incremental manifest (${chainProblem})`);
  return m as Manifest;
}

/**
 * A full backup (format 1) has no parent, chain or members; an incremental
 * (format 3) names its parent as its chain's last member, and each entry's
 * member lies inside the chain. Why not, as a phrase; undefined when it fits.
 */
function chainShape(m: Manifest): string | undefined {
  if (m.formatVersion !== INCREMENTAL_FORMAT) {
    const f = m.formatVersion;
    if (m.parent !== null && m.parent !== undefined) return `a format ${f} manifest names a parent`;
    if (m.chain !== undefined || m.files.some((f) => f.member !== undefined))
      return `a format ${f} manifest names chain members`;
    return undefined;
  }
  const p = m.parent as unknown as Record<string, unknown> | null;
  if (
    typeof p !== "object" ||
    p === null ||
    typeof p.key !== "string" ||
    typeof p.versionId !== "string" ||
    typeof p.manifestVersionId !== "string"
  )
    return "no parent";
  if (!Array.isArray(m.chain) || m.chain.length === 0 || !m.chain.every(isMember))
    return "no chain";
  const last = m.chain.at(-1) as ChainMember;
  if (last.key !== p.key || last.versionId !== p.versionId)
    return "its parent is not its chain's last member";
  const n = m.chain.length;
  if (
    !m.files.every(
      (f) =>
        f.member === undefined || (Number.isInteger(f.member) && f.member >= 0 && f.member < n),
    )
  )
    return "an entry names a member outside the chain";
  return undefined;
}

function isMember(c: unknown): c is ChainMember {
  const x = c as Partial<ChainMember> | null;
  return (
    typeof x === "object" &&
    x !== null &&
    typeof x.key === "string" &&
    typeof x.versionId === "string" &&
    isCount(x.size) &&
    typeof x.sha256 === "string" &&
    (COMPRESSIONS as readonly unknown[]).includes(x.compression) &&
    typeof x.manifestVersionId === "string" &&
    typeof x.createdAt === "string" &&
    ISO_TIME.test(x.createdAt)
  );
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
    optionalString(x.linkBytes) &&
    optionalDigits(x.ino) &&
    optionalDigits(x.mtimeNs) &&
    optionalDigits(x.ctimeNs)
  );
}

function isCount(n: unknown): boolean {
  return Number.isSafeInteger(n) && (n as number) >= 0;
}

function optionalDigits(s: unknown): boolean {
  return s === undefined || (typeof s === "string" && /^-?\d{1,30}$/.test(s));
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
