/**
 * What a bucket must enforce for immutd's promises, as pure comparisons of the
 * configured target with the settings a server reported: Object Lock,
 * versioning, the default retention and the lifecycle rules. No I/O.
 *
 * One set of checks serves four callers, so that they cannot drift apart:
 * backup's preflight (refuses to upload), `immutd verify` (findings),
 * `immutd doctor` (FAIL lines) and `immutd init` (what it must change, and
 * what it cannot). Init's plan only ever makes a bucket stricter: a longer
 * default retention, GOVERNANCE to COMPLIANCE, missing rules added, immutd's
 * own noncurrent-version rule lengthened; it never shortens, disables or
 * removes anything, and it leaves rules it did not write untouched.
 */
import type { KeepPolicy, RetentionMode, TargetConfig } from "../config/config.js";
import type { BucketLockState, LifecycleRule } from "../store/store.js";
import { expiryMechanism, tierRules } from "./lifecycle.js";

export type BucketProblemKind =
  | "object-lock-disabled"
  | "versioning-disabled"
  | "no-default-retention"
  | "default-retention-weak"
  | "lifecycle-expires-current";

export interface BucketProblem {
  kind: BucketProblemKind;
  /** What is wrong, naming the bucket and target. */
  message: string;
  /** What to do about it. */
  fix: string;
}

const DAY_MS = 86_400_000;

export function where(t: TargetConfig): string {
  return `bucket ${t.bucket} (target ${t.name})`;
}

export function describeRetention(r: {
  mode: RetentionMode;
  days: number;
  years?: number;
}): string {
  if (r.years !== undefined) return `${r.mode} ${r.years} year${r.years === 1 ? "" : "s"}`;
  return `${r.mode} ${r.days} day${r.days === 1 ? "" : "s"}`;
}

/** True if `actual` protects at least as long and at least as strictly as `wanted`. */
export function retentionSatisfies(
  actual: { mode: RetentionMode; days: number },
  wanted: { mode: RetentionMode; days: number },
): boolean {
  return (
    actual.days >= wanted.days && (wanted.mode !== "COMPLIANCE" || actual.mode === "COMPLIANCE")
  );
}

export function stricterMode(a: RetentionMode, b: RetentionMode): RetentionMode {
  return a === "COMPLIANCE" || b === "COMPLIANCE" ? "COMPLIANCE" : "GOVERNANCE";
}

/**
 * Object Lock, versioning and default retention against the target's config,
 * in the order a backup's preflight reports them (the first is its refusal).
 */
export function lockProblems(state: BucketLockState, t: TargetConfig): BucketProblem[] {
  const w = where(t);
  const wanted = describeRetention(t.retention);
  if (!state.objectLock) {
    return [
      {
        kind: "object-lock-disabled",
        message: `${w} does not have Object Lock enabled, so backups in it could be deleted or overwritten. Object Lock can only be enabled when a bucket is created: create a new bucket with Object Lock`,
        fix: `create a new bucket with \`immutd init\` (Object Lock cannot be turned on later) and point targets.${t.name}.bucket at it`,
      },
    ];
  }
  const out: BucketProblem[] = [];
  if (state.versioning !== "Enabled") {
    out.push({
      kind: "versioning-disabled",
      message: `${w} has versioning ${state.versioning.toLowerCase()}; Object Lock needs it enabled`,
      fix: "enable versioning on the bucket (with the owner's credentials)",
    });
  }
  const d = state.defaultRetention;
  if (!d) {
    out.push({
      kind: "no-default-retention",
      message: `${w} has Object Lock but no default retention, so new backups would not be locked; set a default retention of ${t.retention.mode} ${t.retention.days} days`,
      fix: `run \`immutd init ${t.name}\` (admin credentials) to set ${wanted}`,
    });
  } else if (!retentionSatisfies(d, t.retention)) {
    out.push({
      kind: "default-retention-weak",
      message: `${w} has a default retention of ${d.mode} ${d.days} days, weaker than the configured ${t.retention.mode} ${t.retention.days} days`,
      fix: `run \`immutd init ${t.name}\` (admin credentials) to raise it to ${wanted}, and find out who changed it`,
    });
  }
  return out;
}

/** Whether a rule limited to `rulePrefix` can touch keys under `prefix` (one is a prefix of the other). */
function overlaps(rulePrefix: string, prefix: string): boolean {
  return rulePrefix.startsWith(prefix) || prefix.startsWith(rulePrefix);
}

/**
 * Enabled rules that expire current versions (in a versioned bucket: put a
 * delete marker on them) while backups are still inside their retention. The
 * locked data survives a delete marker, but a backup that looks deleted invites
 * mistakes and starts its noncurrent-version countdown early.
 */
export function lifecycleProblems(
  rules: readonly LifecycleRule[],
  t: TargetConfig,
): BucketProblem[] {
  const out: BucketProblem[] = [];
  for (const r of rules) {
    if (!r.enabled || !overlaps(r.prefix, t.prefix)) continue;
    const name = `lifecycle rule "${r.id}"${r.prefix ? ` (prefix ${r.prefix})` : ""}`;
    if (r.expirationDays !== undefined && r.expirationDays < t.retention.days) {
      out.push({
        kind: "lifecycle-expires-current",
        message: `${where(t)}: ${name} expires current versions after ${r.expirationDays} days, inside the ${t.retention.days}-day retention`,
        fix: `change the rule to at least ${t.retention.days} days or remove it (immutd does not touch rules it did not write)`,
      });
    }
    if (r.expirationDate !== undefined) {
      out.push({
        kind: "lifecycle-expires-current",
        message: `${where(t)}: ${name} expires every current version from ${r.expirationDate.toISOString().slice(0, 10)}, whatever its age, so backups made since then expire inside their retention`,
        fix: "replace the date with a number of days of at least the retention, or remove the rule",
      });
    }
  }
  return out;
}

/**
 * The rules `immutd init` sets, limited to the target's prefix: the cleanup
 * rules, plus the keep-tier rules for the policies of the target's jobs where
 * the provider can filter by tag (src/retention/lifecycle.ts).
 */
export function desiredLifecycle(
  t: TargetConfig,
  policies: readonly (KeepPolicy | undefined)[] = [],
): LifecycleRule[] {
  return [
    ...cleanupLifecycle(t),
    ...(expiryMechanism(t.endpoint).kind === "tags" ? tierRules(t, policies) : []),
  ];
}

function cleanupLifecycle(t: TargetConfig): LifecycleRule[] {
  const id = (name: string) => `immutd-${name}${t.prefix ? `:${t.prefix}` : ""}`;
  return [
    {
      id: id("noncurrent-versions"),
      enabled: true,
      prefix: t.prefix,
      noncurrentDays: t.retention.days + t.lifecycleGraceDays,
    },
    {
      id: id("expired-delete-markers"),
      enabled: true,
      prefix: t.prefix,
      expiredObjectDeleteMarker: true,
    },
    { id: id("abort-incomplete-uploads"), enabled: true, prefix: t.prefix, abortIncompleteDays: 1 },
  ];
}

/** immutd's rules that are missing or disabled (doctor suggests `immutd init`). */
export function missingLifecycle(
  rules: readonly LifecycleRule[],
  t: TargetConfig,
  policies: readonly (KeepPolicy | undefined)[] = [],
): string[] {
  return desiredLifecycle(t, policies)
    .filter((d) => !rules.some((r) => r.id === d.id && r.enabled))
    .map((d) => d.id);
}

export function describeRule(r: LifecycleRule): string {
  if (r.tag && r.expirationDays !== undefined && r.noncurrentDays !== undefined) {
    const days = (n: number) => `${n} day${n === 1 ? "" : "s"}`;
    return `current versions tagged ${r.tag.key}=${r.tag.value} expire after ${days(r.expirationDays)}, then are removed ${days(r.noncurrentDays)} later (never while locked)${r.prefix ? ` (prefix ${r.prefix})` : ""}${r.enabled ? "" : " [disabled]"}`;
  }
  const parts: string[] = [];
  if (r.noncurrentDays !== undefined)
    parts.push(`noncurrent versions expire after ${r.noncurrentDays} days`);
  if (r.expiredObjectDeleteMarker) parts.push("expired delete markers are removed");
  if (r.abortIncompleteDays !== undefined)
    parts.push(
      `incomplete multipart uploads are aborted after ${r.abortIncompleteDays} day${r.abortIncompleteDays === 1 ? "" : "s"}`,
    );
  if (r.expirationDays !== undefined)
    parts.push(`current versions expire after ${r.expirationDays} days`);
  if (r.expirationDate !== undefined)
    parts.push(`current versions expire on ${r.expirationDate.toISOString().slice(0, 10)}`);
  const what = parts.join(", ") || "no action immutd knows";
  const tag = r.tag ? ` (tag ${r.tag.key}=${r.tag.value})` : "";
  return `${what}${r.prefix ? ` (prefix ${r.prefix})` : ""}${tag}${r.enabled ? "" : " [disabled]"}`;
}

export type InitAction = "create" | "set" | "add" | "update" | "ok" | "kept" | "cannot-fix";

export interface InitStep {
  /** "bucket", "default retention" or "lifecycle <rule id>". */
  setting: string;
  action: InitAction;
  /** One line for people: what is there and what init does about it. */
  detail: string;
}

export interface InitPlan {
  steps: InitStep[];
  createBucket: boolean;
  /** The default retention to set, if it changes. */
  defaultRetention?: { mode: RetentionMode; days: number };
  /** The complete lifecycle configuration to set, if it changes. */
  lifecycle?: LifecycleRule[];
  /** What stays wrong after the plan is applied (init cannot or will not fix it). */
  problems: BucketProblem[];
}

export interface BucketSnapshot {
  exists: boolean;
  lock?: BucketLockState;
  lifecycle?: readonly LifecycleRule[];
}

/**
 * What `immutd init` does to make the bucket match the target: everything
 * for a new bucket; for an existing one, only changes that make it stricter.
 * Pure: the caller reads the snapshot and applies the plan.
 */
export function planInit(
  current: BucketSnapshot,
  t: TargetConfig,
  policies: readonly (KeepPolicy | undefined)[] = [],
): InitPlan {
  const wanted = { mode: t.retention.mode, days: t.retention.days };
  const rules = desiredLifecycle(t, policies);
  const expiry = expiryMechanism(t.endpoint);
  if (!current.exists) {
    const plan = planNewBucket(wanted, rules);
    if (expiry.kind === "none" && policies.some((p) => p !== undefined))
      plan.steps.push(noExpiryStep(expiry.why));
    return plan;
  }

  const lock = current.lock as BucketLockState;
  const steps: InitStep[] = [{ setting: "bucket", action: "ok", detail: "exists" }];
  const fixable = new Set<BucketProblemKind>(["no-default-retention", "default-retention-weak"]);
  const problems = lockProblems(lock, t).filter((p) => !fixable.has(p.kind));
  if (!lock.objectLock) {
    steps.push({
      setting: "object lock",
      action: "cannot-fix",
      detail: "not enabled, and it can only be enabled when a bucket is created",
    });
    return { steps, createBucket: false, problems };
  }
  steps.push({ setting: "object lock", action: "ok", detail: "enabled" });
  if (lock.versioning !== "Enabled") {
    steps.push({
      setting: "versioning",
      action: "cannot-fix",
      detail: lock.versioning.toLowerCase(),
    });
  }

  const plan: InitPlan = { steps, createBucket: false, problems };
  const retention = planRetention(lock.defaultRetention, wanted, steps);
  if (retention) plan.defaultRetention = retention;
  const existing = planLifecycle(current.lifecycle ?? [], rules, steps);
  if (existing.changed) plan.lifecycle = existing.rules;
  if (expiry.kind === "none" && policies.some((p) => p !== undefined))
    steps.push(noExpiryStep(expiry.why));
  plan.problems.push(...lifecycleProblems(existing.rules, t));
  return plan;
}

type PlannedRetention = NonNullable<InitPlan["defaultRetention"]>;

function noExpiryStep(why: string): InitStep {
  return {
    setting: "keep-policy expiry",
    action: "cannot-fix",
    detail: `not set: ${why}; backups are locked for their tiers but no rule removes them (storage grows)`,
  };
}

/** Everything, for a bucket that does not exist yet. */
function planNewBucket(wanted: PlannedRetention, rules: LifecycleRule[]): InitPlan {
  return {
    steps: [
      {
        setting: "bucket",
        action: "create",
        detail: "create with Object Lock (versioning comes with it)",
      },
      {
        setting: "default retention",
        action: "set",
        detail: `none → ${describeRetention(wanted)}`,
      },
      ...rules.map((r) => ({
        setting: `lifecycle ${r.id}`,
        action: "add" as const,
        detail: describeRule(r),
      })),
    ],
    createBucket: true,
    defaultRetention: wanted,
    lifecycle: rules,
    problems: [],
  };
}

/** The default retention to set (the stricter of bucket and config), or undefined to leave it; adds its step. */
function planRetention(
  d: BucketLockState["defaultRetention"],
  wanted: PlannedRetention,
  steps: InitStep[],
): PlannedRetention | undefined {
  if (!d) {
    steps.push({
      setting: "default retention",
      action: "set",
      detail: `none → ${describeRetention(wanted)}`,
    });
    return wanted;
  }
  const merged = { mode: stricterMode(d.mode, wanted.mode), days: Math.max(d.days, wanted.days) };
  if (merged.mode === d.mode && merged.days === d.days) {
    const stricter = !(d.mode === wanted.mode && d.days === wanted.days);
    steps.push({
      setting: "default retention",
      action: stricter ? "kept" : "ok",
      detail: stricter
        ? `${describeRetention(d)} is stricter than the configured ${describeRetention(wanted)}; left as it is (init never weakens)`
        : describeRetention(d),
    });
    return undefined;
  }
  steps.push({
    setting: "default retention",
    action: "update",
    detail: `${describeRetention(d)} → ${describeRetention(merged)}${
      merged.mode !== wanted.mode || merged.days !== wanted.days
        ? " (the stricter of bucket and config)"
        : ""
    }`,
  });
  return merged;
}

/** The bucket's rules with immutd's added or strengthened (others' left alone); adds a step per rule. */
function planLifecycle(
  current: readonly LifecycleRule[],
  rules: readonly LifecycleRule[],
  steps: InitStep[],
): { rules: LifecycleRule[]; changed: boolean } {
  const existing = [...current];
  let changed = false;
  for (const want of rules) {
    const i = existing.findIndex((r) => r.id === want.id);
    const have = existing[i];
    if (!have) {
      existing.push(want);
      changed = true;
      steps.push({ setting: `lifecycle ${want.id}`, action: "add", detail: describeRule(want) });
      continue;
    }
    const next = strengthenRule(have, want);
    if (next === have) {
      const same = sameActions(have, want);
      steps.push({
        setting: `lifecycle ${want.id}`,
        action: same ? "ok" : "kept",
        detail: same
          ? describeRule(have)
          : `${describeRule(have)}; differs from ${describeRule(want)}, left as it is`,
      });
    } else {
      existing[i] = next;
      changed = true;
      steps.push({
        setting: `lifecycle ${want.id}`,
        action: "update",
        detail: `${describeRule(have)} → ${describeRule(next)}`,
      });
    }
  }
  return { rules: existing, changed };
}

function sameActions(a: LifecycleRule, b: LifecycleRule): boolean {
  return (
    a.enabled === b.enabled &&
    a.prefix === b.prefix &&
    a.tag?.key === b.tag?.key &&
    a.tag?.value === b.tag?.value &&
    a.noncurrentDays === b.noncurrentDays &&
    (a.expiredObjectDeleteMarker ?? false) === (b.expiredObjectDeleteMarker ?? false) &&
    a.abortIncompleteDays === b.abortIncompleteDays &&
    a.expirationDays === b.expirationDays &&
    a.expirationDate?.getTime() === b.expirationDate?.getTime()
  );
}

/**
 * One of immutd's own rules as it exists, made at least as protective as
 * wanted: enabled, and a noncurrent-version expiry no shorter than wanted. An
 * action that is missing is added. Returns `have` itself when nothing changes.
 */
function strengthenRule(have: LifecycleRule, want: LifecycleRule): LifecycleRule {
  const next: LifecycleRule = { ...have, enabled: true };
  delete next.native;
  // A keep-tier rule: back to immutd's filter, expiring no sooner than it should.
  if (want.tag !== undefined) {
    next.prefix = want.prefix;
    next.tag = want.tag;
    next.expirationDays = Math.max(have.expirationDays ?? 0, want.expirationDays ?? 0);
    delete next.expirationDate;
  }
  if (want.noncurrentDays !== undefined) {
    next.noncurrentDays = Math.max(have.noncurrentDays ?? 0, want.noncurrentDays);
  }
  if (want.expiredObjectDeleteMarker && !have.expiredObjectDeleteMarker) {
    // Not together with a day count in one Expiration (servers refuse it): leave such a rule alone.
    if (have.expirationDays !== undefined || have.expirationDate !== undefined) return have;
    next.expiredObjectDeleteMarker = true;
  }
  if (want.abortIncompleteDays !== undefined && have.abortIncompleteDays === undefined) {
    next.abortIncompleteDays = want.abortIncompleteDays;
  }
  const unchanged =
    next.enabled === have.enabled &&
    next.prefix === have.prefix &&
    next.tag?.key === have.tag?.key &&
    next.tag?.value === have.tag?.value &&
    next.expirationDays === have.expirationDays &&
    next.expirationDate === have.expirationDate &&
    next.noncurrentDays === have.noncurrentDays &&
    next.expiredObjectDeleteMarker === have.expiredObjectDeleteMarker &&
    next.abortIncompleteDays === have.abortIncompleteDays;
  return unchanged ? have : next;
}

/**
 * keepLatestLocked's arithmetic: a version must stay locked at least `days`
 * ahead of now (`needed`); when it is not, it is extended to `days` plus one
 * day ahead (`extendTo`), so that a daily or more frequent verify extends it
 * at most once a day instead of by a few seconds on every run.
 */
export function lockTarget(now: Date, days: number): { needed: Date; extendTo: Date } {
  return {
    needed: new Date(now.getTime() + days * DAY_MS),
    extendTo: new Date(now.getTime() + (days + 1) * DAY_MS),
  };
}

/** How much earlier than asked a server's retain-until may read (servers round dates). */
export const RETAIN_TOLERANCE_MS = 1000;

/**
 * How much shorter than its configured period a backup's lock may be and still
 * count as configured. A bucket default counts from the server's clock, the
 * configured period from this machine's, and the two differ (doctor warns past
 * 30 s and fails past 15 minutes); without the slack, every backup of a machine
 * whose clock is a few seconds ahead would be set again and reported.
 */
export const LOCK_SLACK_MS = 5 * 60_000;

/**
 * The lock a backup must have: the configured mode, until `from` plus the
 * configured days. For a new backup `from` is the moment its upload completed;
 * for one in the catalog, its creation time (its configured period).
 */
export function configuredLock(
  from: Date,
  r: { mode: RetentionMode; days: number },
): { mode: RetentionMode; retainUntil: Date } {
  return { mode: r.mode, retainUntil: new Date(from.getTime() + r.days * DAY_MS) };
}

/**
 * Pure: how a version's retention falls short of `wanted`, in a few words, or
 * undefined if it is at least as strict (mode) and at least as long (less
 * `slackMs`).
 */
export function lockShortfall(
  actual: { mode: RetentionMode; retainUntil: Date } | undefined,
  wanted: { mode: RetentionMode; retainUntil: Date },
  slackMs = RETAIN_TOLERANCE_MS,
): string | undefined {
  if (!actual) return "it has no retention";
  const weak = wanted.mode === "COMPLIANCE" && actual.mode !== "COMPLIANCE";
  const short = actual.retainUntil.getTime() < wanted.retainUntil.getTime() - slackMs;
  if (!weak && !short) return undefined;
  return `it is locked ${actual.mode} until ${actual.retainUntil.toISOString()}, not ${wanted.mode} until ${wanted.retainUntil.toISOString()}`;
}

/**
 * Pure: the PutObjectRetention that makes `actual` meet `wanted` without
 * weakening anything: the stricter mode and the later date. `upgradeGovernance`
 * when a live GOVERNANCE lock must become COMPLIANCE (servers want the bypass
 * header for that). Undefined when nothing needs to change.
 */
export function lockRequest(
  actual: { mode: RetentionMode; retainUntil: Date } | undefined,
  wanted: { mode: RetentionMode; retainUntil: Date },
  now: Date,
  slackMs = RETAIN_TOLERANCE_MS,
):
  | { retention: { mode: RetentionMode; retainUntil: Date }; upgradeGovernance: boolean }
  | undefined {
  if (lockShortfall(actual, wanted, slackMs) === undefined) return undefined;
  const live = actual !== undefined && actual.retainUntil.getTime() > now.getTime();
  if (!live) return { retention: { ...wanted }, upgradeGovernance: false };
  const mode = stricterMode(actual.mode, wanted.mode);
  const until = Math.max(actual.retainUntil.getTime(), wanted.retainUntil.getTime());
  return {
    retention: { mode, retainUntil: new Date(until) },
    upgradeGovernance: actual.mode === "GOVERNANCE" && mode === "COMPLIANCE",
  };
}
