/**
 * Proof on a real Ceph RGW that a keep policy's backups leave the bucket by
 * the server's lifecycle alone, exactly when the policy says, and never while
 * locked. The RGW runs with a short lifecycle day (rgw lc debug interval: a
 * "day" lasts a few seconds; test/support/lc-server.ts starts one unless
 * IMMUTD_TEST_S3_LC_ENV names it), and the keep policy's calendar is
 * compressed the same way (PolicyTime), so three simulated weeks take minutes.
 *
 * Policy {daily: 3, weekly: 2}, two backups a simulated day (06:00 and 18:00
 * UTC), retention floor 1 day, lifecycleGraceDays 0. Each backup is made as a
 * run makes it: upload, record, then keepNewBackup (tiers from the catalog,
 * lock, tag); the bucket has the lifecycle rules `immutd init` writes for the
 * policy. The bucket has Object Lock but no default retention: RGW counts a
 * default retention in real days (at least one), which would keep every
 * version a real day; the floor is set on each version explicitly, as for
 * every backup. After the last backup the daemon's keepLatestLocked runs once.
 *
 * A poller lists every version each second and notes when each version ID
 * disappears. At the end: every backup whose tier (plus lifecycle latency) has
 * passed is gone; every backup still inside its tier, and the newest, is
 * present and locked COMPLIANCE; no version disappeared before its
 * retain-until. The tiers are recomputed here independently of
 * src/retention/tiers.ts (UTC days, ISO weeks by day number).
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Catalog } from "../src/catalog/catalog.js";
import type { KeepPolicy } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { extendLatestLocks } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { objectKey } from "../src/repo/naming.js";
import { desiredLifecycle, planInit } from "../src/retention/bucket-check.js";
import { keepNewBackup } from "../src/retention/keep.js";
import { steadyState } from "../src/retention/plan.js";
import { KEEP_TAG, type PolicyTime, toPolicy, toReal } from "../src/retention/tiers.js";
import { closeTarget, openTarget } from "../src/store/s3.js";
import type { Target } from "../src/store/store.js";
import { type LcServer, lcServer } from "./support/lc-server.js";
import { rgwTarget, uniqueBucket } from "./support/s3env.js";
import { fullConfig, jobConfig } from "./support/target.js";

const DAY = 86_400_000;
const POLICY: KeepPolicy = { daily: 3, weekly: 2 };
const DAYS = 21;
const SLOTS = [0.25, 0.75];
/** Lifecycle latency allowed, in lifecycle days: a pass to place the delete marker, one to remove. */
const SLACK_DAYS = 2.5;

interface Made {
  i: number;
  key: string;
  versionId: string;
  size: number;
  /** Policy-time creation (ms). */
  p: number;
  expectedTag: string;
  holdDays: number;
  /** Real retain-until the server reported after locking. */
  lockedUntil: number;
  goneAt?: number;
}

describe("keep policy: lifecycle expiry on RGW with a short lifecycle day", {
  timeout: 900_000,
}, () => {
  let server: LcServer;
  let dir: string;
  before(() => {
    server = lcServer(5);
    dir = mkdtempSync(join(tmpdir(), "immutd-lc-"));
  });
  after(() => {
    server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("removes exactly the backups outside {daily: 3, weekly: 2}, keeps the rest locked, removes no locked version", async (t) => {
    const t0 = Date.now();
    const env = server.env;
    const D = server.daySeconds * 1000;
    const bucket = uniqueBucket("lc");
    const tc = rgwTarget(env, bucket, {
      retention: { mode: "COMPLIANCE", days: 1 },
      lifecycleGraceDays: 0,
    });
    const target: Target = openTarget(tc);
    const admin = target.admin as NonNullable<Target["admin"]>;
    const catalog = Catalog.open(join(dir, "catalog.db"));
    const log = createLogger({ level: "silent" });
    const job = jobConfig({ name: "lc", target: tc.name, keep: POLICY, timezone: "UTC" });
    try {
      await admin.createBucket();
      const rules = desiredLifecycle(tc, [POLICY]);
      await admin.putLifecycle(rules);
      // init reads them back as its own: nothing left to add or strengthen.
      const again = planInit(
        { exists: true, lock: await admin.lockState(), lifecycle: await admin.lifecycle() },
        tc,
        [POLICY],
      );
      assert.equal(again.lifecycle, undefined, JSON.stringify(again.steps));
      assert.deepEqual(
        rules.filter((r) => r.tag).map((r) => `${r.tag?.value}:${r.expirationDays}`),
        ["floor-1:1", "daily-3:3", "weekly-2:14"],
      );

      // Policy day 0 starts at the first policy-time UTC midnight after now.
      const R0 = Date.now() + 1000;
      const time: PolicyTime = { dayMs: D, origin: R0 };
      const P0 = Math.ceil(toPolicy(time, new Date(R0)).getTime() / DAY) * DAY;
      const realAt = (p: number) => toReal(time, new Date(p)).getTime();

      const made: Made[] = [];
      const seenDays = new Set<number>();
      const seenWeeks = new Set<number>();
      let stop = false;
      const poller = (async () => {
        while (!stop) {
          const present = new Set(
            (await admin.listVersions("")).filter((v) => !v.deleteMarker).map((v) => v.versionId),
          );
          const now = Date.now();
          for (const m of made)
            if (m.goneAt === undefined && !present.has(m.versionId)) m.goneAt = now;
          await sleep(1000);
        }
      })();

      let keptAtLastBackup = { objects: 0, bytes: 0 };
      try {
        for (let day = 0; day < DAYS; day++) {
          for (const slot of SLOTS) {
            const p = P0 + (day + slot) * DAY;
            const wait = realAt(p) - Date.now();
            if (wait > 0) await sleep(wait);
            // The tier follows the moment the backup is actually made: on a loaded machine the
            // previous backup can take longer than the gap between slots (1.25 s here), and this
            // one then falls on the next policy day, where it is that day's first.
            const now = new Date();
            const actualP = toPolicy(time, now).getTime();
            // Independent of tiers.ts: UTC day number, ISO week = (day number + 3) / 7.
            const dayNo = Math.floor(actualP / DAY);
            const weekNo = Math.floor((dayNo + 3) / 7);
            const daily = !seenDays.has(dayNo);
            const weekly = !seenWeeks.has(weekNo);
            seenDays.add(dayNo);
            seenWeeks.add(weekNo);
            const expectedTag = weekly ? "weekly-2" : daily ? "daily-3" : "floor-1";
            const holdDays = weekly ? 14 : daily ? 3 : 1;

            const key = objectKey({
              prefix: "",
              host: "lc",
              job: job.name,
              at: toPolicy(time, now),
              compression: "gzip",
            });
            const body = randomBytes(2048 + made.length * 64);
            const sseKey = randomBytes(32);
            const runId = catalog.startRun({
              job: job.name,
              target: tc.name,
              objectKey: key,
              startedAt: now,
            });
            const { versionId } = await target.writer.upload({
              key,
              body: Readable.from([body]),
              sseKey,
            });
            const backupId = catalog.recordBackup({
              runId,
              job: job.name,
              target: tc.name,
              bucket,
              key,
              versionId,
              size: body.length,
              sha256: createHash("sha256").update(body).digest("hex"),
              compression: "gzip",
              sseKey,
              keyDerivation: "test",
              createdAt: now,
              retentionMode: null,
              retainUntil: null,
              status: "unlocked",
              files: 0,
            });
            const floor = {
              mode: "COMPLIANCE" as const,
              retainUntil: toReal(time, new Date(toPolicy(time, now).getTime() + DAY)),
            };
            const r = await keepNewBackup({
              catalog,
              target,
              job,
              tc,
              backupId,
              key,
              versionId,
              floor,
              now,
              time,
            });
            assert.equal(r.lock.problem, undefined, `backup ${made.length}: ${r.lock.problem}`);
            assert.equal(r.tagProblem, undefined);
            assert.equal(
              r.keep?.tag,
              expectedTag,
              `backup ${made.length} planned on policy day ${day}+${slot}, made on day ${(actualP - P0) / DAY}`,
            );
            const tags = await admin.tags(key, versionId);
            assert.equal(tags[KEEP_TAG], expectedTag);
            catalog.finishRun(runId, {
              status: "succeeded",
              bytes: body.length,
              files: 0,
              warnings: 0,
            });
            made.push({
              i: made.length,
              key,
              versionId,
              size: body.length,
              p: toPolicy(time, now).getTime(),
              expectedTag,
              holdDays,
              lockedUntil: r.lock.after?.retainUntil.getTime() ?? 0,
            });
          }
        }
        // What the bucket holds right after the last backup: the figure against the steady state.
        const present = (await admin.listVersions("")).filter((v) => !v.deleteMarker);
        keptAtLastBackup = {
          objects: present.length,
          bytes: present.reduce((n, v) => n + v.size, 0),
        };

        // The daemon's keepLatestLocked, once: the newest backup must outlive its tier.
        const config = fullConfig({
          catalog: catalog.path,
          targets: { [tc.name]: tc },
          jobs: [job],
          masterKey: new Secret(randomBytes(32)),
        });
        const ext = await extendLatestLocks({
          config,
          catalog,
          targets: { [tc.name]: target },
          log,
        });
        assert.equal(ext[0]?.action, "extended", JSON.stringify(ext));

        // The end: a moment when no backup is between its lock's end and its removal deadline.
        const newest = made.at(-1) as Made;
        const lockEnd = (m: Made) => m.p + m.holdDays * DAY;
        const deadline = (m: Made) => m.p + (m.holdDays + 1 + SLACK_DAYS) * DAY;
        const last = P0 + DAYS * DAY;
        let end = last + 8 * DAY;
        for (let e = last + 3 * DAY; e < last + 12 * DAY; e += DAY / 20) {
          if (made.every((m) => m === newest || lockEnd(m) > e || deadline(m) < e)) {
            end = e;
            break;
          }
        }
        const wait = realAt(end) - Date.now();
        if (wait > 0) await sleep(wait);
      } finally {
        stop = true;
        await poller;
      }

      const now = Date.now();
      const endP = toPolicy(time, new Date(now)).getTime();
      const present = new Map(
        (await admin.listVersions(""))
          .filter((v) => !v.deleteMarker)
          .map((v) => [v.versionId, v] as const),
      );
      const newest = made.at(-1) as Made;
      const shouldStay = made.filter((m) => m === newest || m.p + m.holdDays * DAY > endP);
      const shouldGo = made.filter(
        (m) => m !== newest && m.p + (m.holdDays + 1 + SLACK_DAYS) * DAY < endP,
      );
      const between = made.filter((m) => !shouldStay.includes(m) && !shouldGo.includes(m));

      // No version ever disappeared while locked (the server's own retain-until, every version ID).
      for (const m of made) {
        if (m.goneAt !== undefined)
          assert.ok(
            m.goneAt >= m.lockedUntil,
            `backup ${m.i} (${m.expectedTag}) ${m.versionId} disappeared ${m.lockedUntil - m.goneAt} ms before its retain-until`,
          );
      }
      assert.deepEqual(
        shouldGo.filter((m) => present.has(m.versionId)).map((m) => `${m.i}:${m.expectedTag}`),
        [],
        "backups outside the policy that are still there",
      );
      assert.deepEqual(
        shouldStay.filter((m) => !present.has(m.versionId)).map((m) => `${m.i}:${m.expectedTag}`),
        [],
        "backups inside the policy that are gone",
      );
      for (const m of shouldStay) {
        const r = await target.reader.retention(m.key, m.versionId);
        assert.equal(r?.mode, "COMPLIANCE");
        assert.ok((r?.retainUntil.getTime() ?? 0) > now, `backup ${m.i} is present but not locked`);
      }
      assert.deepEqual(between, [], "the end was chosen with no backup in transition");

      // The figure: what the bucket held after the last backup, against the policy's steady state.
      const runs: Date[] = [];
      for (let day = 0; day < 120; day++)
        for (const slot of SLOTS) runs.push(toReal(time, new Date(P0 + (day + slot) * DAY)));
      const steady = steadyState({
        policy: POLICY,
        timezone: "UTC",
        floorDays: 1,
        graceDays: 0,
        runs,
        time,
      });
      const avg = made.reduce((n, m) => n + m.size, 0) / made.length;
      t.diagnostic(
        `after ${DAYS} simulated days (${made.length} backups, ${server.daySeconds} s a day): ${keptAtLastBackup.objects} objects, ${keptAtLastBackup.bytes} bytes in the bucket; policy steady state ${steady.backups} backups (${JSON.stringify(steady.byTag)}), ~${Math.round(steady.backups * avg)} bytes at this run's mean size; at the end (policy day ${((endP - P0) / DAY).toFixed(2)}): ${present.size} objects kept, ${made.length - present.size} removed; ${((Date.now() - t0) / 1000).toFixed(0)} s`,
      );
      // Both outcomes occurred: the newest (kept by keepLatestLocked) and a weekly one stay, the rest went.
      assert.ok(shouldGo.length > 30, `${shouldGo.length} gone`);
      assert.ok(
        shouldStay.some((m) => m !== newest && m.expectedTag === "weekly-2"),
        `${shouldStay.length} kept`,
      );
      // Lifecycle lags by up to SLACK_DAYS: the bucket holds the steady state plus at most what two days of runs add.
      assert.ok(keptAtLastBackup.objects >= steady.backups - 1, JSON.stringify(keptAtLastBackup));
      assert.ok(
        keptAtLastBackup.objects <= steady.backups + Math.ceil((SLACK_DAYS + 1) * SLOTS.length),
        `${keptAtLastBackup.objects} objects kept, steady state ${steady.backups}`,
      );
    } finally {
      catalog.close();
      closeTarget(target);
    }
  });
});
