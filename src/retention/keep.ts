/**
 * The extend-only executor of a keep policy: given a job's catalog backups,
 * decide (src/retention/tiers.ts, pure) and then do, for one version at a time,
 * what its tiers ask: lock it until its hold ends (src/retention/lock.ts, never
 * shorter) and tag it with immutd-keep=<hold> so that the lifecycle rules
 * (src/retention/lifecycle.ts) expire it once the hold has passed.
 *
 * Used by a new backup (its archive and manifest) and by verify, which
 * promotes backups that should stand for a tier they were not given. The
 * writer tags (Ceph RGW's write-only subuser may); the admin credential only
 * where the writer is refused. A failed tag is reported, never fatal: an
 * untagged backup matches no expiry rule, so it is kept, not lost.
 */
import type { BackupRow, Catalog } from "../catalog/catalog.js";
import type { JobConfig, TargetConfig } from "../config/config.js";
import { keepPolicyOf } from "../config/config.js";
import { describeError } from "../errors.js";
import { isRefused } from "../store/fallback.js";
import { type RetryOptions, retry } from "../store/retry.js";
import type { Retention, Target } from "../store/store.js";
import { type LockOutcome, lockAtLeast } from "./lock.js";
import {
  type Assignment,
  assignTiers,
  hasTiers,
  KEEP_TAG,
  type PolicyTime,
  parseTiers,
  type RecordedBackup,
  type TierBackup,
} from "./tiers.js";

/**
 * Statuses of a backup that stands for its tier: good when it was made
 * ("expired" only says its lock has ended: it served its period, which must not
 * pass to a later backup). A corrupt or missing one passes its tier on.
 */
const ELIGIBLE: ReadonlySet<BackupRow["status"]> = new Set([
  "ok",
  "unlocked",
  "unverified",
  "expired",
]);

export function recordedOf(rows: readonly BackupRow[]): RecordedBackup[] {
  return rows.map((r) => ({
    id: r.id,
    createdAt: new Date(r.createdAt),
    eligible: ELIGIBLE.has(r.status),
    retainUntil: r.retainUntil ? new Date(r.retainUntil) : undefined,
    tiers: parseTiers(r.tiers ?? null),
    keepTag: r.keepTag ?? null,
  }));
}

export interface JobKeep {
  /** Undefined when the job has no keep policy: nothing to assign. */
  assigned: Map<number, Assignment> | undefined;
  recorded: RecordedBackup[];
}

/** The assignment of every catalog backup of one job (all of them: one call, one answer). */
export function assignJob(
  rows: readonly BackupRow[],
  job: Pick<JobConfig, "keep" | "timezone">,
  tc: Pick<TargetConfig, "keep" | "retention">,
  o: { time?: PolicyTime; groups?: (b: readonly TierBackup[]) => TierBackup[][] } = {},
): JobKeep {
  const recorded = recordedOf(rows);
  const policy = keepPolicyOf(job, tc);
  if (!hasTiers(policy)) return { assigned: undefined, recorded };
  const assigned = assignTiers(recorded, {
    policy,
    timezone: job.timezone,
    floorDays: tc.retention.days,
    ...(o.time ? { time: o.time } : {}),
    groups: o.groups ?? chainsOf(rows),
  });
  return { assigned, recorded };
}

/**
 * Incremental chains expire as a unit: a member is worthless without the ones
 * before it, so every member of a chain keeps the longest hold (and tag) of any
 * member. Rows without a chain (made before chains) are each their own.
 */
export function chainsOf(
  rows: readonly Pick<BackupRow, "id" | "chainId">[],
): (b: readonly TierBackup[]) => TierBackup[][] {
  const chainOfId = new Map(rows.map((r) => [r.id, r.chainId ?? r.id]));
  return (backups) => {
    const by = new Map<number, TierBackup[]>();
    for (const b of backups) {
      const c = chainOfId.get(b.id) ?? b.id;
      const list = by.get(c);
      if (list) list.push(b);
      else by.set(c, [b]);
    }
    return [...by.values()].filter((g) => g.length > 1);
  };
}

/** The lock a backup must have under its assignment: `floor` (the configured lock) or the hold, whichever ends later. */
export function heldLock(floor: Retention, a: Assignment | undefined): Retention {
  if (!a || a.keepUntil.getTime() <= floor.retainUntil.getTime()) return floor;
  return { mode: floor.mode, retainUntil: a.keepUntil };
}

const TAG_RETRY: RetryOptions = { attempts: 4, lagAttempts: 4, baseMs: 250 };

/**
 * Sets immutd-keep=<tag> on one version, with the writer (the admin credential
 * if the writer is refused). Returns the problem as a phrase, undefined on success.
 */
export async function tagVersion(
  target: Target,
  key: string,
  versionId: string,
  tag: string,
  signal?: AbortSignal,
): Promise<string | undefined> {
  const opts = signal ? { ...TAG_RETRY, signal } : TAG_RETRY;
  let last: unknown;
  for (const s of [target.writer, ...(target.admin ? [target.admin] : [])]) {
    try {
      await retry(() => s.putTags(key, versionId, { [KEEP_TAG]: tag }), opts);
      return undefined;
    } catch (err) {
      last = err;
      if (!isRefused(err)) break;
    }
  }
  return `tagging it ${KEEP_TAG}=${tag} failed: ${describeError(last)}`;
}

/** The KEEP_TAG a version carries, read with the reader (admin where refused); undefined if none may read tags. */
export async function readKeepTag(
  target: Target,
  key: string,
  versionId: string,
): Promise<{ tag: string | null } | undefined> {
  for (const s of [target.reader, ...(target.admin ? [target.admin] : [])]) {
    try {
      const tags = await retry(() => s.tags(key, versionId), TAG_RETRY);
      return { tag: tags[KEEP_TAG] ?? null };
    } catch (err) {
      if (!isRefused(err)) throw err;
    }
  }
  return undefined;
}

export interface NewBackupKeep {
  catalog: Catalog;
  target: Target;
  job: Pick<JobConfig, "name" | "keep" | "timezone">;
  tc: Pick<TargetConfig, "keep" | "retention">;
  /** The recorded (catalog) row of the new archive. */
  backupId: number;
  key: string;
  versionId: string;
  /** The configured lock (from the upload's completion): the least it gets. */
  floor: Retention;
  now: Date;
  time?: PolicyTime;
  attempts?: number;
  slackMs?: number;
}

/**
 * A new archive's lock and tag: its tiers decided with every backup of its
 * job in the catalog, locked until the longest (at least `floor`), the lock
 * recorded as the server reports it, then tagged. What the backup run does
 * after CompleteMultipartUpload; a failed tag is returned, not thrown.
 */
export async function keepNewBackup(o: NewBackupKeep): Promise<{
  keep: Assignment | undefined;
  wanted: Retention;
  lock: LockOutcome;
  tagProblem?: string;
}> {
  const rows = o.catalog.listBackups({ job: o.job.name });
  const keep = assignJob(rows, o.job, o.tc, o.time ? { time: o.time } : {}).assigned?.get(
    o.backupId,
  );
  const wanted = heldLock(o.floor, keep);
  const lock = await lockAtLeast(o.target, o.key, o.versionId, wanted, {
    now: o.now,
    ...(o.attempts !== undefined ? { attempts: o.attempts } : {}),
    ...(o.slackMs !== undefined ? { slackMs: o.slackMs } : {}),
  });
  o.catalog.setBackupLock(o.backupId, lock.after ?? lock.before, lock.problem ? "unlocked" : "ok");
  if (!keep) return { keep, wanted, lock };
  const tagProblem = await tagVersion(o.target, o.key, o.versionId, keep.tag);
  o.catalog.setBackupTiers(o.backupId, keep.tiers, tagProblem ? null : keep.tag);
  return { keep, wanted, lock, ...(tagProblem ? { tagProblem } : {}) };
}
