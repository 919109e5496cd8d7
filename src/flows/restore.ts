/**
 * Restore: choose one backup version (from the catalog, or from the bucket
 * listing when the catalog is gone), then stream GetObject (SSE-C, by version
 * ID — never "latest") → SHA-256 and size check → gunzip → safe extraction,
 * listing, or raw output. No temporary copy; memory stays bounded.
 *
 * Integrity is known only when the stream ends, so a mismatch is reported
 * after the files were written: the error says the restore is incomplete and
 * leaves what was written in place for the operator to judge.
 */
import { pipeline } from "node:stream/promises";
import type { Catalog } from "../catalog/catalog.js";
import {
  type Compression,
  type Config,
  type EncryptionScheme,
  encryptionOf,
  type JobConfig,
} from "../config/config.js";
import { describeError, StorageError, UsageError } from "../errors.js";
import { AgeError } from "../pipeline/age.js";
import {
  decryptStages,
  keyDerivationOf,
  schemeOf,
  sseKeyFor,
  storedSseKey,
} from "../pipeline/cipher.js";
import { decoderFor } from "../pipeline/codec.js";
import { type DownloadOptions, download, RestoreError, whereOf } from "../pipeline/download.js";
import {
  type ExtractOptions,
  type ExtractResult,
  type ExtractWarning,
  extractTar,
  type ListResult,
  listTar,
  type TarEntryInfo,
} from "../pipeline/extract.js";
import { HashingCounter } from "../pipeline/hash.js";
import type { AgeIdentity } from "../repo/age-keys.js";
import { KEY_DERIVATION } from "../repo/keys.js";
import { isDatedInFuture, jobPrefix, parseObjectKey } from "../repo/naming.js";
import {
  type Listing,
  listScope,
  ManifestError,
  readListing,
  readManifest,
} from "../repo/snapshots.js";
import type { ObjectStore, Target } from "../store/store.js";

export { DOWNLOAD_RESUMES, RESTORE_EXIT_CODE, RestoreError } from "../pipeline/download.js";

/** One version to restore, with what is known to check it against. */
export interface RestoreSource {
  job: string;
  bucket: string;
  key: string;
  versionId: string;
  compression: Compression;
  /** undefined for a backup stored without SSE-C (age alone). */
  sseKey: Buffer | undefined;
  /** How it is encrypted (src/pipeline/cipher.ts schemeOf): an age backup needs an identity. Absent: SSE-C. */
  keyDerivation?: string;
  createdAt: Date;
  /** Expected size and SHA-256 when known (from the catalog); the bucket listing only knows the size. */
  size?: number;
  sha256?: string;
  /** Catalog id, when it came from the catalog. */
  id?: number;
  /**
   * The manifest version the catalog recorded (src/repo/manifest.ts); null when the
   * catalog says there is none (a 0.1.0 backup); absent when not known (from the bucket).
   */
  manifest?: { key: string; versionId: string } | null;
}

export interface Selector {
  at?: Date;
  id?: number;
  versionId?: string;
}

/** Picks the backup to restore from the catalog: newest good one, or the one the selector names. */
export function selectFromCatalog(catalog: Catalog, job: string, sel: Selector): RestoreSource {
  const rows = catalog.listBackups({ job });
  let row = undefined as (typeof rows)[number] | undefined;
  if (sel.id !== undefined) {
    row = catalog.backup(sel.id);
    if (!row) throw new UsageError(`no backup with id ${sel.id} in the catalog (see immutd list)`);
    if (row.job !== job)
      throw new UsageError(`backup ${sel.id} belongs to job ${row.job}, not ${job}`);
  } else if (sel.versionId !== undefined) {
    row = rows.find((r) => r.versionId === sel.versionId);
    if (!row)
      throw new UsageError(
        `job ${job} has no backup with version ID ${sel.versionId} in the catalog`,
      );
  } else {
    const good = rows.filter(
      (r) =>
        r.status === "ok" &&
        // An incremental is a restore point only with its manifest (src/flows/chain-restore.ts).
        (r.parentId === null || r.manifestVersionId !== null) &&
        (!sel.at || Date.parse(r.createdAt) <= sel.at.getTime()),
    );
    row = good.at(-1);
    if (!row) {
      throw new UsageError(
        sel.at
          ? `job ${job} has no good backup created at or before ${sel.at.toISOString()}`
          : `job ${job} has no good backup in the catalog (try --from-bucket if the catalog was lost)`,
      );
    }
  }
  return sourceOfRow(catalog, row);
}

/** A catalog row as a RestoreSource, with its key from the catalog. */
export function sourceOfRow(
  catalog: Catalog,
  row: ReturnType<Catalog["listBackups"]>[number],
): RestoreSource {
  const stored = catalog.backupKey(row.id);
  if (!stored) throw new UsageError(`backup ${row.id} has no key in the catalog`);
  const sseKey = storedSseKey(stored);
  return {
    id: row.id,
    job: row.job,
    bucket: row.bucket,
    key: row.key,
    versionId: row.versionId,
    compression: row.compression,
    sseKey,
    keyDerivation: catalog.backupKeyDerivation(row.id) ?? KEY_DERIVATION,
    createdAt: new Date(row.createdAt),
    size: row.size,
    ...(row.sha256 !== null ? { sha256: row.sha256 } : {}),
    manifest:
      row.manifestKey !== null && row.manifestVersionId !== null
        ? { key: row.manifestKey, versionId: row.manifestVersionId }
        : null,
  };
}

export interface FromBucketOptions {
  /** The current time (tests move it); default the system clock. */
  now?: Date;
  /** One line per version left out for looking planted (see selectFromBucket). */
  onWarning?: (message: string) => void;
  /**
   * The command's one listing of the job's prefix (src/flows/browse.ts
   * listJob), also read for the chain and the manifest; listed here when absent.
   */
  listing?: Listing;
}

/**
 * Without the catalog: lists the job's versions under its prefix and derives
 * the key from the master key. Delete markers and versions whose key immutd
 * did not make are ignored; a newer version or delete marker on a key does not
 * hide an older version, because each version is addressed by its own ID.
 * Keys dated after now (beyond the allowed clock skew) cannot be immutd's own
 * and would otherwise always win as "newest": they are skipped with a warning,
 * unless --version-id names one of their versions explicitly.
 */
export async function selectFromBucket(
  reader: ObjectStore,
  config: Config,
  target: Target,
  job: JobConfig,
  host: string,
  sel: Selector,
  opts: FromBucketOptions = {},
): Promise<RestoreSource> {
  if (sel.id !== undefined)
    throw new UsageError("--id names a catalog entry; with --from-bucket use --at or --version-id");
  const prefix = jobPrefix(target.prefix, host, job.name);
  const listing = opts.listing ?? (await listScope(reader, target.prefix, { host, job: job.name }));
  if (listing.under !== prefix) throw new Error(`listing of ${listing.under} given for ${prefix}`);
  const versions = listing.versions
    .filter((v) => !v.deleteMarker)
    .map((v) => ({ v, parsed: parseObjectKey(v.key) }))
    .filter((x) => x.parsed !== undefined && x.v.key.slice(prefix.length).indexOf("/") < 0);
  let pick: (typeof versions)[number] | undefined;
  if (sel.versionId !== undefined) {
    pick = versions.find((x) => x.v.versionId === sel.versionId);
    if (!pick)
      throw new UsageError(`no version ${sel.versionId} under s3://${target.bucket}/${prefix}`);
  } else {
    const created = (x: (typeof versions)[number]) => x.parsed?.createdAt.getTime() ?? 0;
    const now = opts.now ?? new Date();
    const plausible = versions.filter((x) => {
      if (x.parsed === undefined || !isDatedInFuture(x.parsed.createdAt, now)) return true;
      opts.onWarning?.(
        `s3://${target.bucket}/${x.v.key} version ${x.v.versionId} skipped: its key is dated ${x.parsed.createdAt.toISOString()}, after now (${now.toISOString()}); immutd never dates a key in the future, so someone with write access planted it`,
      );
      return false;
    });
    const eligible = plausible.filter((x) => !sel.at || created(x) <= sel.at.getTime());
    eligible.sort(
      (a, b) => created(a) - created(b) || a.v.lastModified.getTime() - b.v.lastModified.getTime(),
    );
    pick = eligible.at(-1);
    if (!pick) {
      throw new UsageError(
        `no backup of job ${job.name} under s3://${target.bucket}/${prefix}${sel.at ? ` created at or before ${sel.at.toISOString()}` : ""} (is host "${host}" right? see --host)`,
      );
    }
  }
  // Without the catalog the backup's own manifest says its scheme (readable
  // without an identity: only its file index is sealed), so a backup made
  // before the job switched schemes is still decrypted the way it was made;
  // the scheme configured now is used only for a backup without a manifest.
  const tc = config.targets?.[job.target];
  const configured = tc ? encryptionOf(job, tc).scheme : "sse-c";
  const scheme =
    (await manifestScheme(reader, config, target, listing, pick.v, configured, opts)) ?? configured;
  return {
    job: job.name,
    bucket: target.bucket,
    key: pick.v.key,
    versionId: pick.v.versionId,
    compression: pick.parsed?.compression ?? "none",
    sseKey: sseKeyFor(config.masterKey.reveal(), target.bucket, pick.v.key, scheme),
    keyDerivation: keyDerivationOf(scheme),
    createdAt: pick.parsed?.createdAt ?? pick.v.lastModified,
    size: pick.v.size,
  };
}

/**
 * The scheme the manifest of archive version `v` records; undefined when it
 * has none (immutd 0.1.0, or versions tied at its key) or one that does not
 * describe `v` (said through onWarning).
 */
async function manifestScheme(
  reader: ObjectStore,
  config: Config,
  target: Target,
  listing: Listing,
  v: { key: string; versionId: string },
  configured: EncryptionScheme,
  opts: FromBucketOptions,
): Promise<EncryptionScheme | undefined> {
  const m = readListing(listing).manifests.find((x) => x.archiveKey === v.key);
  if (!m || m.tied.length) return undefined;
  const where = `manifest s3://${target.bucket}/${m.key} version ${m.version.versionId}`;
  try {
    const doc = await readManifest(
      reader,
      target.bucket,
      config.masterKey.reveal(),
      { ...m, versionId: m.version.versionId },
      { scheme: configured },
    );
    const scheme = schemeOf(doc.encryption.keyDerivation);
    if (doc.archive.versionId !== v.versionId || scheme !== doc.encryption.scheme) {
      opts.onWarning?.(
        `${where} does not describe version ${v.versionId} in a way this immutd knows: decrypting as configured (${configured})`,
      );
      return undefined;
    }
    return scheme;
  } catch (err) {
    // One that cannot be used leaves the configured scheme, as for a backup without one;
    // a request that keeps failing (5xx, network) fails the restore instead.
    const unusable =
      err instanceof ManifestError || (err instanceof StorageError && !err.transient);
    if (!unusable) throw err;
    const why = err instanceof ManifestError ? err.detail : describeError(err);
    opts.onWarning?.(`${where} is not used (${why}): decrypting as configured (${configured})`);
    return undefined;
  }
}

export type RestoreMode =
  | { kind: "extract"; dest: string; overwrite: boolean; devices: boolean; owners?: boolean }
  | { kind: "list"; onEntry: (e: TarEntryInfo) => void }
  | { kind: "raw"; out: NodeJS.WritableStream };

export interface RestoreOptions extends DownloadOptions {
  include?: readonly string[];
  /** For an age-encrypted backup: the identities to decrypt it with. */
  identities?: readonly AgeIdentity[];
  onWarning?: (w: ExtractWarning) => void;
  onProgress?: (p: { bytes: number; files: number }) => void;
}

export interface RestoreSummary {
  source: RestoreSource;
  /** Archive bytes downloaded. */
  bytes: number;
  sha256: string;
  result?: ExtractResult;
  listed?: number;
  durationMs: number;
}

/**
 * The whole-archive restore: source (download) → hash and count → codec
 * (pipeline/codec.ts decoderFor) → tar reader → extractor, lister or raw output; then the size
 * and SHA-256 over every byte.
 */
export async function restore(
  reader: ObjectStore,
  src: RestoreSource,
  mode: RestoreMode,
  opts: RestoreOptions & Pick<ExtractOptions, "onHeader"> = {},
): Promise<RestoreSummary> {
  const started = Date.now();
  const where = whereOf(src);
  // Before any request: an age backup without an identity cannot be read.
  const decrypt = decryptStages(src.keyDerivation ?? KEY_DERIVATION, opts.identities, where);
  const body = await download(reader, src, opts);
  let files = 0;
  const hasher = new HashingCounter((n) => opts.onProgress?.({ bytes: n, files }));
  // The hash is over the stored bytes (the age file), as the backup recorded it.
  const decode = [...decrypt, ...decoderFor(src.compression)];

  let out: TarOutcome = {};
  let failure: unknown;
  try {
    if (mode.kind === "raw") {
      await pipeline([body, hasher, ...decrypt, mode.out]);
    } else {
      // The tar reader consumes its input to the very end, so the hash covers every byte.
      const piping = pipeline([body, hasher, ...decode]).catch((e: unknown) => {
        failure ??= e;
      });
      out = await readTar(decode.at(-1) ?? hasher, mode, opts, (n) => {
        files = n;
      });
      await piping;
    }
  } catch (err) {
    failure ??= err;
  }
  const incomplete = incompleteText(mode);
  if (failure !== undefined) throw failed(where, failure, incomplete, opts.signal);
  if (src.size !== undefined && hasher.bytes !== src.size) {
    throw new RestoreError(
      `${where}: received ${hasher.bytes} bytes, but the backup has ${src.size}; the download was truncated.${incomplete}`,
    );
  }
  const sha256 = hasher.digest();
  if (src.sha256 !== undefined && sha256 !== src.sha256) {
    throw new RestoreError(
      `${where}: SHA-256 ${sha256} differs from the catalog's ${src.sha256}: the data is not what was backed up.${incomplete}`,
    );
  }
  checkComplete(where, mode, out);
  return {
    source: src,
    bytes: hasher.bytes,
    sha256,
    ...(out.result ? { result: out.result } : {}),
    ...(out.listing !== undefined ? { listed: out.listing.listed } : {}),
    durationMs: Date.now() - started,
  };
}

export interface TarOutcome {
  result?: ExtractResult;
  listing?: ListResult;
}

/** The tar reader and its consumer: extraction below mode.dest, or a listing. */
export async function readTar(
  tar: NodeJS.ReadableStream,
  mode: Exclude<RestoreMode, { kind: "raw" }>,
  opts: RestoreOptions & Pick<ExtractOptions, "onHeader">,
  onFiles: (files: number) => void,
): Promise<TarOutcome> {
  if (mode.kind === "list") return { listing: await listTar(tar, mode.onEntry, opts.include) };
  const result = await extractTar(tar, {
    dest: mode.dest,
    overwrite: mode.overwrite,
    devices: mode.devices,
    ...(mode.owners !== undefined ? { owners: mode.owners } : {}),
    ...(opts.include ? { include: opts.include } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    ...(opts.onHeader ? { onHeader: opts.onHeader } : {}),
    onProgress: (p) => onFiles(p.files),
  });
  return { result };
}

/** What an error message adds when files may already be in the destination. */
export function incompleteText(mode: RestoreMode): string {
  return mode.kind === "extract"
    ? " The restore is incomplete: files already written were left in place."
    : "";
}

/** The error for a restore whose stream failed: the abort reason, or one RestoreError line. */
export function failed(
  where: string,
  failure: unknown,
  incomplete: string,
  signal?: AbortSignal,
): unknown {
  if (signal?.aborted) return signal.reason;
  if (failure instanceof RestoreError) return failure;
  // A wrong identity or a forged header fails before the first byte reaches the tar reader.
  if (failure instanceof AgeError)
    return /no identity given matches/.test(failure.message)
      ? new AgeError(`${failure.message}; nothing was restored`)
      : new AgeError(`${failure.message}.${incomplete}`);
  return new RestoreError(
    `restore of ${where} failed: ${(failure as Error).message ?? String(failure)}.${incomplete}`,
    { cause: failure },
  );
}

/** Throws when entries were refused, skipped or include patterns matched nothing. */
export function checkComplete(where: string, mode: RestoreMode, out: TarOutcome): void {
  const missing = incompleteness(out.result, out.listing);
  if (missing.length > 0) {
    const rest = mode.kind === "extract" ? " Everything else was restored." : "";
    throw new RestoreError(`${where}: ${missing.join("; ")}.${rest}`);
  }
}

/**
 * Why a restore that read its whole stream is still incomplete: entries refused
 * as unsafe, entries that could not be written, include patterns that matched
 * nothing (tar's "Not found in archive"). Empty when nothing is missing.
 */
function incompleteness(result?: ExtractResult, listing?: ListResult): string[] {
  const missing: string[] = [];
  const entries = (n: number) => `${n} archive entr${n === 1 ? "y was" : "ies were"}`;
  if (result && result.refused > 0) {
    missing.push(
      `${entries(result.refused)} refused as unsafe (absolute paths, '..' or paths through symlinks; see the warnings) and not written`,
    );
  }
  if (result && result.skipped > 0) {
    missing.push(
      `${entries(result.skipped)} not restored (see the warnings: e.g. a directory in the way, a name too long below DIR, an I/O error)`,
    );
  }
  const unmatched = result?.unmatched ?? listing?.unmatched ?? [];
  if (unmatched.length > 0) {
    const quoted = unmatched.map((p) => JSON.stringify(p)).join(", ");
    missing.push(
      `include pattern${unmatched.length === 1 ? "" : "s"} ${quoted} matched nothing: not found in archive`,
    );
  }
  return missing;
}
