/**
 * What a backup holds, from its manifest (src/repo/manifest.ts) instead of its
 * archive: the backups of a job with their manifest versions, and reading one
 * manifest through the local cache. `immutd ls`, `immutd find` and the ranged
 * `restore --include` (src/flows/ranged.ts) start here.
 *
 * Which manifest version is believed: the catalog's recorded one when the
 * catalog knows the backup, otherwise the oldest version at the manifest key
 * (src/repo/snapshots.ts: later ones were written by someone else). Either way the
 * manifest must name the archive version, size and SHA-256 the catalog
 * recorded, or, from the bucket, an archive version that exists with the size
 * it names.
 *
 * Cache: decrypted manifests are kept under `manifests/` beside the catalog
 * file (directory 0700, files 0600), one file per manifest version, never
 * stale because a version never changes. Deleting the directory only costs
 * downloads.
 */
import { dirname, join } from "node:path";
import type { Catalog } from "../catalog/catalog.js";
import type { EncryptionScheme } from "../config/config.js";
import { ImmutdError, UsageError } from "../errors.js";
import type { AgeIdentity } from "../repo/age-keys.js";
import { isSealed, openIndex } from "../repo/age-manifest.js";
import { type Manifest, manifestMismatch } from "../repo/manifest.js";
import {
  type Listing,
  listScope,
  placeOf,
  readListing,
  readManifest,
  schemeOption,
} from "../repo/snapshots.js";
import type { ObjectStore, VersionEntry } from "../store/store.js";

/** The manifest cache directory for a catalog file. */
export function manifestCacheDir(catalogPath: string): string {
  return join(dirname(catalogPath), "manifests");
}

/** One backup of a job as ls and find know it. */
export interface BackupRef {
  /** Catalog id, when the catalog knows the backup. */
  id?: number;
  job: string;
  createdAt: Date;
  archiveKey: string;
  /** The archive as the catalog recorded it; from the bucket only the manifest says. */
  archive?: { versionId: string; size: number; sha256: string | null };
  /** Null: the backup has no manifest (made by immutd 0.1.0, or its manifest could not be written). */
  manifest: { key: string; versionId: string } | null;
  /** The catalog's key_derivation, when the catalog knows the backup. */
  keyDerivation?: string;
}

/** Where to read manifests: the reader credential, the bucket, the master key and the cache. */
export interface ManifestSource {
  reader: ObjectStore;
  bucket: string;
  /** The target's key prefix. */
  prefix: string;
  masterKey: Buffer;
  cacheDir?: string;
  signal?: AbortSignal;
  /** The job's configured scheme: how a manifest the catalog does not know is read first. */
  scheme?: EncryptionScheme;
  /** The age identities that open an age backup's file index (src/repo/age-manifest.ts). */
  identities?: readonly AgeIdentity[];
}

/** The catalog's backups of `job` in `bucket`, oldest first; empty when it has none. */
export function backupsFromCatalog(catalog: Catalog, job: string, bucket: string): BackupRef[] {
  return catalog
    .listBackups({ job })
    .filter((r) => r.bucket === bucket && r.status !== "missing")
    .map((r) => ({
      id: r.id,
      job: r.job,
      createdAt: new Date(r.createdAt),
      archiveKey: r.key,
      archive: { versionId: r.versionId, size: r.size, sha256: r.sha256 },
      manifest:
        r.manifestKey !== null && r.manifestVersionId !== null
          ? { key: r.manifestKey, versionId: r.manifestVersionId }
          : null,
      ...keyDerivationOf(catalog.backupKeyDerivation(r.id)),
    }));
}

/**
 * Lists the job's prefix once (every page, delete markers included): the one
 * listing a command without the catalog reads its backups (backupsOf), the
 * archive versions to check their manifests against (archivesOf) and, for a
 * restore, the version to restore from.
 */
export function listJob(src: ManifestSource, host: string, job: string): Promise<Listing> {
  return listScope(src.reader, src.prefix, { host, job }, src.signal);
}

/** The backups in a job's listing that have a manifest, oldest first. */
export function backupsOf(l: Listing): BackupRef[] {
  return readListing(l)
    .manifests.map((m) => ({
      job: m.job,
      createdAt: m.createdAt,
      archiveKey: m.archiveKey,
      // Versions stored at the same moment cannot be told apart (src/repo/snapshots.ts):
      // none is believed, so the backup is treated as one without a manifest.
      manifest: m.tied.length ? null : { key: m.key, versionId: m.version.versionId },
    }))
    .reverse();
}

/** The backups of `job` on `host` that have a manifest in the bucket, oldest first (one listing). */
export async function backupsFromBucket(
  src: ManifestSource,
  host: string,
  job: string,
): Promise<BackupRef[]> {
  return backupsOf(await listJob(src, host, job));
}

/**
 * The manifest of one backup, checked against what is known of its archive:
 * the catalog's row, or else `archives` (the bucket's versions under the job
 * prefix: archivesOf of listJob), in which the version it names must exist with
 * its size. Throws one line naming the manifest when it does not fit.
 */
export async function manifestOf(
  src: ManifestSource,
  b: BackupRef & { manifest: NonNullable<BackupRef["manifest"]> },
  archives?: ReadonlyMap<string, VersionEntry>,
  /** Return an age-sealed manifest as it is (its `files` empty) instead of opening its index. */
  o: { keepSealed?: boolean } = {},
): Promise<Manifest> {
  const where = `manifest s3://${src.bucket}/${b.manifest.key} version ${b.manifest.versionId}`;
  const place = placeOf(src.prefix, b.manifest.key);
  if (!place || place.archiveKey !== b.archiveKey)
    throw new ImmutdError(`${where} is not where immutd puts the manifest of ${b.archiveKey}`);
  // Without the catalog, only the first version at the archive key is immutd's.
  let archiveFirst: VersionEntry | undefined;
  for (const v of archives?.values() ?? [])
    if (v.key === b.archiveKey && !(archiveFirst && archiveFirst.lastModified <= v.lastModified))
      archiveFirst = v;
  const m = await readManifest(
    src.reader,
    src.bucket,
    src.masterKey,
    {
      ...place,
      key: b.manifest.key,
      versionId: b.manifest.versionId,
      ...(!b.archive && archiveFirst ? { archiveFirst } : {}),
    },
    {
      ...(src.cacheDir ? { cacheDir: src.cacheDir } : {}),
      ...(src.signal ? { signal: src.signal } : {}),
      ...schemeOption(b.keyDerivation, src.scheme),
    },
  );
  let wrong: string | undefined;
  if (b.archive) wrong = manifestMismatch(m, { key: b.archiveKey, ...b.archive });
  else if (archives) {
    const v = archives.get(m.archive.versionId);
    if (!v || v.key !== b.archiveKey || v.deleteMarker)
      wrong = `it names archive version ${m.archive.versionId}, which does not exist`;
    else if (v.size !== m.archive.size)
      wrong = `it gives ${m.archive.size} bytes, but the archive version has ${v.size}`;
  }
  if (wrong) throw new ImmutdError(`${where} does not describe the backup: ${wrong}`);
  if (!isSealed(m) || o.keepSealed) return m;
  if (!src.identities?.length)
    throw new UsageError(
      `${where}: the file index of this age-encrypted backup is encrypted too: give --identity FILE (the age identity of one of its recipients) or set encryption.identityFile`,
    );
  return openIndex(m, src.identities, where);
}

function keyDerivationOf(d: string | undefined): { keyDerivation?: string } {
  return d === undefined ? {} : { keyDerivation: d };
}
