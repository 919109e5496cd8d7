/**
 * The catalog as a cache of the bucket: what the manifests under a target's
 * prefix say, each believed only as far as the server confirms it, as rows
 * the catalog can take (`immutd catalog rebuild`) or a listing can print
 * (`immutd list --from-bucket`). Reads with the reader credential and the
 * master key only; writes nothing to the bucket.
 *
 * What is believed, and why:
 * - At a manifest key, only the oldest version: immutd writes one version per
 *   manifest key, right after its archive, so later versions were written by
 *   someone else with the writer credential. They are warnings, never read.
 *   Versions stored at the very same moment as the oldest cannot be told
 *   apart: none is believed (a finding).
 * - A manifest must sit under the host and job it names, name the archive its
 *   key belongs to, and decode (src/repo/snapshots.ts readManifest).
 * - Its archive version must exist, SSE-C encrypted with the key derived for
 *   it, with the size the manifest names (HEAD with that key). Otherwise the
 *   manifest is a finding and nothing is imported: a manifest alone does not
 *   make a backup restorable.
 * - Retain-until and mode come from the server (GetObjectRetention), not the
 *   manifest: the status is "ok" while it holds, "expired" once it has passed,
 *   "unlocked" when the version has none.
 *
 * What cannot come back: runs (their attempts, failures and warnings) live
 * only in the catalog; rebuilt backups have no run (runId null). Backups made
 * before manifests (immutd 0.1.0) have no manifest to rebuild from: they are
 * counted and left to `restore --from-bucket`. An attacker holding the writer
 * credential can still upload an archive and a manifest of his own under a new
 * key; that is a backup like any other to everyone who reads the bucket, and
 * its lock keeps it from replacing anything.
 */

import type { Compression, EncryptionScheme, RetentionMode } from "../config/config.js";
import { CancelledError, describeError, StorageError } from "../errors.js";
import { AgeError } from "../pipeline/age.js";
import { catalogSseKey, schemeOf, sseKeyFor } from "../pipeline/cipher.js";
import type { AgeIdentity } from "../repo/age-keys.js";
import { countFiles, isSealed, openIndex, sealedFileCount } from "../repo/age-manifest.js";
import type { Manifest } from "../repo/manifest.js";
import {
  type BareArchive,
  isGone,
  listBucket,
  type ManifestKey,
  type ManifestScope,
  readManifest,
  schemeOption,
} from "../repo/snapshots.js";
import { mapLimit } from "../store/parallel.js";
import { retry } from "../store/retry.js";
import type { Target } from "../store/store.js";
import type { BackupStatus, ImportedBackup } from "./catalog.js";

const RETRY = { attempts: 4, lagAttempts: 2, baseMs: 250 };

/** Manifests read at once: each costs two small requests (GET, HEAD; GetObjectRetention too where HEAD does not report the lock). */
export const REBUILD_CONCURRENCY = 16;

/** One backup as the bucket describes it, checked against the server. */
export interface FoundBackup {
  host: string;
  job: string;
  target: string;
  bucket: string;
  key: string;
  versionId: string;
  size: number;
  sha256: string;
  compression: Compression;
  createdAt: string;
  retentionMode: RetentionMode | null;
  retainUntil: string | null;
  status: Extract<BackupStatus, "ok" | "expired" | "unlocked">;
  /**
   * Regular files and hard links; null when unknown: a sealed (age) index
   * from before manifests carried a clear count, and no identity to open it.
   */
  files: number | null;
  keyDerivation: string;
  manifestKey: string;
  manifestVersionId: string;
  /** An incremental's parent archive (src/repo/chain.ts), as its manifest names it; null for a full backup. */
  parent: { key: string; versionId: string } | null;
}

export interface ScanNote {
  /**
   * forged-version: a later version at a manifest key (ignored). hidden: the
   * manifest key's latest entry is a delete marker (its version is intact and
   * read). no-manifest: an archive without a manifest beside it.
   * Findings (nothing imported): ambiguous, unreadable, archive-missing,
   * archive-mismatch, planted (a key dated in the future).
   */
  kind:
    | "forged-version"
    | "hidden"
    | "no-manifest"
    | "ambiguous"
    | "planted"
    | "unreadable"
    | "archive-missing"
    | "archive-mismatch";
  target: string;
  key: string;
  versionId: string;
  message: string;
}

export interface ScanResult {
  backups: FoundBackup[];
  /** Manifests not believed: nothing of theirs is imported. */
  findings: ScanNote[];
  /** Worth knowing, imported all the same (or nothing to import). */
  warnings: ScanNote[];
}

export interface ScanOptions {
  masterKey: Buffer;
  scope: ManifestScope;
  now?: Date;
  concurrency?: number;
  signal?: AbortSignal;
  /** Called after each manifest, with how many are done out of how many found. */
  onProgress?: (done: number, total: number) => void;
  /** The scheme configured for a job on this target: an age-only manifest is read without a key. */
  schemeOf?: (job: string) => EncryptionScheme;
  /**
   * Every age recipient configured on this target (its own and its jobs'). An
   * age manifest skips the SSE-C check that proves immutd wrote it, so one
   * naming any other recipient (or any, when none is configured) is not believed.
   */
  recipients?: readonly string[];
  /** Identities that open a sealed index without a clear file count (older age manifests), to count its files. */
  identities?: readonly AgeIdentity[];
}

/**
 * Reads every manifest under a target's prefix (within scope) with the
 * target's reader credential, checks each against its archive version, and
 * returns what can be believed. A request that keeps failing (5xx, network)
 * after its retries throws a StorageError naming the key and version: a scan
 * is all or nothing, so a rebuild never records half a bucket.
 */
export async function scanTarget(target: Target, o: ScanOptions): Promise<ScanResult> {
  const store = target.reader;
  const now = o.now ?? new Date();
  const { manifests, bare, planted } = await listBucket(
    store,
    target.prefix,
    o.scope,
    o.signal,
    now,
  );
  const out: ScanResult = { backups: [], findings: [], warnings: [] };
  const note = (kind: ScanNote["kind"], key: string, versionId: string, message: string) => ({
    kind,
    target: target.name,
    key,
    versionId,
    message: `s3://${target.bucket}/${key} version ${versionId}: ${message}`,
  });
  for (const b of bare) out.warnings.push(bareNote(note, b));
  for (const p of planted)
    out.findings.push(
      note(
        "planted",
        p.key,
        p.versionId,
        `dated ${p.createdAt.toISOString()}, in the future: immutd names keys when a run starts, so someone with write access planted it; not imported`,
      ),
    );
  let done = 0;
  const found = new Map<ManifestKey, FoundBackup>();
  await mapLimit(
    manifests,
    o.concurrency ?? REBUILD_CONCURRENCY,
    o.signal,
    async (m) => {
      for (const v of m.extra)
        out.warnings.push(
          note(
            "forged-version",
            m.key,
            v.versionId,
            `a later version at manifest key (immutd writes one per key; version ${m.version.versionId} is believed): ignored`,
          ),
        );
      if (m.hidden)
        out.warnings.push(
          note(
            "hidden",
            m.key,
            m.version.versionId,
            "the manifest key is hidden behind a delete marker; its version is intact and read",
          ),
        );
      const problem = await check(target, m, o, now);
      if ("kind" in problem)
        out.findings.push(note(problem.kind, m.key, m.version.versionId, problem.message));
      else found.set(m, problem);
      o.onProgress?.(++done, manifests.length);
    },
    "catalog rebuild",
  );
  // In listing order (host, job, newest first), whatever order the requests finished in.
  for (const m of manifests) {
    const f = found.get(m);
    if (f) out.backups.push(f);
  }
  return out;
}

type Problem = { kind: ScanNote["kind"]; message: string };

/**
 * Why an age manifest cannot be believed on a target configured with
 * `recipients`, or undefined. Without SSE-C nothing proves immutd wrote an age
 * archive (anyone with write access can encrypt to any key), so only a backup
 * sealed to recipients this config names, all of them, is taken.
 */
function ageForeignRecipients(doc: Manifest, recipients: readonly string[]): string | undefined {
  if (doc.encryption.scheme === "sse-c") return undefined;
  if (recipients.length === 0)
    return `it says it is age-encrypted (${doc.encryption.scheme}), but no age recipient is configured for this target or its jobs: immutd did not write it with this config`;
  const known = new Set(recipients);
  const named = doc.encryption.recipients ?? [];
  const other = named.filter((r) => !known.has(r));
  if (named.length === 0 || other.length)
    return `it is age-encrypted to ${other.length ? other.join(", ") : "no recipient"}, not among the configured recipients of this target and its jobs (encryption.recipients, or formerRecipients for older backups)`;
  return undefined;
}

/** One manifest version checked against the server: the backup it describes, or why it is not believed. */
async function check(
  target: Target,
  m: ManifestKey,
  o: ScanOptions,
  now: Date,
): Promise<FoundBackup | Problem> {
  if (m.tied.length)
    return {
      kind: "ambiguous",
      message: `${m.tied.length + 1} versions at this manifest key were stored at the same moment (${m.tied.map((v) => v.versionId).join(", ")} too); which one immutd wrote cannot be told, none is believed`,
    };
  const store = target.reader;
  const opts = { ...RETRY, ...(o.signal ? { signal: o.signal } : {}) };
  let doc: Manifest;
  try {
    doc = await readManifest(
      store,
      target.bucket,
      o.masterKey,
      { ...m, versionId: m.version.versionId },
      {
        ...(o.signal ? { signal: o.signal } : {}),
        ...schemeOption(undefined, o.schemeOf?.(m.job)),
      },
    );
  } catch (err) {
    if (o.signal?.aborted) throw new CancelledError("catalog rebuild cancelled");
    if (err instanceof StorageError && (err.transient || err.status === undefined))
      throw failed(`manifest s3://${target.bucket}/${m.key} version ${m.version.versionId}`, err);
    return { kind: "unreadable", message: `not believed: ${describeError(err)}` };
  }
  const a = doc.archive;
  // readManifest has already refused a createdAt that is not the time in the key
  // (the key is named at the run's start, to the second; the manifest records the same moment).
  const createdAt = new Date(doc.createdAt);
  if (!/^[0-9a-f]{64}$/.test(a.sha256))
    return { kind: "unreadable", message: `not believed: ${a.sha256} is not a SHA-256` };
  const scheme = schemeOf(doc.encryption.keyDerivation);
  if (scheme === undefined || scheme !== doc.encryption.scheme)
    return {
      kind: "unreadable",
      message: `not believed: key derivation ${doc.encryption.keyDerivation} (scheme ${doc.encryption.scheme}) is not one this immutd knows`,
    };
  const foreign = ageForeignRecipients(doc, o.recipients ?? []);
  if (foreign) return { kind: "unreadable", message: `not believed: ${foreign}` };
  const what = `its archive s3://${target.bucket}/${a.key} version ${a.versionId}`;
  // age alone: stored without SSE-C, so no key is sent and "encrypted" means nothing.
  const sseKey = sseKeyFor(o.masterKey, target.bucket, a.key, scheme);
  let head: Awaited<ReturnType<typeof store.head>>;
  try {
    head = await retry(() => store.head(a.key, a.versionId, sseKey), opts);
  } catch (err) {
    if (isGone(err))
      return { kind: "archive-missing", message: `${what} does not exist: not imported` };
    if (err instanceof StorageError && !err.transient)
      return {
        kind: "archive-mismatch",
        message: `${what} cannot be read with the key derived for it (${describeError(err)}): not imported`,
      };
    throw failed(`archive s3://${target.bucket}/${a.key} version ${a.versionId}`, err);
  }
  if (sseKey && !head.encrypted)
    return { kind: "archive-mismatch", message: `${what} is not SSE-C encrypted: not imported` };
  if (head.size !== a.size)
    return {
      kind: "archive-mismatch",
      message: `${what} holds ${head.size} bytes, the manifest says ${a.size}: not imported`,
    };
  // HEAD reports the lock to a reader allowed GetObjectRetention (RGW, AWS): one request less per backup.
  const lock =
    head.retention ??
    (await retry(() => store.retention(a.key, a.versionId), opts).catch((err) => {
      throw failed(`the retention of s3://${target.bucket}/${a.key} version ${a.versionId}`, err);
    }));
  return {
    host: doc.host,
    job: doc.job,
    target: target.name,
    bucket: target.bucket,
    key: a.key,
    versionId: a.versionId,
    size: a.size,
    sha256: a.sha256,
    compression: a.compression,
    createdAt: createdAt.toISOString(),
    retentionMode: lock?.mode ?? null,
    retainUntil: lock?.retainUntil.toISOString() ?? null,
    status: !lock ? "unlocked" : lock.retainUntil <= now ? "expired" : "ok",
    files: fileCountOf(doc, o.identities, `manifest s3://${target.bucket}/${m.key}`),
    keyDerivation: doc.encryption.keyDerivation,
    manifestKey: m.key,
    manifestVersionId: m.version.versionId,
    parent: doc.parent ? { key: doc.parent.key, versionId: doc.parent.versionId } : null,
  };
}

/**
 * How many files the catalog records for `doc` (regular files and hard
 * links, as the archive walk counts): its index's, a sealed index's clear
 * count, else the count of the index opened with `identities`; null when
 * none of these can tell (rebuild records "unknown", never a false 0).
 */
function fileCountOf(
  doc: Manifest,
  identities: readonly AgeIdentity[] | undefined,
  what: string,
): number | null {
  if (!isSealed(doc)) return countFiles(doc.files);
  const clear = sealedFileCount(doc);
  if (clear !== undefined) return clear;
  if (!identities?.length) return null;
  try {
    return countFiles(openIndex(doc, identities, what).files);
  } catch (err) {
    // Not the identity of this backup: the count stays unknown; the backup is imported all the same.
    if (err instanceof AgeError) return null;
    throw err;
  }
}

/** The catalog's files value for "unknown" (its column holds no NULL). */
export const UNKNOWN_FILES = -1;

/** A request that kept failing, as one line naming the object; nothing is recorded. */
function failed(what: string, err: unknown): StorageError {
  const s = err instanceof StorageError ? err : undefined;
  return new StorageError(
    `cannot read ${what} (${describeError(err)}); nothing was recorded, run the command again`,
    { transient: s?.transient ?? false, status: s?.status, code: s?.code, cause: err },
  );
}

function bareNote(
  note: (kind: ScanNote["kind"], key: string, versionId: string, message: string) => ScanNote,
  b: BareArchive,
): ScanNote {
  return note(
    "no-manifest",
    b.key,
    b.versionId,
    `archive of job ${b.job} without a manifest (made before manifests, or its manifest could not be written): not rebuilt; restore --from-bucket still finds it`,
  );
}

/** A found backup as the catalog stores it, with its SSE-C key derived from the master key. */
export function toImported(b: FoundBackup, masterKey: Buffer): ImportedBackup {
  return {
    job: b.job,
    target: b.target,
    bucket: b.bucket,
    key: b.key,
    versionId: b.versionId,
    size: b.size,
    sha256: b.sha256,
    compression: b.compression,
    sseKey: catalogSseKey({
      sseKey: sseKeyFor(masterKey, b.bucket, b.key, schemeOf(b.keyDerivation) ?? "sse-c"),
    }),
    keyDerivation: b.keyDerivation,
    createdAt: new Date(b.createdAt),
    retentionMode: b.retentionMode,
    retainUntil: b.retainUntil === null ? null : new Date(b.retainUntil),
    status: b.status,
    files: b.files ?? UNKNOWN_FILES,
    manifestKey: b.manifestKey,
    manifestVersionId: b.manifestVersionId,
    parent: b.parent,
  };
}
