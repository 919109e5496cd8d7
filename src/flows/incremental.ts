/**
 * The chain steps of a backup run (src/flows/backup.ts calls them): before the
 * upload, decide full or incremental (src/repo/chain.ts) and check what the
 * catalog cannot know — the parent's manifest is there and is the one
 * recorded, every member's archive version exists with its size, and every
 * member's lock can be extended; after the new member is locked, extend every
 * earlier member (archive and manifest) to its retain-until. Each failed check
 * makes the run a full backup, logged with the reason; nothing is deleted.
 *
 * Extend only: lockAtLeast (src/retention/lock.ts) never asks for less than
 * the server reports, and COMPLIANCE cannot be shortened anyway.
 */
import type { BackupRow, Catalog } from "../catalog/catalog.js";
import type { JobConfig, TargetConfig } from "../config/config.js";
import { describeError } from "../errors.js";
import { type ChangePlan, planChanges } from "../pipeline/changes.js";
import {
  type ChainNode,
  decideChain,
  membersAfter,
  parentUnfit,
  walkFingerprint,
} from "../repo/chain.js";
import { deriveSseKey } from "../repo/keys.js";
import {
  type ChainMember,
  type IndexWriter,
  type Manifest,
  manifestMismatch,
} from "../repo/manifest.js";
import { parseObjectKey } from "../repo/naming.js";
import { isGone, readManifest, schemeOption } from "../repo/snapshots.js";
import { configuredLock } from "../retention/bucket-check.js";
import { lockAtLeast } from "../retention/lock.js";
import { RetryPolicy, retry } from "../store/retry.js";
import type { Retention, Target } from "../store/store.js";
import { manifestCacheDir } from "./browse.js";

/** How long a run may take before the members' locks, extended before its upload, must be extended again after it. */
const PROBE_MARGIN_MS = 60 * 60_000;

export interface ChainStep {
  kind: "full" | "incremental";
  /** Why a full backup (logged); undefined for an incremental. */
  reason?: string;
  walk: string;
  /** Incremental only. */
  parentRow?: BackupRow;
  /** Every earlier member, the full first, the parent last (incremental only). */
  members?: BackupRow[];
  /** The members as the new manifest names them. */
  chain?: ChainMember[];
  plan?: ChangePlan;
}

export interface ChainDeps {
  catalog: Catalog;
  target: Target;
  targetConfig: TargetConfig;
  masterKey: Buffer;
  host: string;
  now: Date;
}

/** Full or incremental for this run, with the planner for an incremental (see the module comment). */
export async function chainStep(
  job: JobConfig,
  walkOf: {
    paths: readonly string[];
    exclude?: readonly string[];
    oneFileSystem?: boolean;
    excludeIfPresent?: readonly string[];
  },
  index: IndexWriter,
  d: ChainDeps,
): Promise<ChainStep> {
  const walk = walkFingerprint(walkOf);
  const rows = d.catalog
    .listBackups({ job: job.name })
    .filter((r) => r.bucket === d.target.bucket && r.target === d.target.name);
  const byId = new Map<number, ChainNode>(rows.map((r) => [r.id, r]));
  // The newest backup with a manifest: one crash recovery found (no manifest,
  // content unknown until verify --deep) is never built on.
  const decision = decideChain({
    incremental: job.incremental,
    previous: rows.filter((r) => r.manifestVersionId !== null).at(-1),
    byId,
    now: d.now,
  });
  if (decision.kind === "full") return { kind: "full", reason: decision.reason, walk };
  const rowOf = new Map(rows.map((r) => [r.id, r]));
  const members = decision.members.map((n) => rowOf.get(n.id) as BackupRow);
  const parentRow = members.at(-1) as BackupRow;
  const full = (reason: string): ChainStep => ({ kind: "full", reason, walk });

  let parent: Manifest;
  try {
    parent = await parentManifest(parentRow, job, d);
  } catch (err) {
    return full(describeError(err));
  }
  const unfit = parentUnfit(parent, walk);
  if (unfit) return full(unfit);
  const named = parent.chain ?? [];
  const before = members.slice(0, -1);
  if (
    named.length !== before.length ||
    named.some((c, i) => c.key !== before[i]?.key || c.versionId !== before[i]?.versionId)
  )
    return full(
      `the previous backup's manifest names another chain than the catalog records (backup ${parentRow.id})`,
    );
  const missing = await missingMember(members, d);
  if (missing) return full(missing);
  // Extended before anything is uploaded, so that a lock that cannot be
  // extended makes this run a full backup: to where the new member's lock will
  // reach if the run takes up to PROBE_MARGIN_MS (after it is locked, the
  // members are extended to exactly its retain-until, a no-op unless the run
  // took longer).
  const lockProblem = await extendMembers(
    members,
    configuredLock(new Date(d.now.getTime() + PROBE_MARGIN_MS), d.targetConfig.retention),
    d,
  );
  if (lockProblem)
    return full(`the lock of an earlier chain member cannot be extended: ${lockProblem}`);
  return {
    kind: "incremental",
    walk,
    parentRow,
    members,
    chain: membersAfter(parent, parentRow.manifestVersionId as string),
    plan: planChanges(parent, index),
  };
}

/** The parent's manifest, the version the catalog recorded and describing the archive recorded; throws the reason for a full. */
async function parentManifest(row: BackupRow, job: JobConfig, d: ChainDeps): Promise<Manifest> {
  const what = `the previous backup's manifest (backup ${row.id})`;
  if (row.manifestKey === null || row.manifestVersionId === null)
    throw new Error(`${what} was never written`);
  const createdAt = parseObjectKey(row.key)?.createdAt;
  if (!createdAt) throw new Error(`${what}: ${row.key} is not a key immutd makes`);
  let m: Manifest;
  try {
    m = await readManifest(
      d.target.reader,
      d.target.bucket,
      d.masterKey,
      {
        key: row.manifestKey,
        archiveKey: row.key,
        host: d.host,
        job: job.name,
        createdAt,
        versionId: row.manifestVersionId,
      },
      {
        cacheDir: manifestCacheDir(d.catalog.path),
        ...schemeOption(d.catalog.backupKeyDerivation(row.id), undefined),
      },
    );
  } catch (err) {
    if (isGone(err)) throw new Error(`${what} is missing (version ${row.manifestVersionId})`);
    throw new Error(`${what} is corrupt or unreadable: ${describeError(err)}`);
  }
  const wrong = manifestMismatch(m, row);
  if (wrong) throw new Error(`${what} is corrupt: ${wrong}`);
  return m;
}

/** The first member whose archive version is gone or has another size, as the reason for a full; it is marked missing or corrupt. */
async function missingMember(
  members: readonly BackupRow[],
  d: ChainDeps,
): Promise<string | undefined> {
  for (const m of members) {
    const sseKey = d.catalog.backupKey(m.id) ?? deriveSseKey(d.masterKey, m.bucket, m.key);
    try {
      const { size } = await retry(
        () => d.target.reader.head(m.key, m.versionId, sseKey),
        RetryPolicy.read,
      );
      if (size !== m.size) {
        d.catalog.setBackupStatus(m.id, "corrupt");
        return `chain member ${m.key} (backup ${m.id}) holds ${size} bytes, not ${m.size}`;
      }
    } catch (err) {
      if (isGone(err)) {
        d.catalog.setBackupStatus(m.id, "missing");
        return `chain member ${m.key} version ${m.versionId} (backup ${m.id}) is missing`;
      }
      return `chain member ${m.key} (backup ${m.id}) cannot be checked: ${describeError(err)}`;
    }
  }
  return undefined;
}

/**
 * Extends every member's archive and manifest to at least `wanted` (extend
 * only; `slackMs` as in lockAtLeast, default none: no earlier than asked),
 * recording each extension in the catalog. Returns the first problem as
 * a phrase; undefined when all are locked that long.
 */
export async function extendMembers(
  members: readonly BackupRow[],
  wanted: Retention,
  d: Pick<ChainDeps, "catalog" | "target" | "now">,
  slackMs = 0,
): Promise<string | undefined> {
  // Every member is tried: one that is gone must not leave the others short.
  const problems: string[] = [];
  for (const m of members) {
    const objects: [string, string, boolean][] = [[m.key, m.versionId, true]];
    if (m.manifestKey !== null && m.manifestVersionId !== null)
      objects.push([m.manifestKey, m.manifestVersionId, false]);
    for (const [key, versionId, isArchive] of objects) {
      const lock = await lockAtLeast(d.target, key, versionId, wanted, { now: d.now, slackMs });
      if (lock.problem || !lock.after) {
        problems.push(
          `s3://${d.target.bucket}/${key} version ${versionId}: ${lock.problem ?? "it has no retention"}`,
        );
        break;
      }
      if (isArchive && lock.changed)
        d.catalog.recordLockExtension({
          backupId: m.id,
          from: lock.before?.retainUntil ?? null,
          to: lock.after.retainUntil,
          mode: lock.after.mode,
          at: d.now,
        });
      else if (isArchive) d.catalog.adoptRetainUntil(m.id, lock.after.retainUntil, lock.after.mode);
    }
  }
  return problems.length ? problems.join("; ") : undefined;
}
