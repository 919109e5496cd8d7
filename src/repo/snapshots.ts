/**
 * Reading the bucket as a repository of backups, without the catalog: which
 * manifests exist under a target's prefix (for one host, one job, or all), and
 * what one manifest version says. `catalog rebuild`, `list --from-bucket`,
 * `ls`/`find` and `audit` all start here.
 *
 * The layout it reads is the one src/repo/naming.ts writes:
 * `<prefix><host>/<job>/<stamp>-<random>.tar[.gz].manifest.json.gz`.
 *
 * Trust: anyone holding the writer credential can add versions, at a manifest
 * key immutd used or at a new one. immutd writes exactly one version per
 * manifest key, right after its archive, so at a key with several versions the
 * oldest is immutd's and the later ones were written by someone else
 * (ManifestKey.extra); versions stored at the same moment as the oldest
 * (ManifestKey.tied) cannot be told apart, so none of them is believed. A manifest is believed only as far as its archive
 * version exists with the size it names; callers check that.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buffer } from "node:stream/consumers";
import type { EncryptionScheme } from "../config/config.js";
import { RefusedError, StorageError } from "../errors.js";
import { schemeOf } from "../pipeline/cipher.js";
import { RetryPolicy, retry, withSignal } from "../store/retry.js";
import type { ObjectStore, VersionEntry } from "../store/store.js";
import { deriveSseKey } from "./keys.js";
import { decodeManifest, type Manifest } from "./manifest.js";
import {
  isArchiveFileName,
  isDatedInFuture,
  MANIFEST_SUFFIX,
  NAME,
  parseObjectKey,
} from "./naming.js";

/** One manifest key found in the bucket, with the versions stored under it. */
export interface ManifestKey {
  key: string;
  /** The archive it belongs to: the key without MANIFEST_SUFFIX. */
  archiveKey: string;
  host: string;
  job: string;
  /** From the key's stamp; the manifest's own createdAt must agree. */
  createdAt: Date;
  /** The oldest version: the one immutd wrote. */
  version: VersionEntry;
  /**
   * Other versions stored at the very same time as the oldest (listings give
   * whole seconds on some servers): which one immutd wrote cannot be told, so
   * callers believe none of them.
   */
  tied: VersionEntry[];
  /** Later versions at the same key (not delete markers): written by someone else. */
  extra: VersionEntry[];
  /** The key's latest entry is a delete marker (the version itself is intact). */
  hidden: boolean;
  /**
   * The oldest version stored at archiveKey, in the same listing; undefined
   * when none is listed. immutd writes one version per archive key, so a
   * manifest naming any other version was written by someone else.
   */
  archiveFirst?: VersionEntry;
}

/**
 * A manifest key or archive key dated after now (plus the clock skew
 * allowed, src/repo/naming.ts): immutd names keys when a run starts, so
 * someone with write access planted it, typically to pose as the newest
 * backup. Listed so callers can report it; never believed.
 */
export interface PlantedKey {
  key: string;
  versionId: string;
  host: string;
  job: string;
  createdAt: Date;
}

export interface ManifestScope {
  host?: string;
  job?: string;
}

/**
 * The manifest keys under `prefix` (a target's prefix), newest backup first
 * within each host and job; sorted by host, job, then createdAt descending.
 * Lists with `store`'s credential (the reader's for every caller).
 */
export async function listManifests(
  store: ObjectStore,
  prefix: string,
  scope: ManifestScope = {},
  signal?: AbortSignal,
): Promise<ManifestKey[]> {
  return (await listBucket(store, prefix, scope, signal)).manifests;
}

/** An archive version with no manifest key beside it: a backup made before manifests (or whose manifest could not be written). */
export interface BareArchive {
  key: string;
  versionId: string;
  host: string;
  job: string;
}

/**
 * One listing of the versions under a scope of a target's prefix, delete
 * markers included (every page of ListObjectVersions). A command lists once
 * and reads everything it needs from it: the manifests (readListing), the
 * archive versions a manifest must name (archivesOf), the versions a restore
 * picks from. Listing again would cost a walk of every page per use, and two
 * listings of one command could disagree with each other.
 */
export interface Listing {
  /** The target's prefix. */
  prefix: string;
  scope: ManifestScope;
  /** What was listed: prefix, then host/ and job/ as far as scope gives them. */
  under: string;
  versions: readonly VersionEntry[];
}

/** Lists the versions under `scope` of `prefix` once, retried as a read (with `store`'s credential). */
export async function listScope(
  store: ObjectStore,
  prefix: string,
  scope: ManifestScope = {},
  signal?: AbortSignal,
): Promise<Listing> {
  let under = prefix;
  if (scope.host !== undefined) {
    under += `${scope.host}/`;
    if (scope.job !== undefined) under += `${scope.job}/`;
  }
  const versions = await retry(
    () => store.listVersions(under),
    withSignal(RetryPolicy.read, signal),
  );
  return { prefix, scope, under, versions };
}

/**
 * The stored versions (delete markers left out) of a listing by version ID:
 * what a manifest read without the catalog is checked against (its archive
 * version must be among them, with the size it names).
 */
export function archivesOf(l: Listing): Map<string, VersionEntry> {
  return new Map(l.versions.filter((v) => !v.deleteMarker).map((v) => [v.versionId, v]));
}

/**
 * listManifests, the archive versions in the same scope that have no manifest
 * key, and the keys dated in the future (left out of both). One listing.
 */
export async function listBucket(
  store: ObjectStore,
  prefix: string,
  scope: ManifestScope = {},
  signal?: AbortSignal,
  now: Date = new Date(),
): Promise<{ manifests: ManifestKey[]; bare: BareArchive[]; planted: PlantedKey[] }> {
  return readListing(await listScope(store, prefix, scope, signal), now);
}

/** listBucket's answer from a listing already made. */
export function readListing(
  l: Listing,
  now: Date = new Date(),
): { manifests: ManifestKey[]; bare: BareArchive[]; planted: PlantedKey[] } {
  const { prefix, scope, versions } = l;
  const byKey = new Map<string, VersionEntry[]>();
  const archives: VersionEntry[] = [];
  for (const v of versions) {
    if (!v.key.endsWith(MANIFEST_SUFFIX)) {
      if (!v.deleteMarker) archives.push(v);
      continue;
    }
    const list = byKey.get(v.key);
    if (list) list.push(v);
    else byKey.set(v.key, [v]);
  }
  const firstArchive = new Map<string, VersionEntry>();
  for (const v of archives) {
    const seen = firstArchive.get(v.key);
    if (!seen || v.lastModified.getTime() < seen.lastModified.getTime()) firstArchive.set(v.key, v);
  }
  const planted: PlantedKey[] = [];
  const manifests: ManifestKey[] = [];
  for (const [key, list] of byKey) {
    const place = placeOf(prefix, key);
    if (!place) continue;
    if (scope.job !== undefined && place.job !== scope.job) continue;
    if (isDatedInFuture(place.createdAt, now)) {
      for (const v of list)
        if (!v.deleteMarker) planted.push({ ...place, key, versionId: v.versionId });
      continue;
    }
    const stored = list
      .filter((v) => !v.deleteMarker)
      .sort((a, b) => a.lastModified.getTime() - b.lastModified.getTime());
    const [first, ...rest] = stored;
    if (!first) continue;
    const at = first.lastModified.getTime();
    const tied = rest.filter((v) => v.lastModified.getTime() === at);
    const extra = rest.filter((v) => v.lastModified.getTime() !== at);
    const latest = list.find((v) => v.isLatest);
    manifests.push({
      ...place,
      key,
      version: first,
      tied,
      extra,
      hidden: latest?.deleteMarker === true,
      ...(firstArchive.has(place.archiveKey)
        ? { archiveFirst: firstArchive.get(place.archiveKey) as VersionEntry }
        : {}),
    });
  }
  const bare: BareArchive[] = [];
  for (const v of archives) {
    if (byKey.has(`${v.key}${MANIFEST_SUFFIX}`)) continue;
    const place = placeOf(prefix, `${v.key}${MANIFEST_SUFFIX}`);
    if (!place || (scope.job !== undefined && place.job !== scope.job)) continue;
    if (isDatedInFuture(place.createdAt, now)) {
      planted.push({ ...place, key: v.key, versionId: v.versionId });
      continue;
    }
    bare.push({ key: v.key, versionId: v.versionId, host: place.host, job: place.job });
  }
  manifests.sort(
    (a, b) =>
      compare(a.host, b.host) ||
      compare(a.job, b.job) ||
      b.createdAt.getTime() - a.createdAt.getTime() ||
      compare(a.key, b.key),
  );
  return { manifests, bare, planted };
}

/** Host, job, archive key and stamp of a manifest key under prefix; undefined for anything else. */
export function placeOf(
  prefix: string,
  key: string,
): Pick<ManifestKey, "host" | "job" | "archiveKey" | "createdAt"> | undefined {
  if (!key.startsWith(prefix) || !key.endsWith(MANIFEST_SUFFIX)) return undefined;
  const archiveKey = key.slice(0, -MANIFEST_SUFFIX.length);
  const [host, job, file, ...more] = archiveKey.slice(prefix.length).split("/");
  const parsed = parseObjectKey(archiveKey);
  // Exactly <host>/<job>/<stamp>-<random>.tar…, with names the config accepts:
  // a key that is anything else was not written by immutd, and its segments
  // could carry control characters to a terminal.
  if (more.length || !parsed || host === undefined || job === undefined || file === undefined)
    return undefined;
  if (!NAME.test(host) || !NAME.test(job) || !isArchiveFileName(file)) return undefined;
  return { host, job, archiveKey, createdAt: parsed.createdAt };
}

export interface ReadManifestOptions {
  /**
   * A directory of decrypted manifests kept by version ID. A version's bytes
   * never change, so an entry is valid for ever; an entry that does not decode
   * is fetched again.
   */
  cacheDir?: string;
  signal?: AbortSignal;
  /**
   * The scheme the backup was made with, as far as the caller knows (the
   * catalog's key_derivation, else the job's configured scheme). For "age" the
   * manifest is read without an SSE-C key first, so an age-only target never
   * sees one; otherwise the key goes first. Either way the other way is tried
   * once when the server refuses the first (400, or 403 from a bucket policy
   * that blocks SSE-C as AWS allows).
   */
  scheme?: EncryptionScheme;
}

/**
 * The `scheme` option of readManifest: the one a catalog row's key_derivation
 * records, else the configured one; none when neither is known.
 */
export function schemeOption(
  keyDerivation: string | undefined,
  configured: EncryptionScheme | undefined,
): { scheme?: EncryptionScheme } {
  const scheme = (keyDerivation === undefined ? undefined : schemeOf(keyDerivation)) ?? configured;
  return scheme ? { scheme } : {};
}

/**
 * Fetches and decodes one manifest version (SSE-C key derived from the master
 * key on the manifest's key), and checks that it describes the archive its key
 * names and the host and job its key is under. Throws StorageError for the
 * request (404: the version is gone) and Error for a manifest that does not fit.
 */
export async function readManifest(
  store: ObjectStore,
  bucket: string,
  masterKey: Buffer,
  m: Pick<ManifestKey, "key" | "archiveKey" | "host" | "job" | "createdAt" | "archiveFirst"> & {
    versionId: string;
  },
  o: ReadManifestOptions = {},
): Promise<Manifest> {
  const cached = o.cacheDir ? cacheFile(o.cacheDir, bucket, m.key, m.versionId) : undefined;
  let manifest = cached ? fromCache(cached) : undefined;
  if (!manifest) {
    // Derived only when tried: an age-only config has no master key (deriveSseKey refuses it).
    const sseKey = () => deriveSseKey(masterKey, bucket, m.key);
    const signal = o.signal;
    const fetch = (k: Buffer | undefined) =>
      retry(
        async () => buffer(await store.get(m.key, m.versionId, k, signal ? { signal } : {})),
        withSignal(RetryPolicy.read, signal),
      );
    // The manifest of an age-only backup is stored without SSE-C: AWS refuses
    // the key for it (400), a bucket blocking SSE-C refuses it (403), and plain
    // http refuses to send one at all; an SSE-C manifest read without its key is 400.
    const age = o.scheme === "age";
    let body: Buffer;
    try {
      body = await fetch(age ? undefined : sseKey());
    } catch (err) {
      const refused =
        err instanceof RefusedError ||
        (err instanceof StorageError && (err.status === 400 || err.status === 403));
      // Without a master key there is no SSE-C try: the first error is the answer.
      if (!refused || (age && masterKey.length === 0)) throw err;
      body = await fetch(age ? sseKey() : undefined);
    }
    try {
      manifest = decodeManifest(body);
    } catch (err) {
      throw new ManifestError(
        "undecodable",
        `manifest s3://${bucket}/${m.key} version ${m.versionId}`,
        (err as Error).message,
      );
    }
    if (cached) toCache(cached, body);
  }
  const wrong = misplaced(manifest, m);
  if (wrong)
    throw new ManifestError(
      "misplaced",
      `manifest s3://${bucket}/${m.key} version ${m.versionId}`,
      wrong,
    );
  return manifest;
}

/**
 * A manifest version that was read but is not believed: it does not decode
 * (`undecodable`), or it decodes but does not belong at its key (`misplaced`).
 * `detail` is the reason alone, for callers that name the manifest themselves.
 */
export class ManifestError extends Error {
  constructor(
    readonly reason: "undecodable" | "misplaced",
    where: string,
    readonly detail: string,
  ) {
    super(reason === "undecodable" ? `${where}: ${detail}` : `${where} ${detail}`);
    this.name = "ManifestError";
  }
}

/** Why a manifest does not belong at its key, as a phrase; undefined when it does. */
function misplaced(
  doc: Manifest,
  m: Pick<ManifestKey, "archiveKey" | "host" | "job" | "createdAt" | "archiveFirst">,
): string | undefined {
  if (doc.archive.key !== m.archiveKey) return `names archive ${doc.archive.key}`;
  if (doc.host !== m.host) return `says host ${doc.host}, but is stored under host ${m.host}`;
  if (doc.job !== m.job) return `says job ${doc.job}, but is stored under job ${m.job}`;
  // The key is named at the run's start, to the second; the manifest records the same moment.
  const created = new Date(doc.createdAt).getTime();
  if (Math.floor(created / 1000) * 1000 !== m.createdAt.getTime())
    return `its createdAt ${doc.createdAt} is not the time in its key (${m.createdAt.toISOString()})`;
  const first = m.archiveFirst;
  if (first && doc.archive.versionId !== first.versionId)
    return `names archive version ${doc.archive.versionId}, but the first version at its archive key is ${first.versionId}: immutd writes one version per key, so someone with write access wrote the one it names`;
  return undefined;
}

/** True when err says the version does not exist (any more). */
export function isGone(err: unknown): boolean {
  return err instanceof StorageError && err.status === 404;
}

function cacheFile(dir: string, bucket: string, key: string, versionId: string): string {
  const id = createHash("sha256").update(`${bucket}\0${key}\0${versionId}`).digest("hex");
  return join(dir, `${id}.json.gz`);
}

function fromCache(file: string): Manifest | undefined {
  try {
    return decodeManifest(readFileSync(file));
  } catch {
    return undefined;
  }
}

/** Written to a temporary name and renamed, so a crash leaves no half entry. A full disk only loses the cache. */
function toCache(file: string, body: Buffer): void {
  try {
    // Not recursive: the cache sits beside the catalog, whose directory exists
    // wherever caching is worth it; and Node's recursive mkdir never returns
    // under /proc (ENOENT on a parent that exists, retried for ever).
    try {
      mkdirSync(join(file, ".."), { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, body, { mode: 0o600 });
    renameSync(tmp, file);
  } catch {
    // The cache is an optimisation; the manifest was read all the same.
  }
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
