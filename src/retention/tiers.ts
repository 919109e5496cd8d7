/**
 * Which retention tiers a backup stands for, and how long that keeps it: the
 * pure arithmetic of a `keep:` policy (grandfather-father-son). No I/O.
 *
 * A backup stands for a tier when it is the first eligible backup of its
 * period in the job's time zone: of its day (daily), ISO week (weekly), month
 * (monthly) or year (yearly). A tier `daily: N` keeps it locked N days,
 * `weekly: N` N weeks, `monthly: N` N calendar months, `yearly: N` N calendar
 * years, counted from its creation; the lock it gets is the longest of its
 * tiers, and never shorter than the target's retention (the bucket default is
 * the floor). This is a lock duration per backup, not restic's "the last N
 * days that have snapshots": a lock is decided when the backup is made and
 * cannot be taken back, so it can only depend on what is known then.
 *
 * The assignment is one function of all of a job's backups (assignTiers):
 * the same call decides a new backup's tiers and finds backups that should
 * stand for a tier they were not given (the first backup of the month was
 * corrupt, crash recovery found an earlier one, the policy got longer).
 * Those are promoted by extending their lock, never by shortening anything
 * (promotions). Backups that must expire together (an incremental chain) can
 * be passed as groups: every member keeps the longest member's hold.
 *
 * Times: `PolicyTime` maps real instants to the calendar the policy counts
 * in. In production it is the identity; tests compress a day into seconds to
 * match a server whose lifecycle day is as short (Ceph's rgw lc debug interval).
 */
import type { KeepPolicy } from "../config/config.js";

export const TIERS = ["daily", "weekly", "monthly", "yearly"] as const;
export type Tier = (typeof TIERS)[number];

/** The object tag that names a backup's longest hold (`weekly-8`, `floor-30`); lifecycle rules filter on it. */
export const KEEP_TAG = "immutd-keep";

const DAY_MS = 86_400_000;

/** How a policy day maps to real time: real = origin + (policy - origin) * dayMs / 1 day. */
export interface PolicyTime {
  /** Length of one policy day in real milliseconds (86,400,000 in production). */
  dayMs: number;
  /** A real instant that maps to itself (ms since the epoch). */
  origin: number;
}

export const REAL_TIME: PolicyTime = { dayMs: DAY_MS, origin: 0 };

export function toPolicy(t: PolicyTime, real: Date): Date {
  if (t.dayMs === DAY_MS) return real;
  return new Date(t.origin + ((real.getTime() - t.origin) * DAY_MS) / t.dayMs);
}

export function toReal(t: PolicyTime, policy: Date): Date {
  if (t.dayMs === DAY_MS) return policy;
  return new Date(t.origin + ((policy.getTime() - t.origin) * t.dayMs) / DAY_MS);
}

/** True if the policy keeps any tier at all. */
export function hasTiers(p: KeepPolicy | undefined): p is KeepPolicy {
  return p !== undefined && TIERS.some((t) => (p[t] ?? 0) > 0);
}

const formatters = new Map<string, Intl.DateTimeFormat>();
function ymd(at: Date, tz: string | undefined): { y: number; m: number; d: number } {
  const zone = tz ?? Intl.DateTimeFormat().resolvedOptions().timeZone;
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: zone,
      year: "numeric",
      month: "numeric",
      day: "numeric",
    });
    formatters.set(zone, f);
  }
  const parts = Object.fromEntries(f.formatToParts(at).map((p) => [p.type, p.value]));
  return { y: Number(parts.year), m: Number(parts.month), d: Number(parts.day) };
}

/** The ISO 8601 week (year and number) of a calendar date. */
function isoWeek(y: number, m: number, d: number): { year: number; week: number } {
  const date = new Date(Date.UTC(y, m - 1, d));
  const dow = date.getUTCDay() || 7; // Monday 1 .. Sunday 7
  date.setUTCDate(date.getUTCDate() + 4 - dow); // the Thursday of this week
  const year = date.getUTCFullYear();
  const week = Math.ceil(((date.getTime() - Date.UTC(year, 0, 1)) / DAY_MS + 1) / 7);
  return { year, week };
}

/** The period a (policy-time) instant falls in, in time zone tz: "2026-12-02", "2026-W49", "2026-12", "2026". */
export function periodOf(tier: Tier, at: Date, tz: string | undefined): string {
  const { y, m, d } = ymd(at, tz);
  const p2 = (n: number) => String(n).padStart(2, "0");
  switch (tier) {
    case "daily":
      return `${y}-${p2(m)}-${p2(d)}`;
    case "weekly": {
      const w = isoWeek(y, m, d);
      return `${w.year}-W${p2(w.week)}`;
    }
    case "monthly":
      return `${y}-${p2(m)}`;
    case "yearly":
      return String(y);
  }
}

/** Policy-time end of holding a backup created at `from` (policy time) for n units of a tier. */
export function tierEnd(tier: Tier | "floor", n: number, from: Date): Date {
  const d = new Date(from.getTime());
  switch (tier) {
    case "floor":
    case "daily":
      return new Date(from.getTime() + n * DAY_MS);
    case "weekly":
      return new Date(from.getTime() + n * 7 * DAY_MS);
    case "monthly": {
      const day = d.getUTCDate();
      d.setUTCDate(1);
      d.setUTCMonth(d.getUTCMonth() + n);
      d.setUTCDate(Math.min(day, daysInMonth(d.getUTCFullYear(), d.getUTCMonth())));
      return d;
    }
    case "yearly": {
      const day = d.getUTCDate();
      d.setUTCDate(1);
      d.setUTCFullYear(d.getUTCFullYear() + n);
      d.setUTCDate(Math.min(day, daysInMonth(d.getUTCFullYear(), d.getUTCMonth())));
      return d;
    }
  }
}

function daysInMonth(y: number, m0: number): number {
  return new Date(Date.UTC(y, m0 + 1, 0)).getUTCDate();
}

/**
 * Whole policy days a tag's hold can last at most (a month counts 31, a year
 * 366): what the lifecycle rule for that tag waits before expiring, so that
 * no rule ever expires a backup before its tier has passed.
 */
export function holdDays(tag: string): number | undefined {
  const m = /^(floor|daily|weekly|monthly|yearly)-([1-9][0-9]{0,5})$/.exec(tag);
  if (!m) return undefined;
  const n = Number(m[2]);
  const per = { floor: 1, daily: 1, weekly: 7, monthly: 31, yearly: 366 }[m[1] as Tier | "floor"];
  return n * per;
}

/** Every tag a policy can give a backup on a target with this floor (a tier never longer than the floor never names one). */
export function policyTags(p: KeepPolicy | undefined, floorDays: number): string[] {
  const tags = [`floor-${floorDays}`];
  for (const t of TIERS) {
    const tag = `${t}-${p?.[t] ?? 0}`;
    if ((p?.[t] ?? 0) > 0 && (holdDays(tag) ?? 0) > floorDays) tags.push(tag);
  }
  return tags;
}

export interface TierBackup {
  id: number;
  /** Real creation time. */
  createdAt: Date;
  /** May stand for a tier: the version exists and is good (not corrupt, missing or expired). */
  eligible: boolean;
}

export interface Assignment {
  id: number;
  /** The tiers it stands for, in TIERS order; [] for none. */
  tiers: Tier[];
  /** Real time until which it must stay locked: the longest of its tiers and the floor (and of its group). */
  keepUntil: Date;
  /** The KEEP_TAG value: its longest hold, which the lifecycle rules key on. */
  tag: string;
}

export interface AssignOptions {
  policy: KeepPolicy | undefined;
  /** IANA zone of the job (its schedule's); undefined: the machine's. */
  timezone: string | undefined;
  /** The target's retention days: no backup is held shorter. */
  floorDays: number;
  time?: PolicyTime;
  /**
   * Backups that must expire together (an incremental chain: a full and its
   * increments). Each group's members all keep the longest member's hold.
   * Default: every backup on its own.
   */
  groups?: (backups: readonly TierBackup[]) => TierBackup[][];
}

/**
 * The tiers and hold of each of one job's backups. The first eligible backup
 * of each period stands for it; ties in creation time go to the lower id.
 */
export function assignTiers(
  backups: readonly TierBackup[],
  o: AssignOptions,
): Map<number, Assignment> {
  const time = o.time ?? REAL_TIME;
  const sorted = [...backups].sort(
    (a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.id - b.id,
  );
  const out = new Map<number, Assignment>();
  const taken = new Map<Tier, Set<string>>(TIERS.map((t) => [t, new Set<string>()]));
  for (const b of sorted) {
    const created = toPolicy(time, b.createdAt);
    const tiers: Tier[] = [];
    if (b.eligible && o.policy) {
      for (const tier of TIERS) {
        const n = o.policy[tier] ?? 0;
        if (n <= 0) continue;
        const period = periodOf(tier, created, o.timezone);
        const seen = taken.get(tier) as Set<string>;
        if (seen.has(period)) continue;
        seen.add(period);
        tiers.push(tier);
      }
    }
    // The longest hold; on equal ends the floor, then the shorter tier, names the tag.
    let end = tierEnd("floor", o.floorDays, created);
    let tag = `floor-${o.floorDays}`;
    for (const tier of tiers) {
      const n = o.policy?.[tier] ?? 0;
      const e = tierEnd(tier, n, created);
      if (e.getTime() > end.getTime()) {
        end = e;
        tag = `${tier}-${n}`;
      }
    }
    out.set(b.id, { id: b.id, tiers, keepUntil: toReal(time, end), tag });
  }
  for (const group of o.groups?.(sorted) ?? []) {
    const members = group.map((g) => out.get(g.id)).filter((a) => a !== undefined);
    let longest: Assignment | undefined;
    for (const a of members) {
      if (!longest || holdOf(a) > holdOf(longest)) longest = a;
    }
    if (!longest) continue;
    for (const a of members) {
      if (a.keepUntil.getTime() < longest.keepUntil.getTime()) a.keepUntil = longest.keepUntil;
      if ((holdDays(a.tag) ?? 0) < (holdDays(longest.tag) ?? 0)) a.tag = longest.tag;
    }
  }
  return out;
}

function holdOf(a: Assignment): number {
  return a.keepUntil.getTime();
}

export interface RecordedBackup extends TierBackup {
  /** The retain-until recorded (what the server reported), if any. */
  retainUntil: Date | undefined;
  /** The tiers recorded, if any (null: made before tiers were recorded). */
  tiers: Tier[] | null;
  keepTag: string | null;
}

export interface Promotion {
  id: number;
  assignment: Assignment;
  /** Its lock must be extended to assignment.keepUntil. */
  extend: boolean;
  /** Its tag must be set to assignment.tag (a longer hold than the recorded tag). */
  retag: boolean;
}

/**
 * Backups whose recorded lock or tag is shorter than their assignment, and
 * whose hold has not passed: what an extend-only executor must do. Nothing
 * here ever shortens: a recorded lock or tag longer than the assignment (the
 * policy got shorter) is left as it is.
 */
export function promotions(
  backups: readonly RecordedBackup[],
  assigned: ReadonlyMap<number, Assignment>,
  now: Date,
  slackMs = 1000,
): Promotion[] {
  const out: Promotion[] = [];
  for (const b of backups) {
    const a = assigned.get(b.id);
    if (!a || !b.eligible || a.keepUntil.getTime() <= now.getTime()) continue;
    const extend =
      b.retainUntil === undefined || b.retainUntil.getTime() < a.keepUntil.getTime() - slackMs;
    const retag = b.keepTag === null || (holdDays(b.keepTag) ?? 0) < (holdDays(a.tag) ?? 0);
    if (extend || retag) out.push({ id: b.id, assignment: a, extend, retag });
  }
  return out;
}

/** Parses a catalog's tiers column ("daily,weekly"; "" for none). */
export function parseTiers(s: string | null): Tier[] | null {
  if (s === null) return null;
  return s.split(",").filter((t): t is Tier => (TIERS as readonly string[]).includes(t));
}
