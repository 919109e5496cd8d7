/**
 * Keep policies, fast: the tier arithmetic (src/retention/tiers.ts), the
 * lifecycle rules and their check (lifecycle.ts), init's plan with them, and
 * a backup run plus verify on the in-memory store (lock = longest tier, tags
 * on archive and manifest, promotion by extension, a re-tag and a weakened
 * rule reported). Expiry by a real server's lifecycle is proven in
 * retention-lifecycle.rgw.test.ts, tagging on RGW in retention.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { type BackupRow, Catalog } from "../src/catalog/catalog.js";
import { type KeepPolicy, loadConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { judgeKeep } from "../src/flows/doctor-keep.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { desiredLifecycle, planInit } from "../src/retention/bucket-check.js";
import { assignJob, recordedOf } from "../src/retention/keep.js";
import { expiryMechanism, tierRuleProblems, tierRules } from "../src/retention/lifecycle.js";
import { removalDate, steadyState } from "../src/retention/plan.js";
import {
  assignTiers,
  holdDays,
  KEEP_TAG,
  type PolicyTime,
  periodOf,
  promotions,
  type TierBackup,
  tierEnd,
  toPolicy,
  toReal,
} from "../src/retention/tiers.js";
import { MemoryBucket } from "../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const DAY = 86_400_000;
const at = (s: string) => new Date(s);
const b = (id: number, s: string, eligible = true): TierBackup => ({
  id,
  createdAt: at(s),
  eligible,
});
const log = createLogger({ level: "silent" });

describe("tiers", () => {
  it("the first backup of each day, ISO week, month and year in the job's zone stands for it", () => {
    // Sunday 2026-05-31 23:30 UTC is Monday 1 June 01:30 in Berlin: a new day, ISO week and month there, not in UTC.
    const backups = [
      b(1, "2026-05-31T12:00:00Z"),
      b(2, "2026-05-31T23:30:00Z"),
      b(3, "2026-06-01T10:00:00Z"),
    ];
    const policy: KeepPolicy = { daily: 7, weekly: 4, monthly: 12, yearly: 2 };
    const utc = assignTiers(backups, { policy, timezone: "UTC", floorDays: 1 });
    assert.deepEqual(utc.get(1)?.tiers, ["daily", "weekly", "monthly", "yearly"]);
    assert.deepEqual(utc.get(2)?.tiers, []);
    assert.deepEqual(utc.get(3)?.tiers, ["daily", "weekly", "monthly"]);
    const berlin = assignTiers(backups, { policy, timezone: "Europe/Berlin", floorDays: 1 });
    assert.deepEqual(berlin.get(2)?.tiers, ["daily", "weekly", "monthly"]);
    assert.deepEqual(berlin.get(3)?.tiers, []);
    assert.equal(periodOf("weekly", at("2027-01-01T12:00:00Z"), "UTC"), "2026-W53");
    assert.equal(periodOf("weekly", at("2027-01-04T12:00:00Z"), "UTC"), "2027-W01");
  });

  it("locks for the longest tier, never below the floor, and names the tag after it", () => {
    const a = assignTiers([b(1, "2026-01-31T06:00:00Z"), b(2, "2026-01-31T07:00:00Z")], {
      policy: { daily: 14, monthly: 1 },
      timezone: "UTC",
      floorDays: 30,
    });
    // A month from 31 January is 28 February: shorter than the 30-day floor.
    assert.equal(a.get(1)?.tag, "floor-30");
    assert.equal(a.get(1)?.keepUntil.toISOString(), "2026-03-02T06:00:00.000Z");
    assert.equal(a.get(2)?.tag, "floor-30");
    const m = assignTiers([b(1, "2026-03-31T06:00:00Z")], {
      policy: { daily: 14, monthly: 12, yearly: 3 },
      timezone: "UTC",
      floorDays: 7,
    });
    assert.equal(m.get(1)?.tag, "yearly-3");
    assert.equal(m.get(1)?.keepUntil.toISOString(), "2029-03-31T06:00:00.000Z");
    assert.equal(
      tierEnd("monthly", 1, at("2026-01-31T00:00:00Z")).toISOString(),
      "2026-02-28T00:00:00.000Z",
    );
  });

  it("a tag's rule never waits less than the hold it names (months 31 days, years 366)", () => {
    for (
      let d = Date.parse("2023-01-01T00:00:00Z");
      d < Date.parse("2029-01-01T00:00:00Z");
      d += 5 * DAY
    ) {
      for (const [tier, n] of [
        ["daily", 14],
        ["weekly", 8],
        ["monthly", 12],
        ["yearly", 3],
      ] as const) {
        const days = (tierEnd(tier, n, new Date(d)).getTime() - d) / DAY;
        assert.ok(
          days <= (holdDays(`${tier}-${n}`) ?? 0),
          `${tier}-${n} from ${new Date(d).toISOString()}`,
        );
      }
    }
  });

  it("a backup that cannot stand for a tier passes it on: promoted later by extension only", () => {
    // Backup 1, the month's first, turns out corrupt: backup 2 should have been the monthly one.
    const rows = [b(1, "2026-12-01T01:00:00Z", false), b(2, "2026-12-02T01:00:00Z")];
    const policy = { daily: 7, monthly: 6 };
    const assigned = assignTiers(rows, { policy, timezone: "UTC", floorDays: 7 });
    assert.deepEqual(assigned.get(2)?.tiers, ["daily", "monthly"]);
    const now = at("2026-12-03T00:00:00Z");
    const recorded = [
      { ...rows[0], retainUntil: at("2026-12-08T01:00:00Z"), tiers: [], keepTag: "floor-7" },
      {
        ...rows[1],
        retainUntil: at("2026-12-09T01:00:00Z"),
        tiers: ["daily" as const],
        keepTag: "floor-7",
      },
    ].map((r) => ({
      ...r,
      id: r.id as number,
      createdAt: r.createdAt as Date,
      eligible: r.eligible as boolean,
    }));
    const p = promotions(recorded, assigned, now);
    assert.deepEqual(
      p.map((x) => [x.id, x.extend, x.retag, x.assignment.tag]),
      [[2, true, true, "monthly-6"]],
    );
    // Locked longer than the assignment already (a policy that got shorter): nothing to do.
    const longer = recorded.map((r) => ({
      ...r,
      retainUntil: at("2030-01-01T00:00:00Z"),
      keepTag: "monthly-12",
    }));
    assert.deepEqual(promotions(longer, assigned, now), []);
  });

  it("an expired backup served its period and keeps its tier; a corrupt or missing one passes it on", () => {
    const row = (id: number, status: BackupRow["status"]) =>
      ({
        id,
        createdAt: `2026-11-0${id}T03:00:00.000Z`,
        status,
        retainUntil: null,
        tiers: null,
        keepTag: null,
      }) as unknown as BackupRow;
    const eligible = recordedOf([
      row(1, "expired"),
      row(2, "corrupt"),
      row(3, "missing"),
      row(4, "ok"),
    ]).map((r) => r.eligible);
    assert.deepEqual(eligible, [true, false, false, true]);
    const { assigned } = assignJob(
      [row(1, "expired"), row(2, "ok")],
      { keep: { monthly: 1 }, timezone: "UTC" },
      { retention: { mode: "COMPLIANCE", days: 1 } },
    );
    assert.deepEqual([assigned?.get(1)?.tiers, assigned?.get(2)?.tiers], [["monthly"], []]);
  });

  it("backups that must expire together keep the longest member's hold (the chains hook)", () => {
    const rows = [
      b(1, "2026-12-01T01:00:00Z"),
      b(2, "2026-12-01T02:00:00Z"),
      b(3, "2026-12-01T03:00:00Z"),
    ];
    const a = assignTiers(rows, {
      policy: { daily: 3, monthly: 2 },
      timezone: "UTC",
      floorDays: 1,
      groups: (all) => [all.slice(0, 3)],
    });
    for (const id of [1, 2, 3]) assert.equal(a.get(id)?.tag, "monthly-2");
    assert.equal(a.get(3)?.keepUntil.toISOString(), "2027-02-01T01:00:00.000Z");
  });

  it("an incremental chain expires as a unit: assignJob gives every member the longest member's hold", () => {
    // Backups 1 (full, 1 Dec: the month's first) and 2, 3 (its increments) form chain 1;
    // 4 is a full of its own (chain 4) on a later day.
    const row = (id: number, day: string, chainId: number) =>
      ({
        id,
        createdAt: `2026-12-${day}T03:00:00.000Z`,
        status: "ok",
        retainUntil: null,
        tiers: null,
        keepTag: null,
        chainId,
      }) as unknown as BackupRow;
    const rows = [row(1, "01", 1), row(2, "02", 1), row(3, "03", 1), row(4, "04", 4)];
    const { assigned } = assignJob(
      rows,
      { keep: { daily: 2, monthly: 3 }, timezone: "UTC" },
      { retention: { mode: "COMPLIANCE", days: 1 } },
    );
    const month = assigned?.get(1)?.keepUntil.toISOString();
    assert.equal(month, "2027-03-01T03:00:00.000Z");
    for (const id of [2, 3]) {
      assert.equal(assigned?.get(id)?.keepUntil.toISOString(), month, `member ${id}`);
      assert.equal(assigned?.get(id)?.tag, "monthly-3");
    }
    // Not in the chain: its own daily hold.
    assert.equal(assigned?.get(4)?.tag, "daily-2");
    assert.equal(assigned?.get(4)?.keepUntil.toISOString(), "2026-12-06T03:00:00.000Z");
  });

  it("policy time maps a compressed calendar onto real time and back", () => {
    const time: PolicyTime = { dayMs: 5000, origin: Date.parse("2026-12-02T00:00:00Z") };
    const real = new Date(time.origin + 7 * 5000);
    assert.equal(toPolicy(time, real).toISOString(), "2026-12-09T00:00:00.000Z");
    assert.equal(toReal(time, toPolicy(time, real)).getTime(), real.getTime());
  });
});

describe("tier lifecycle rules", () => {
  const tc = targetConfig({
    prefix: "p/",
    retention: { mode: "COMPLIANCE", days: 7 },
    lifecycleGraceDays: 2,
  });
  const policy: KeepPolicy = { daily: 3, weekly: 4, monthly: 12 };

  it("one rule per hold the policy can give, tag-filtered, waiting hold + grace", () => {
    const rules = tierRules(tc, [policy]);
    // daily-3 is shorter than the 7-day floor: it never names a backup's hold.
    assert.deepEqual(
      rules.map((r) => [r.id, r.tag?.value, r.expirationDays, r.noncurrentDays, r.prefix]),
      [
        ["immutd-keep-floor-7:p/", "floor-7", 9, 1, "p/"],
        ["immutd-keep-weekly-4:p/", "weekly-4", 30, 1, "p/"],
        ["immutd-keep-monthly-12:p/", "monthly-12", 374, 1, "p/"],
      ],
    );
    assert.deepEqual(tierRuleProblems(rules, tc, [policy]), []);
    assert.deepEqual(tierRules(tc, [undefined]), []);
  });

  it("reports a rule removed, weakened or re-filtered, and a foreign rule expiring tagged backups early", () => {
    const rules = tierRules(tc, [policy]);
    const weakened = rules.map((r) =>
      r.tag?.value === "monthly-12" ? { ...r, expirationDays: 30 } : r,
    );
    assert.match(
      tierRuleProblems(weakened, tc, [policy])
        .map((p) => p.message)
        .join("\n"),
      /immutd-keep-monthly-12:p\/ expires current versions tagged immutd-keep=monthly-12 after 30 days, sooner than their monthly-12 hold \(372 days\)/,
    );
    const gone = rules.filter((r) => r.tag?.value !== "weekly-4");
    assert.match(
      tierRuleProblems(gone, tc, [policy])[0]?.message ?? "",
      /has no lifecycle rule immutd-keep-weekly-4:p\//,
    );
    const refiltered = rules.map((r) =>
      r.tag?.value === "floor-7" ? { ...r, tag: { key: KEEP_TAG, value: "monthly-12" } } : r,
    );
    assert.match(
      tierRuleProblems(refiltered, tc, [policy])
        .map((p) => p.message)
        .join("\n"),
      /is filtered by prefix "p\/" and tag immutd-keep=monthly-12/,
    );
    const foreign = [...rules, { id: "cleanup", enabled: true, prefix: "", expirationDays: 60 }];
    assert.match(
      tierRuleProblems(foreign, tc, [policy])
        .map((p) => p.message)
        .join("\n"),
      /cleanup expires current versions after 60 days, sooner than their monthly-12 hold/,
    );
    // Later only costs storage.
    const longer = rules.map((r) => ({ ...r, expirationDays: (r.expirationDays ?? 0) + 100 }));
    assert.deepEqual(tierRuleProblems(longer, tc, [policy]), []);
  });

  it("init adds the tier rules, lengthens a weakened one, never shortens a longer one; none on B2", () => {
    const lock = {
      versioning: "Enabled" as const,
      objectLock: true,
      defaultRetention: { mode: "COMPLIANCE" as const, days: 7 },
    };
    const plan = planInit({ exists: true, lock, lifecycle: [] }, tc, [policy]);
    assert.ok(
      plan.lifecycle?.some((r) => r.id === "immutd-keep-monthly-12:p/" && r.expirationDays === 374),
    );
    const weakened = (plan.lifecycle ?? []).map((r) =>
      r.tag?.value === "weekly-4"
        ? { ...r, expirationDays: 1, tag: { key: KEEP_TAG, value: "x" } }
        : r,
    );
    const fix = planInit({ exists: true, lock, lifecycle: weakened }, tc, [policy]);
    const w = fix.lifecycle?.find((r) => r.id === "immutd-keep-weekly-4:p/");
    assert.equal(w?.expirationDays, 30);
    assert.deepEqual(w?.tag, { key: KEEP_TAG, value: "weekly-4" });
    const longer = (plan.lifecycle ?? []).map((r) => (r.tag ? { ...r, expirationDays: 999 } : r));
    assert.equal(
      planInit({ exists: true, lock, lifecycle: longer }, tc, [policy]).lifecycle,
      undefined,
    );
    const b2 = { ...tc, endpoint: "https://s3.eu-central-003.backblazeb2.com" };
    assert.equal(expiryMechanism(b2.endpoint).kind, "none");
    const onB2 = planInit({ exists: true, lock, lifecycle: [] }, b2, [policy]);
    assert.ok(!onB2.lifecycle?.some((r) => r.tag));
    assert.ok(
      onB2.steps.some((s) => s.setting === "keep-policy expiry" && s.action === "cannot-fix"),
    );
  });

  it("doctor: OK with the rules, WARN where the provider cannot expire by tag or a rule was weakened, nothing without a policy", () => {
    const job = jobConfig({ name: "j", target: tc.name, keep: policy });
    const cfg = (t: typeof tc) =>
      fullConfig({
        catalog: "/x",
        masterKey: new Secret(randomBytes(32)),
        targets: { [t.name]: t },
        jobs: [job],
      });
    const rules = tierRules(tc, [policy]);
    assert.deepEqual(
      judgeKeep(rules, tc, cfg(tc)).map((c) => c.status),
      ["OK"],
    );
    const weak = rules.map((r) => ({ ...r, expirationDays: 2 }));
    assert.deepEqual(
      judgeKeep(weak, tc, cfg(tc)).map((c) => c.status),
      ["WARN"],
    );
    const hetzner = { ...tc, endpoint: "https://fsn1.your-objectstorage.com" };
    const [h] = judgeKeep([], hetzner, cfg(hetzner));
    assert.equal(h?.status, "WARN");
    assert.match(
      h?.message ?? "",
      /nothing will ever remove them: Hetzner Object Storage does not support object tagging/,
    );
    const none = fullConfig({
      catalog: "/x",
      masterKey: new Secret(randomBytes(32)),
      targets: { [tc.name]: tc },
      jobs: [jobConfig({ name: "j", target: tc.name })],
    });
    assert.deepEqual(judgeKeep([], tc, none), []);
  });

  it("removal dates and the steady state follow the rules", () => {
    assert.equal(
      removalDate(at("2026-12-01T00:00:00Z"), "weekly-4", 2)?.toISOString(),
      "2027-01-01T00:00:00.000Z",
    );
    assert.equal(removalDate(at("2026-12-01T00:00:00Z"), null, 2), undefined);
    // One backup a day for two years, {daily: 7, weekly: 4, monthly: 6}, floor 7, grace 0:
    const runs: Date[] = [];
    for (let d = 0; d < 730; d++) runs.push(new Date(Date.parse("2025-01-01T03:00:00Z") + d * DAY));
    const s = steadyState({
      policy: { daily: 7, weekly: 4, monthly: 6 },
      timezone: "UTC",
      floorDays: 7,
      graceDays: 0,
      runs,
    });
    // floor/daily (7 d + 1): 8; weekly (28 d + 1) adds the Mondays not already counted: 3-4; monthly (186 d + 1): 6-7.
    assert.ok(s.backups >= 17 && s.backups <= 20, JSON.stringify(s));
  });
});

describe("keep policy: backup and verify (memory store)", () => {
  const work = mkdtempSync(join(tmpdir(), "immutd-tiers-"));
  const tree = join(work, "tree");
  mkdirSync(tree, { recursive: true });
  writeFileSync(join(tree, "a.txt"), "alpha\n");

  async function setup(policy: KeepPolicy) {
    const clock = { t: Date.parse("2026-11-30T03:00:00Z") };
    const now = () => new Date(clock.t);
    const bucket = new MemoryBucket(`k${randomBytes(3).toString("hex")}`, {
      defaultRetention: { mode: "COMPLIANCE", days: 7 },
    });
    bucket.now = now;
    const tc = targetConfig({
      name: "mem",
      bucket: bucket.name,
      retention: { mode: "COMPLIANCE", days: 7 },
    });
    const job = jobConfig({
      name: "tree",
      target: "mem",
      paths: [tree],
      keep: policy,
      timezone: "UTC",
    });
    const catalog = Catalog.open(join(work, `${bucket.name}.db`));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { mem: tc },
      jobs: [job],
    });
    const target = bucket.target("mem");
    // The rules `immutd init` writes for the policy (verify reports them missing otherwise).
    await target.admin?.putLifecycle(desiredLifecycle(tc, [policy]));
    const backup = async () => {
      const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
      assert.equal(r.status, "succeeded", r.error);
      return r;
    };
    const verify = (o: { deep?: true } = {}) =>
      runVerify({ config, catalog, targets: { mem: target }, log, now, ...o });
    return { clock, bucket, tc, job, catalog, config, target, backup, verify };
  }

  it("locks each backup for its longest tier and tags its archive and manifest", async () => {
    const s = await setup({ daily: 10, weekly: 4, monthly: 3 });
    const first = await s.backup(); // Monday 30 November: daily, weekly, monthly (November)
    s.clock.t += 3_600_000;
    const second = await s.backup(); // the same day: no tier, the floor
    s.clock.t = Date.parse("2026-12-01T03:00:00Z");
    const third = await s.backup(); // Tuesday 1 December: daily, monthly (December)
    const rows = s.catalog.listBackups();
    assert.deepEqual(
      rows.map((r) => [r.tiers, r.keepTag, r.retainUntil?.slice(0, 10)]),
      [
        ["daily,weekly,monthly", "monthly-3", "2027-02-28"],
        ["", "floor-7", "2026-12-07"],
        ["daily,monthly", "monthly-3", "2027-03-01"],
      ],
    );
    assert.equal(first.retainUntil?.toISOString().slice(0, 10), "2027-02-28");
    assert.equal(second.retainUntil?.toISOString().slice(0, 10), "2026-12-07");
    assert.equal(third.retainUntil?.toISOString().slice(0, 10), "2027-03-01");
    for (const r of rows) {
      assert.equal((await s.target.admin?.tags(r.key, r.versionId))?.[KEEP_TAG], r.keepTag);
      assert.equal(
        (await s.target.admin?.tags(r.manifestKey as string, r.manifestVersionId as string))?.[
          KEEP_TAG
        ],
        r.keepTag,
      );
      const m = await s.target.reader.retention(
        r.manifestKey as string,
        r.manifestVersionId as string,
      );
      assert.equal(m?.retainUntil.toISOString(), r.retainUntil);
    }
    const report = await s.verify();
    assert.deepEqual(report.findings, []);
  });

  it("a delete marker the tier rule put after the hold is no warning; one before it still is", async () => {
    const s = await setup({ daily: 2 });
    await s.backup(); // the floor (7 days) outlasts daily: 2, so floor-7: its rule expires it after 7 + 7 (grace) days
    const [row] = s.catalog.listBackups();
    assert.ok(row);
    assert.equal(row.keepTag, "floor-7");
    s.bucket.store("writer").putDeleteMarker(row.key);
    const markers = (r: Awaited<ReturnType<typeof s.verify>>) =>
      r.warnings.filter((w) => w.kind === "delete-marker").map((w) => w.versionId);
    // Day 1: far too early for the rule: someone hid it.
    s.clock.t += 86_400_000;
    assert.deepEqual(markers(await s.verify()), [row.versionId]);
    // keepLatestLocked keeps the newest locked (and checked) past its hold.
    s.clock.t += 5 * 86_400_000;
    assert.deepEqual(markers(await s.verify()), [row.versionId]);
    s.clock.t += 5 * 86_400_000;
    assert.deepEqual(markers(await s.verify()), [row.versionId]);
    // Day 15: 7 + 7 days have passed: the marker is the rule's own expiry.
    s.clock.t += 4 * 86_400_000;
    const late = await s.verify();
    assert.equal(s.catalog.backup(row.id)?.status, "ok", "still locked, so still checked");
    assert.deepEqual(markers(late), [], JSON.stringify(late.warnings));
  });

  it("attacker: the writer re-tags a monthly backup to expire with the floor: the lock holds, verify reports and re-tags it", async () => {
    const s = await setup({ daily: 10, monthly: 3 });
    await s.backup();
    const [row] = s.catalog.listBackups();
    assert.ok(row);
    await s.target.writer.putTags(row.key, row.versionId, { [KEEP_TAG]: "floor-7" });
    // The lock does not care about tags: deleting the version is still refused.
    const v = s.bucket.versions.find((x) => x.versionId === row.versionId);
    assert.ok(
      v?.retention && v.retention.retainUntil.getTime() > Date.parse("2027-02-01T00:00:00Z"),
    );
    const report = await s.verify({ deep: true });
    const f = report.findings.filter((x) => x.kind === "keep-tag");
    assert.equal(f.length, 1, JSON.stringify(report.findings));
    assert.match(
      f[0]?.message ?? "",
      /is tagged immutd-keep=floor-7, not immutd-keep=monthly-3: the lifecycle rules would expire it before its tier has passed \(its lock still holds until then\); verify tagged it again/,
    );
    assert.equal((await s.target.admin?.tags(row.key, row.versionId))?.[KEEP_TAG], "monthly-3");
    assert.deepEqual((await s.verify()).findings, []);
  });

  it("a longer policy applies at once: verify promotes existing backups by extending their locks and tags", async () => {
    const s = await setup({ daily: 10 });
    await s.backup();
    const [before] = s.catalog.listBackups();
    assert.equal(before?.keepTag, "daily-10");
    s.config.jobs[0] = { ...s.job, keep: { daily: 10, yearly: 2 } };
    const report = await s.verify();
    // Until `immutd init` runs again, the new hold has no rule: said, and nothing expires early meanwhile.
    assert.deepEqual(
      report.findings.map((f) => f.kind),
      ["lifecycle-tier-rule"],
    );
    assert.match(report.findings[0]?.message ?? "", /no lifecycle rule immutd-keep-yearly-2/);
    assert.deepEqual(
      report.promoted.map((p) => [p.tag, p.retainUntil?.slice(0, 10), p.problem]),
      [["yearly-2", "2028-11-30", undefined]],
    );
    const [after] = s.catalog.listBackups();
    assert.equal(after?.keepTag, "yearly-2");
    await s.target.admin?.putLifecycle(desiredLifecycle(s.tc, [{ daily: 10, yearly: 2 }]));
    assert.equal(
      (
        await s.target.reader.retention(after?.key as string, after?.versionId as string)
      )?.retainUntil
        .toISOString()
        .slice(0, 10),
      "2028-11-30",
    );
    assert.equal(
      (
        await s.target.admin?.tags(after?.manifestKey as string, after?.manifestVersionId as string)
      )?.[KEEP_TAG],
      "yearly-2",
    );
    // A shorter policy changes nothing that exists.
    s.config.jobs[0] = { ...s.job, keep: { daily: 1 } };
    const again = await s.verify();
    assert.deepEqual(again.promoted, []);
    assert.deepEqual(again.findings, []);
  });

  it("attacker: a tier rule weakened behind immutd's back is a verify finding", async () => {
    const s = await setup({ daily: 10, monthly: 3 });
    await s.backup();
    const admin = s.target.admin as NonNullable<typeof s.target.admin>;
    await admin.putLifecycle(
      tierRules(s.tc, [{ daily: 10, monthly: 3 }]).map((r) => ({ ...r, expirationDays: 8 })),
    );
    const report = await s.verify();
    const f = report.findings.filter((x) => x.kind === "lifecycle-tier-rule");
    assert.ok(f.length >= 1, JSON.stringify(report.findings));
    assert.match(
      f.map((x) => x.message).join("\n"),
      /immutd-keep-monthly-3 expires current versions tagged immutd-keep=monthly-3 after 8 days/,
    );
  });

  it("config: keep per job and per target, unknown tiers refused", () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-keepcfg-"));
    const file = join(dir, "c.yaml");
    const base = (extraTarget: string, extraJob: string) => `masterKey: "${"ab".repeat(32)}"
catalog: ${join(dir, "c.db")}
targets:
  t:
    endpoint: https://s3.example.com
    bucket: bucket-one
${extraTarget}    credentials:
      writer: { accessKeyId: a, secretAccessKey: b }
      reader: { accessKeyId: a, secretAccessKey: b }
jobs:
  - name: j
    target: t
    paths: [/tmp]
${extraJob}  - name: k
    target: t
    paths: [/tmp]
`;
    writeFileSync(
      file,
      base("    keep: { daily: 14, weekly: 8 }\n", "    keep: { monthly: 12 }\n"),
    );
    const c = loadConfig(file).config;
    assert.deepEqual(c.jobs[0]?.keep, { monthly: 12 });
    assert.equal(c.jobs[1]?.keep, undefined);
    assert.deepEqual(c.targets.t?.keep, { daily: 14, weekly: 8 });
    writeFileSync(file, base("", "    keep: { hourly: 24 }\n"));
    assert.throws(() => loadConfig(file), /hourly/);
  });
});

describe("catalog schema 6: tiers and keep tag", () => {
  it("migrates a schema-5 catalog: every row kept, tiers and tag NULL (never expired by a rule), then recorded", () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-tiers-cat-"));
    const path = join(dir, "v5.db");
    const c5 = Catalog.open(path);
    const runId = c5.startRun({
      job: "etc",
      target: "t",
      objectKey: "h/etc/k.tar.gz",
      startedAt: new Date(),
    });
    const id = c5.recordBackup({
      runId,
      job: "etc",
      target: "t",
      bucket: "b",
      key: "h/etc/k.tar.gz",
      versionId: "v1",
      size: 10,
      sha256: "ab".repeat(32),
      compression: "gzip",
      sseKey: randomBytes(32),
      keyDerivation: "hkdf",
      createdAt: new Date("2026-11-01T03:00:00Z"),
      retentionMode: "COMPLIANCE",
      retainUntil: new Date("2026-12-01T03:00:00Z"),
      status: "ok",
      files: 3,
    });
    c5.close();
    // Back to what a schema-5 immutd left.
    const raw = new Database(path);
    raw.exec(
      "DROP INDEX backups_parent; ALTER TABLE backups DROP COLUMN parent_id; ALTER TABLE backups DROP COLUMN chain_id; ALTER TABLE backups DROP COLUMN tiers; ALTER TABLE backups DROP COLUMN keep_tag; PRAGMA user_version = 5",
    );
    raw.close();
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
    const row = c.backup(id);
    assert.equal(row?.versionId, "v1");
    assert.equal(row?.retainUntil, "2026-12-01T03:00:00.000Z");
    assert.equal(row?.tiers, null);
    assert.equal(row?.keepTag, null);
    c.setBackupTiers(id, ["daily", "monthly"], "monthly-12");
    assert.deepEqual([c.backup(id)?.tiers, c.backup(id)?.keepTag], ["daily,monthly", "monthly-12"]);
    c.close();
  });
});
