/**
 * The pure bucket decisions shared by backup's preflight, verify, doctor and
 * init: what counts as a problem, and what init changes (only ever stricter).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  desiredLifecycle,
  lifecycleProblems,
  lockProblems,
  planInit,
} from "../src/retention/bucket-check.js";
import type { LifecycleRule } from "../src/store/store.js";
import { targetConfig } from "./support/target.js";

const tc = targetConfig({ name: "off", bucket: "b", retention: { mode: "COMPLIANCE", days: 30 } });
const locked = (mode: "COMPLIANCE" | "GOVERNANCE", days: number) => ({
  versioning: "Enabled" as const,
  objectLock: true,
  defaultRetention: { mode, days },
});

describe("lockProblems", () => {
  it("accepts a default retention at least as strong as configured", () => {
    assert.deepEqual(lockProblems(locked("COMPLIANCE", 30), tc), []);
    assert.deepEqual(lockProblems(locked("COMPLIANCE", 365), tc), []);
  });

  it("names what is weaker, in preflight's order", () => {
    assert.deepEqual(
      lockProblems({ versioning: "Off", objectLock: false }, tc).map((p) => p.kind),
      ["object-lock-disabled"],
    );
    assert.deepEqual(
      lockProblems({ versioning: "Enabled", objectLock: true }, tc).map((p) => p.kind),
      ["no-default-retention"],
    );
    const weak = lockProblems(locked("GOVERNANCE", 30), tc);
    assert.deepEqual(
      weak.map((p) => p.kind),
      ["default-retention-weak"],
    );
    assert.match(
      weak[0]?.message ?? "",
      /bucket b \(target off\).*GOVERNANCE 30 days, weaker than the configured COMPLIANCE 30 days/,
    );
    assert.match(weak[0]?.fix ?? "", /immutd init off/);
    assert.equal(lockProblems(locked("COMPLIANCE", 29), tc)[0]?.kind, "default-retention-weak");
    // GOVERNANCE configured: COMPLIANCE in the bucket is stricter, fine.
    assert.deepEqual(
      lockProblems(locked("COMPLIANCE", 30), {
        ...tc,
        retention: { mode: "GOVERNANCE", days: 30 },
      }),
      [],
    );
  });
});

describe("lifecycleProblems", () => {
  const rule = (over: Partial<LifecycleRule>): LifecycleRule => ({
    id: "r",
    enabled: true,
    prefix: "",
    ...over,
  });

  it("flags enabled rules that expire current versions inside the retention, where they reach backups", () => {
    assert.equal(lifecycleProblems([rule({ expirationDays: 29 })], tc).length, 1);
    assert.equal(lifecycleProblems([rule({ expirationDays: 30 })], tc).length, 0);
    assert.equal(lifecycleProblems([rule({ expirationDays: 1, enabled: false })], tc).length, 0);
    assert.equal(
      lifecycleProblems([rule({ expirationDate: new Date("2030-01-01") })], tc).length,
      1,
    );
    const prefixed = { ...tc, prefix: "web-1/" };
    assert.equal(
      lifecycleProblems([rule({ expirationDays: 1, prefix: "other/" })], prefixed).length,
      0,
    );
    assert.equal(
      lifecycleProblems([rule({ expirationDays: 1, prefix: "web-1/etc/" })], prefixed).length,
      1,
    );
    assert.equal(
      lifecycleProblems([rule({ expirationDays: 1, prefix: "web" })], prefixed).length,
      1,
    );
  });

  it("does not mind immutd's own cleanup rules", () => {
    assert.deepEqual(lifecycleProblems(desiredLifecycle(tc), tc), []);
  });
});

describe("planInit", () => {
  it("creates a missing bucket with everything", () => {
    const p = planInit({ exists: false }, tc);
    assert.equal(p.createBucket, true);
    assert.deepEqual(p.defaultRetention, { mode: "COMPLIANCE", days: 30 });
    assert.deepEqual(
      p.lifecycle?.map((r) => [
        r.id,
        r.noncurrentDays,
        r.expiredObjectDeleteMarker,
        r.abortIncompleteDays,
      ]),
      [
        ["immutd-noncurrent-versions", 37, undefined, undefined],
        ["immutd-expired-delete-markers", undefined, true, undefined],
        ["immutd-abort-incomplete-uploads", undefined, undefined, 1],
      ],
    );
    assert.deepEqual(p.problems, []);
  });

  it("changes nothing on a bucket that is exactly as configured", () => {
    const p = planInit(
      { exists: true, lock: locked("COMPLIANCE", 30), lifecycle: desiredLifecycle(tc) },
      tc,
    );
    assert.equal(p.createBucket, false);
    assert.equal(p.defaultRetention, undefined);
    assert.equal(p.lifecycle, undefined);
    assert.ok(
      p.steps.every((s) => s.action === "ok"),
      JSON.stringify(p.steps),
    );
  });

  it("only tightens: longer days, GOVERNANCE to COMPLIANCE, never back", () => {
    assert.deepEqual(
      planInit({ exists: true, lock: locked("GOVERNANCE", 10), lifecycle: [] }, tc)
        .defaultRetention,
      { mode: "COMPLIANCE", days: 30 },
    );
    const stricter = planInit({ exists: true, lock: locked("COMPLIANCE", 90), lifecycle: [] }, tc);
    assert.equal(stricter.defaultRetention, undefined);
    assert.equal(stricter.steps.find((s) => s.setting === "default retention")?.action, "kept");
    // Config GOVERNANCE 60, bucket COMPLIANCE 10: keep COMPLIANCE, raise the days.
    assert.deepEqual(
      planInit(
        { exists: true, lock: locked("COMPLIANCE", 10), lifecycle: [] },
        { ...tc, retention: { mode: "GOVERNANCE", days: 60 } },
      ).defaultRetention,
      { mode: "COMPLIANCE", days: 60 },
    );
  });

  it("adds missing rules, lengthens or enables its own, keeps longer ones and others' rules as they are", () => {
    const [noncurrent, markers] = desiredLifecycle(tc) as [
      LifecycleRule,
      LifecycleRule,
      LifecycleRule,
    ];
    const foreign: LifecycleRule = {
      id: "theirs",
      enabled: true,
      prefix: "x/",
      expirationDays: 3,
      native: { raw: 1 },
    };
    const p = planInit(
      {
        exists: true,
        lock: locked("COMPLIANCE", 30),
        lifecycle: [foreign, { ...noncurrent, noncurrentDays: 10 }, { ...markers, enabled: false }],
      },
      tc,
    );
    const byId = new Map(p.lifecycle?.map((r) => [r.id, r]));
    assert.equal(
      byId.get("theirs"),
      foreign,
      "foreign rule passed through untouched (native kept)",
    );
    assert.equal(byId.get("immutd-noncurrent-versions")?.noncurrentDays, 37);
    assert.equal(byId.get("immutd-expired-delete-markers")?.enabled, true);
    assert.equal(byId.get("immutd-abort-incomplete-uploads")?.abortIncompleteDays, 1);

    const longer = planInit(
      {
        exists: true,
        lock: locked("COMPLIANCE", 30),
        lifecycle: [{ ...noncurrent, noncurrentDays: 400 }, ...desiredLifecycle(tc).slice(1)],
      },
      tc,
    );
    assert.equal(longer.lifecycle, undefined, "a longer noncurrent expiry is kept");
    assert.equal(longer.steps.find((s) => s.setting.includes("noncurrent"))?.action, "kept");
  });

  it("reports what it cannot fix: no Object Lock, and others' rules that expire backups early", () => {
    const noLock = planInit(
      { exists: true, lock: { versioning: "Off", objectLock: false }, lifecycle: [] },
      tc,
    );
    assert.deepEqual(
      noLock.problems.map((p) => p.kind),
      ["object-lock-disabled"],
    );
    assert.equal(noLock.defaultRetention, undefined);
    assert.equal(noLock.lifecycle, undefined);
    const early = planInit(
      {
        exists: true,
        lock: locked("COMPLIANCE", 30),
        lifecycle: [{ id: "theirs", enabled: true, prefix: "", expirationDays: 7 }],
      },
      tc,
    );
    assert.deepEqual(
      early.problems.map((p) => p.kind),
      ["lifecycle-expires-current"],
    );
    assert.ok(
      early.lifecycle?.some((r) => r.id === "theirs" && r.expirationDays === 7),
      "left in place",
    );
  });

  it("names its rules by prefix, so that targets sharing a bucket do not collide", () => {
    const ids = desiredLifecycle({ ...tc, prefix: "web-1/" }).map((r) => [r.id, r.prefix]);
    assert.deepEqual(ids[0], ["immutd-noncurrent-versions:web-1/", "web-1/"]);
  });
});
