/**
 * Restoring a point of a chain (src/repo/chain.ts): the point's manifest holds
 * its complete index, each entry naming the member whose archive holds it.
 * The members are streamed once each, the full first, and from each only the
 * entries the point takes from it are written (one extraction session,
 * src/pipeline/extract.ts openExtractSession), so what the point's index does
 * not hold — deleted files, the old name of a renamed one, the file a
 * directory replaced — is never written. A member the point takes nothing
 * from (with `--include`, most of them) is not downloaded at all.
 *
 * Every member streamed is checked as a whole backup is: its size, and its
 * SHA-256 against the catalog's or the chain's record. Which members a point
 * needs comes from the catalog (parent links) or, without it, from the
 * point's manifest, checked against each member's own manifest
 * (chainMismatch): a forged manifest claiming another parent is refused.
 */
import { pipeline } from "node:stream/promises";
import type { Catalog } from "../catalog/catalog.js";
import { describeError, StorageError } from "../errors.js";
import { decoderFor } from "../pipeline/codec.js";
import { download, RestoreError, whereOf } from "../pipeline/download.js";
import {
  compileIncludes,
  type ExtractResult,
  listTar,
  openExtractSession,
} from "../pipeline/extract.js";
import { displayName } from "../pipeline/file-names.js";
import { HashingCounter } from "../pipeline/hash.js";
import { chainMismatch, namesByMember } from "../repo/chain.js";
import { deriveSseKey } from "../repo/keys.js";
import { fileName, INCREMENTAL_FORMAT, type Manifest } from "../repo/manifest.js";
import { manifestKey } from "../repo/naming.js";
import { archivesOf, type Listing, readListing } from "../repo/snapshots.js";
import type { ObjectStore } from "../store/store.js";
import { type BackupRef, backupsOf, type ManifestSource, manifestOf } from "./browse.js";
import {
  checkComplete,
  failed,
  incompleteText,
  type RestoreMode,
  type RestoreOptions,
  type RestoreSource,
  type RestoreSummary,
  sourceOfRow,
} from "./restore.js";

/** A restore point of a chain and what it needs. */
export interface ChainSource {
  /** Every member, the full first and the point itself last. */
  members: RestoreSource[];
  /** The point's manifest (format 3). */
  manifest: Manifest;
}

export interface ChainSummary extends RestoreSummary {
  /** Members downloaded, of how many the chain has. */
  streamed: number;
  members: number;
}

/**
 * The chain of a catalog backup, or undefined for a full backup. Throws a
 * RestoreError naming the member when one is gone from the catalog's view
 * (missing, corrupt) or the point's manifest disagrees with the catalog.
 */
export async function chainFromCatalog(
  catalog: Catalog,
  point: RestoreSource,
  ms: ManifestSource,
): Promise<ChainSource | undefined> {
  if (point.id === undefined) return undefined;
  let row = catalog.backup(point.id);
  if (!row || row.parentId === null) return undefined;
  const rows = [row];
  const seen = new Set([row.id]);
  while (row.parentId !== null) {
    const parent = catalog.backup(row.parentId);
    if (!parent || seen.has(parent.id))
      throw new RestoreError(
        `${whereOf(point)}: its chain is broken: backup ${row.parentId}, which it builds on, is not in the catalog`,
      );
    seen.add(parent.id);
    rows.unshift(parent);
    row = parent;
  }
  for (const r of rows) {
    if (r.status === "missing" || r.status === "corrupt")
      throw new RestoreError(
        `${whereOf(point)} cannot be restored: it builds on chain member s3://${r.bucket}/${r.key} version ${r.versionId} (backup ${r.id}), which is ${r.status}; restore an earlier point or a full backup (immutd list shows the chains)`,
      );
  }
  if (!point.manifest)
    throw new RestoreError(
      `${whereOf(point)} is an incremental backup without a manifest: it cannot be restored`,
    );
  const ref: BackupRef = {
    id: point.id,
    job: point.job,
    createdAt: point.createdAt,
    archiveKey: point.key,
    archive: { versionId: point.versionId, size: point.size ?? 0, sha256: point.sha256 ?? null },
    manifest: point.manifest,
  };
  const m = await manifestOf(ms, { ...ref, manifest: point.manifest });
  const chain = m.chain ?? [];
  const before = rows.slice(0, -1);
  if (
    m.formatVersion !== INCREMENTAL_FORMAT ||
    chain.length !== before.length ||
    chain.some((c, i) => c.key !== before[i]?.key || c.versionId !== before[i]?.versionId)
  )
    throw new RestoreError(
      `${whereOf(point)}: its manifest names another chain than the catalog records; it is not restored`,
    );
  return { members: rows.map((r) => sourceOfRow(catalog, r)), manifest: m };
}

/**
 * The chain of a backup found in the bucket, or undefined for a full backup
 * (or one without a manifest): every member's manifest is read and the chain
 * checked (chainMismatch). `point.sha256` is taken from its manifest.
 * `listing` is the command's one listing of the job's prefix (listJob): the
 * manifests and archive versions are all read from it.
 */
export async function chainFromBucket(
  ms: ManifestSource,
  point: RestoreSource,
  listing: Listing,
): Promise<ChainSource | undefined> {
  const ref = backupsOf(listing).find((b) => b.archiveKey === point.key);
  if (!ref?.manifest) return undefined;
  const archives = archivesOf(listing);
  let m: Manifest;
  try {
    // Only its format and chain are read here: a sealed (age) manifest is never an incremental.
    m = await manifestOf(ms, { ...ref, manifest: ref.manifest }, archives, { keepSealed: true });
  } catch (err) {
    // The request failed (a wrong master key, the network): the archive's own
    // download reports it as a restore does. A manifest that was read but is not
    // believed may hide an incremental: restoring its archive as the whole tree
    // would silently leave out everything it did not change.
    if (err instanceof StorageError) return undefined;
    throw new RestoreError(
      `${whereOf(point)}: its manifest cannot be used (${describeError(err)}), so whether it is an incremental backup that needs earlier members is not known; it is not restored (--stdout writes its archive alone)`,
    );
  }
  if (m.archive.versionId !== point.versionId || m.formatVersion !== INCREMENTAL_FORMAT)
    return undefined;
  const listed = new Map(readListing(listing).manifests.map((k) => [k.key, k]));
  const members: Manifest[] = [];
  for (const c of m.chain ?? []) {
    const key = manifestKey(c.key);
    const k = listed.get(key);
    if (!k || k.tied.length > 0 || k.version.versionId !== c.manifestVersionId)
      throw new RestoreError(
        `${whereOf(point)}: chain member ${c.key} has no manifest version ${c.manifestVersionId} that immutd wrote (the first at its key); the chain cannot be trusted and is not restored`,
      );
    members.push(
      await manifestOf(
        ms,
        {
          job: point.job,
          createdAt: k.createdAt,
          archiveKey: c.key,
          manifest: { key, versionId: c.manifestVersionId },
        },
        archives,
      ),
    );
  }
  const wrong = chainMismatch(m, members);
  if (wrong)
    throw new RestoreError(
      `${whereOf(point)}: its manifest's chain does not hold: ${wrong}; it is not restored`,
    );
  const sources: RestoreSource[] = (m.chain ?? []).map((c) => ({
    job: point.job,
    bucket: point.bucket,
    key: c.key,
    versionId: c.versionId,
    compression: c.compression,
    sseKey: deriveSseKey(ms.masterKey, point.bucket, c.key),
    createdAt: new Date(c.createdAt),
    size: c.size,
    sha256: c.sha256,
  }));
  sources.push({ ...point, sha256: m.archive.sha256, size: m.archive.size });
  return { members: sources, manifest: m };
}

/** Restores (or lists) a chain's point: each member that holds a selected entry, streamed once, in order. */
export async function restoreChain(
  reader: ObjectStore,
  c: ChainSource,
  mode: Exclude<RestoreMode, { kind: "raw" }>,
  opts: RestoreOptions = {},
): Promise<ChainSummary> {
  const started = Date.now();
  const point = c.members.at(-1) as RestoreSource;
  const where = whereOf(point);
  const select = opts.include ? compileIncludes(opts.include) : () => true;
  const names = namesByMember(c.manifest, select);
  if (names.length !== c.members.length)
    throw new RestoreError(
      `${where}: its manifest names ${names.length} members, the chain has ${c.members.length}`,
    );
  let files = 0;
  let bytes = 0;
  let listed = 0;
  let streamed = 0;
  let sha256 = "";
  let failure: unknown;
  const session =
    mode.kind === "extract"
      ? await openExtractSession({
          dest: mode.dest,
          overwrite: mode.overwrite,
          devices: mode.devices,
          ...(mode.owners !== undefined ? { owners: mode.owners } : {}),
          ...(opts.include ? { include: opts.include } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
          onProgress: (p) => {
            files = p.files;
          },
        })
      : undefined;
  const incomplete = incompleteText(mode);
  for (let k = 0; k < c.members.length && failure === undefined; k++) {
    const keep = names[k] as Set<string>;
    if (keep.size === 0) continue;
    const src = c.members[k] as RestoreSource;
    const before = bytes;
    const hasher = new HashingCounter((n) => opts.onProgress?.({ bytes: before + n, files }));
    try {
      const body = await download(reader, src, opts);
      const decode = decoderFor(src.compression);
      const piping = pipeline([body, hasher, ...decode]).catch((e: unknown) => {
        failure ??= e;
      });
      const tar = (decode.at(-1) ?? hasher) as NodeJS.ReadableStream;
      const seen = new Set<string>();
      const filter = (name: string) => {
        if (!keep.has(name)) return false;
        seen.add(name);
        return true;
      };
      if (session) await session.add(tar, filter);
      else if (mode.kind === "list")
        listed += (await listTar(tar, mode.onEntry, undefined, filter)).listed;
      await piping;
      // The point's index said this member holds these entries: one it lacks
      // would be missing from the restore without a word.
      if (failure === undefined && seen.size < keep.size) {
        const lacking = [...keep].find((n) => !seen.has(n)) ?? "";
        failure = new RestoreError(
          `${whereOf(src)} lacks ${keep.size - seen.size} of the entries the point's manifest says it holds (first: ${displayName(lacking)}): the manifest does not match the chain.${incompleteText(mode)}`,
        );
      }
    } catch (err) {
      failure ??= err;
    }
    streamed++;
    bytes += hasher.bytes;
    if (failure !== undefined) break;
    const what = whereOf(src);
    if (src.size !== undefined && hasher.bytes !== src.size)
      failure = new RestoreError(
        `${what}: received ${hasher.bytes} bytes, but the backup has ${src.size}; the download was truncated.${incomplete}`,
      );
    const digest = hasher.digest();
    if (failure === undefined && src.sha256 !== undefined && digest !== src.sha256)
      failure = new RestoreError(
        `${what}: SHA-256 ${digest} differs from the recorded ${src.sha256}: the data is not what was backed up.${incomplete}`,
      );
    if (k === c.members.length - 1) sha256 = digest;
  }
  let result: ExtractResult | undefined;
  try {
    if (session) result = await session.finish();
  } catch (err) {
    failure ??= err;
  }
  if (failure !== undefined) throw failed(where, failure, incomplete, opts.signal);
  const unmatched = mode.kind === "list" ? unmatchedIn(c.manifest, opts.include) : [];
  checkComplete(where, mode, {
    ...(result ? { result } : {}),
    ...(mode.kind === "list" ? { listing: { listed, unmatched } } : {}),
  });
  return {
    source: point,
    bytes,
    sha256,
    ...(result ? { result } : {}),
    ...(mode.kind === "list" ? { listed } : {}),
    durationMs: Date.now() - started,
    streamed,
    members: c.members.length,
  };
}

/** Include patterns that select no entry of the point's index. */
function unmatchedIn(m: Manifest, include: readonly string[] | undefined): string[] {
  if (!include) return [];
  const names = m.files.map(fileName);
  return include.filter((p) => {
    const sel = compileIncludes([p]);
    return !names.some((n) => sel(n));
  });
}
