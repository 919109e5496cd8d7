/**
 * What a keep policy removes when, and what it keeps in steady state: pure
 * arithmetic over the tiers (src/retention/tiers.ts) and the tier rules
 * (src/retention/lifecycle.ts). Used by `immutd plan` and `immutd list`.
 *
 * A backup's removal date is when the server removes it at the earliest: its
 * tag's rule expires the current version `hold + lifecycleGraceDays` days
 * after creation and removes it one day later, and never while it is locked.
 * The newest backup of a job is not removed while keepLatestLocked keeps it
 * locked, however old it gets.
 */
import type { KeepPolicy } from "../config/config.js";
import { removalAfterDays } from "./lifecycle.js";
import { assignTiers, type PolicyTime, REAL_TIME, toPolicy, toReal } from "./tiers.js";

const DAY_MS = 86_400_000;

/** Earliest real date the tier rules remove a backup with this tag; undefined: no rule ever does (no tag). */
export function removalDate(
  createdAt: Date,
  tag: string | null,
  graceDays: number,
  time: PolicyTime = REAL_TIME,
): Date | undefined {
  const days = removalAfterDays(tag, graceDays);
  if (days === undefined) return undefined;
  return toReal(time, new Date(toPolicy(time, createdAt).getTime() + days * DAY_MS));
}

export interface SteadyStateOptions {
  policy: KeepPolicy;
  timezone: string | undefined;
  floorDays: number;
  graceDays: number;
  /** The job's run times, oldest first, over a span longer than the longest hold (the flow takes them from its schedule). */
  runs: readonly Date[];
  time?: PolicyTime;
}

/**
 * How many backups the policy keeps at the last run time, once it has run
 * that long: the steady state when `runs` span more than the longest hold.
 * Counts each backup not yet removed by its tier rule, and the newest always.
 */
export function steadyState(o: SteadyStateOptions): {
  backups: number;
  byTag: Record<string, number>;
} {
  const time = o.time ?? REAL_TIME;
  const backups = o.runs.map((createdAt, i) => ({ id: i, createdAt, eligible: true }));
  const assigned = assignTiers(backups, {
    policy: o.policy,
    timezone: o.timezone,
    floorDays: o.floorDays,
    time,
  });
  const at = o.runs.at(-1);
  if (at === undefined) return { backups: 0, byTag: {} };
  const byTag: Record<string, number> = {};
  let n = 0;
  for (const b of backups) {
    const a = assigned.get(b.id);
    if (!a) continue;
    const gone = removalDate(b.createdAt, a.tag, o.graceDays, time);
    if (b.id === backups.length - 1 || gone === undefined || gone.getTime() > at.getTime()) {
      n++;
      byTag[a.tag] = (byTag[a.tag] ?? 0) + 1;
    }
  }
  return { backups: n, byTag };
}

/** Statuses of a backup still on the server as far as the catalog knows ("expired": unlocked, until a rule removes it). */
const PRESENT = new Set(["ok", "unlocked", "unverified", "expired"]);

export interface RemovalRow {
  createdAt: string;
  retainUntil: string | null;
  keepTag?: string | null;
  status: string;
}

/**
 * When the server removes a backup, as `immutd list` and `plan` show it:
 * its tag's removal date, never before its retain-until (lifecycle cannot
 * remove a locked version). `kind` says why there is no date.
 */
export function serverRemoval(
  row: RemovalRow,
  o: { graceDays: number; newest: boolean; keepLatestLocked: boolean; time?: PolicyTime },
): { kind: "date"; date: Date } | { kind: "newest" | "untagged" | "gone" } {
  if (!PRESENT.has(row.status)) return { kind: "gone" };
  const d = removalDate(new Date(row.createdAt), row.keepTag ?? null, o.graceDays, o.time);
  if (!d) return { kind: "untagged" };
  if (o.newest && o.keepLatestLocked) return { kind: "newest" };
  const locked = row.retainUntil ? Date.parse(row.retainUntil) : 0;
  return { kind: "date", date: new Date(Math.max(d.getTime(), locked)) };
}

/** The removal as one short cell: a date, "newest: kept", "never (no tag)", or "-". */
export function describeRemoval(r: ReturnType<typeof serverRemoval>): string {
  switch (r.kind) {
    case "date":
      return r.date.toISOString().slice(0, 10);
    case "newest":
      return "kept (newest)";
    case "untagged":
      return "never (no tag)";
    case "gone":
      return "-";
  }
}
