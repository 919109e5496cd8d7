/**
 * `immutd plan`: what each job's keep policy will have the server remove,
 * when, and what it keeps in steady state (backups and bytes). Reads the
 * catalog and the config only: no request to the server, nothing changes.
 *
 * A job's steady state is simulated from its schedule (one run a day for a
 * job without one) over a span longer than its longest hold, with the same
 * tier assignment and rule arithmetic the backups get
 * (src/retention/tiers.ts, plan.ts).
 */
import { Cron } from "croner";
import type { BackupRow, Catalog } from "../catalog/catalog.js";
import { type Config, type JobConfig, type KeepPolicy, keepPolicyOf } from "../config/config.js";
import { assignJob } from "../retention/keep.js";
import { expiryMechanism, removalAfterDays } from "../retention/lifecycle.js";
import { serverRemoval, steadyState } from "../retention/plan.js";
import { policyTags } from "../retention/tiers.js";

const DAY_MS = 86_400_000;
/** Simulated runs at most: an every-minute schedule is simulated over its last runs only. */
const MAX_RUNS = 200_000;

export interface PlannedRemoval {
  backupId: number;
  key: string;
  versionId: string;
  createdAt: string;
  size: number;
  tiers: string[];
  tag: string | null;
  lockedUntil: string | null;
  /** When the server removes it at the earliest; null: not while it is the newest (keepLatestLocked), or never (no tag). */
  removedAfter: string | null;
  note: "newest" | "untagged" | null;
}

export interface JobPlan {
  job: string;
  target: string;
  policy: KeepPolicy | null;
  /** Why nothing will ever be removed (no policy, a provider without tag rules), when that is so. */
  noExpiry: string | null;
  backups: PlannedRemoval[];
  steadyState: {
    backups: number;
    /** backups x the mean size of the job's last ten backups; null without backups. */
    bytes: number | null;
    byTag: Record<string, number>;
    /** The schedule simulated ("0 3 * * *", or "one a day" for a manual job). */
    schedule: string;
  } | null;
}

export function planJobs(config: Config, catalog: Catalog, only?: string): JobPlan[] {
  const out: JobPlan[] = [];
  for (const job of config.jobs) {
    if (only !== undefined && job.name !== only) continue;
    const tc = config.targets[job.target];
    if (!tc) continue;
    const rows = catalog.listBackups({ job: job.name }).filter((r) => r.target === job.target);
    const policy = keepPolicyOf(job, tc) ?? null;
    const m = expiryMechanism(tc.endpoint);
    const noExpiry = !policy
      ? "no keep policy: nothing is ever removed"
      : m.kind === "none"
        ? `${m.why}: nothing is removed`
        : null;
    const now = Date.now();
    const live = rows.filter((r) => ["ok", "unlocked", "unverified", "expired"].includes(r.status));
    const newestId = live.at(-1)?.id;
    // An expired backup (its lock ended) is listed until the date its rule removes it.
    const present = live.filter((r) => {
      if (r.status !== "expired" || r.id === newestId) return true;
      const gone = serverRemoval(r, {
        graceDays: tc.lifecycleGraceDays,
        newest: false,
        keepLatestLocked: false,
      });
      return gone.kind === "date" && gone.date.getTime() > now;
    });
    const assigned = assignJob(rows, job, tc).assigned;
    const backups = present.map((r) =>
      planned(r, assigned?.get(r.id)?.tiers, {
        graceDays: tc.lifecycleGraceDays,
        newest: r.id === newestId,
        keepLatestLocked: config.keepLatestLocked,
      }),
    );
    // Soonest removal first; the ones never removed (newest, untagged) last.
    const order = (x: PlannedRemoval) => (x.removedAfter ? Date.parse(x.removedAfter) : Infinity);
    backups.sort((a, b) => order(a) - order(b));
    out.push({
      job: job.name,
      target: tc.name,
      policy,
      noExpiry,
      backups,
      steadyState: policy
        ? steady(job, policy, tc.retention.days, tc.lifecycleGraceDays, rows)
        : null,
    });
  }
  return out;
}

function planned(
  r: BackupRow,
  tiers: string[] | undefined,
  o: { graceDays: number; newest: boolean; keepLatestLocked: boolean },
): PlannedRemoval {
  const removal = serverRemoval(r, o);
  return {
    backupId: r.id,
    key: r.key,
    versionId: r.versionId,
    createdAt: r.createdAt,
    size: r.size,
    tiers: r.tiers ? r.tiers.split(",").filter(Boolean) : (tiers ?? []),
    tag: r.keepTag ?? null,
    lockedUntil: r.retainUntil,
    removedAfter: removal.kind === "date" ? removal.date.toISOString() : null,
    note: removal.kind === "newest" || removal.kind === "untagged" ? removal.kind : null,
  };
}

function steady(
  job: JobConfig,
  policy: KeepPolicy,
  floorDays: number,
  graceDays: number,
  rows: readonly BackupRow[],
): NonNullable<JobPlan["steadyState"]> {
  const longest = Math.max(
    ...policyTags(policy, floorDays).map((t) => removalAfterDays(t, graceDays) ?? 0),
  );
  const end = new Date();
  const start = new Date(end.getTime() - (longest + 8) * DAY_MS);
  const runs: Date[] = [];
  if (job.schedule) {
    const cron = new Cron(job.schedule, {
      paused: true,
      ...(job.timezone ? { timezone: job.timezone } : {}),
    });
    for (let t = cron.nextRun(start); t && t.getTime() <= end.getTime(); t = cron.nextRun(t)) {
      runs.push(t);
      if (runs.length >= MAX_RUNS) break;
    }
  } else {
    for (let t = start.getTime(); t <= end.getTime(); t += DAY_MS) runs.push(new Date(t));
  }
  const s = steadyState({ policy, timezone: job.timezone, floorDays, graceDays, runs });
  const recent = rows.slice(-10);
  const mean = recent.length ? recent.reduce((n, r) => n + r.size, 0) / recent.length : undefined;
  return {
    backups: s.backups,
    bytes: mean === undefined ? null : Math.round(s.backups * mean),
    byTag: s.byTag,
    schedule: job.schedule ?? "one a day (the job has no schedule)",
  };
}
