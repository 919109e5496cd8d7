/**
 * verify's part of the keep policy (src/retention/tiers.ts, keep.ts,
 * lifecycle.ts): the hold each backup must be locked for, the promotion of
 * backups that should stand for a tier they were not given (extend-only), the
 * immutd-keep tag each one must carry (a writer may re-tag a backup to make a
 * rule expire it early; the lock still holds, verify reports and re-tags it),
 * and the bucket's tier rules.
 */
import type { BackupRow, Catalog } from "../catalog/catalog.js";
import type { Config, TargetConfig } from "../config/config.js";
import { keepPolicyOf } from "../config/config.js";
import { describeError } from "../errors.js";
import type { Logger } from "../log.js";
import { LOCK_SLACK_MS } from "../retention/bucket-check.js";
import { assignJob, readKeepTag, recordedOf, tagVersion } from "../retention/keep.js";
import { tierRuleProblems } from "../retention/lifecycle.js";
import { lockAtLeast } from "../retention/lock.js";
import {
  type Assignment,
  holdDays,
  KEEP_TAG,
  type PolicyTime,
  promotions,
} from "../retention/tiers.js";
import type { LifecycleRule, Target } from "../store/store.js";

/** The assignment of every catalog backup of the configured jobs with a keep policy (by backup id). */
export function keepHolds(
  config: Config,
  catalog: Catalog,
  job: string | undefined,
  time?: PolicyTime,
): Map<number, Assignment> {
  const out = new Map<number, Assignment>();
  for (const j of config.jobs) {
    if (job !== undefined && j.name !== job) continue;
    const tc = config.targets[j.target];
    if (!tc) continue;
    const rows = catalog.listBackups({ job: j.name }).filter((r) => r.target === j.target);
    const { assigned } = assignJob(rows, j, tc, time ? { time } : {});
    for (const [id, a] of assigned ?? []) out.set(id, a);
  }
  return out;
}

export interface Promoted {
  backupId: number;
  job: string;
  key: string;
  versionId: string;
  tiers: string[];
  /** The lock and tag the promotion reached, or the problem. */
  retainUntil: string | null;
  tag: string;
  problem?: string;
}

/**
 * Extends the lock and the tag of every backup whose assignment holds it
 * longer than recorded (a missed tier, a longer policy). Never shortens.
 */
export async function promoteBackups(
  config: Config,
  catalog: Catalog,
  targets: Readonly<Record<string, Target>>,
  holds: ReadonlyMap<number, Assignment>,
  now: Date,
  log: Logger,
  job?: string,
): Promise<Promoted[]> {
  const out: Promoted[] = [];
  const rows = catalog.listBackups(job !== undefined ? { job } : {});
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const p of promotions(recordedOf(rows), holds, now, LOCK_SLACK_MS)) {
    const row = byId.get(p.id) as BackupRow;
    const target = targets[row.target];
    const tc = config.targets[row.target];
    if (!target || !tc || tc.bucket !== row.bucket) continue;
    const a = p.assignment;
    const problems: string[] = [];
    let retainUntil = row.retainUntil;
    if (p.extend) {
      const wanted = { mode: row.retentionMode ?? tc.retention.mode, retainUntil: a.keepUntil };
      for (const [key, versionId] of versionsOf(row)) {
        const lock = await lockAtLeast(target, key, versionId, wanted, {
          now,
          slackMs: LOCK_SLACK_MS,
        });
        if (lock.problem) problems.push(`${key}: ${lock.problem}`);
        else if (lock.changed && lock.after && key === row.key) {
          catalog.recordLockExtension({
            backupId: row.id,
            from: lock.before?.retainUntil ?? null,
            to: lock.after.retainUntil,
            mode: lock.after.mode,
            at: now,
          });
          retainUntil = lock.after.retainUntil.toISOString();
        }
      }
    }
    let tagged = !p.retag;
    if (p.retag) {
      const failed: string[] = [];
      for (const [key, versionId] of versionsOf(row)) {
        const problem = await tagVersion(target, key, versionId, a.tag);
        if (problem) failed.push(`${key}: ${problem}`);
      }
      problems.push(...failed);
      tagged = failed.length === 0;
    }
    catalog.setBackupTiers(row.id, a.tiers, tagged ? a.tag : (row.keepTag ?? null));
    const result: Promoted = {
      backupId: row.id,
      job: row.job,
      key: row.key,
      versionId: row.versionId,
      tiers: a.tiers,
      retainUntil,
      tag: a.tag,
      ...(problems.length ? { problem: problems.join("; ") } : {}),
    };
    log.info(
      { job: row.job, key: row.key, versionId: row.versionId, tiers: a.tiers, tag: a.tag },
      problems.length
        ? `promoting a backup to its tiers failed: ${problems.join("; ")}`
        : "promoted a backup to its tiers: lock extended and tag set",
    );
    out.push(result);
  }
  return out;
}

/** The archive and, if written, the manifest of a backup. */
function versionsOf(row: BackupRow): [string, string][] {
  return [
    [row.key, row.versionId],
    ...(row.manifestKey && row.manifestVersionId
      ? [[row.manifestKey, row.manifestVersionId] as [string, string]]
      : []),
  ];
}

/**
 * The archive's immutd-keep tag against its hold: a missing tag, or one for a
 * shorter hold (re-tagged by someone with write access), is a finding; the tag
 * is then set again with the writer. Undefined when no credential may read tags.
 *
 * The catalog records the tag immutd set (keep_tag); a plain run trusts it and
 * reads the bucket's tag back only where the catalog has none or a weaker one
 * than the hold (tagging failed, a promotion). `deep` reads every tag back, so
 * a tag changed behind immutd's back is found by `verify --deep`. A tag guards
 * nothing (the lock does): a wrong one makes a rule expire a version early,
 * which the lock refuses until its tier has passed.
 */
export async function checkKeepTag(
  row: BackupRow,
  target: Target,
  hold: Assignment | undefined,
  o: { deep: boolean; catalog: Catalog },
): Promise<string[] | undefined> {
  const expected = strongerTag(row.keepTag ?? null, hold?.tag ?? null);
  if (expected === null) return [];
  const recorded = row.keepTag ?? null;
  if (!o.deep && recorded !== null && (holdDays(recorded) ?? 0) >= (holdDays(expected) ?? 0))
    return [];
  // Only a hold can make the expected tag differ from the recorded one.
  const record = () => {
    if (hold && expected !== recorded) o.catalog.setBackupTiers(row.id, hold.tiers, expected);
  };
  const what = `job ${row.job}: s3://${row.bucket}/${row.key} version ${row.versionId}`;
  let seen: { tag: string | null } | undefined;
  try {
    seen = await readKeepTag(target, row.key, row.versionId);
  } catch (err) {
    return [`${what}: cannot read its tags: ${describeError(err)}`];
  }
  if (seen === undefined) return undefined;
  const have = seen.tag;
  if (have !== null && (holdDays(have) ?? 0) >= (holdDays(expected) ?? 0)) {
    if (have === expected) record();
    return [];
  }
  const fixed = await tagVersion(target, row.key, row.versionId, expected);
  if (!fixed) record();
  const was = have === null ? "has no immutd-keep tag" : `is tagged ${KEEP_TAG}=${have}`;
  return [
    `${what} ${was}, not ${KEEP_TAG}=${expected}: the lifecycle rules would ${have === null ? "never remove it" : "expire it before its tier has passed (its lock still holds until then)"}; ${fixed ? `setting the tag again failed: ${fixed}` : "verify tagged it again"}`,
  ];
}

function strongerTag(a: string | null, b: string | null): string | null {
  if (a === null) return b;
  if (b === null) return a;
  return (holdDays(a) ?? 0) >= (holdDays(b) ?? 0) ? a : b;
}

/** The tier-rule problems of one target's bucket, for the jobs configured on it. */
export function tierRuleFindings(
  config: Config,
  tc: TargetConfig,
  rules: readonly LifecycleRule[],
): string[] {
  const policies = config.jobs
    .filter((j) => j.target === tc.name)
    .map((j) => keepPolicyOf(j, tc))
    .filter((p) => p !== undefined);
  if (policies.length === 0) return [];
  return tierRuleProblems(rules, tc, policies).map((p) => p.message);
}
