/** `immutd init` on the in-memory store; the same on Ceph RGW is in init.rgw.test.ts. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "../src/errors.js";
import { runInit } from "../src/flows/init.js";
import { createLogger } from "../src/log.js";
import { MemoryBucket } from "../src/store/memory.js";
import { targetConfig } from "./support/target.js";

const log = createLogger({ level: "silent" });

describe("runInit (memory store)", () => {
  it("creates the bucket with lock, default retention and lifecycle; a second run changes nothing", async () => {
    const bucket = new MemoryBucket("new", { exists: false });
    const tc = targetConfig({
      bucket: "new",
      retention: { mode: "COMPLIANCE", days: 30 },
      lifecycleGraceDays: 5,
    });
    const first = await runInit({ target: bucket.target("test"), targetConfig: tc, log });
    assert.equal(first.changed, true);
    assert.deepEqual(first.problems, []);
    assert.equal(bucket.objectLock, true);
    assert.equal(bucket.versioning, "Enabled");
    assert.deepEqual(bucket.defaultRetention, { mode: "COMPLIANCE", days: 30 });
    assert.deepEqual(
      bucket.lifecycle.map(
        (r) => r.noncurrentDays ?? r.abortIncompleteDays ?? r.expiredObjectDeleteMarker,
      ),
      [35, true, 1],
    );
    const second = await runInit({ target: bucket.target("test"), targetConfig: tc, log });
    assert.equal(second.changed, false);
    assert.ok(second.plan.steps.every((s) => s.action === "ok"));
  });

  it("--dry-run changes nothing", async () => {
    const bucket = new MemoryBucket("dry", { exists: false });
    const r = await runInit({
      target: bucket.target("test"),
      targetConfig: targetConfig({ bucket: "dry" }),
      log,
      dryRun: true,
    });
    assert.equal(r.plan.createBucket, true);
    assert.equal(bucket.exists, false);
  });

  it("tightens a weaker bucket and never weakens a stricter one", async () => {
    const weak = new MemoryBucket("weak", { defaultRetention: { mode: "GOVERNANCE", days: 3 } });
    const tc = targetConfig({ bucket: "weak", retention: { mode: "COMPLIANCE", days: 10 } });
    await runInit({ target: weak.target("test"), targetConfig: tc, log });
    assert.deepEqual(weak.defaultRetention, { mode: "COMPLIANCE", days: 10 });
    const strict = new MemoryBucket("strict", {
      defaultRetention: { mode: "COMPLIANCE", days: 90 },
    });
    await runInit({
      target: strict.target("test"),
      targetConfig: { ...tc, bucket: "strict" },
      log,
    });
    assert.deepEqual(strict.defaultRetention, { mode: "COMPLIANCE", days: 90 });
  });

  it("reports a bucket without Object Lock as a problem it cannot fix", async () => {
    const plain = new MemoryBucket("plain", { objectLock: false });
    const r = await runInit({
      target: plain.target("test"),
      targetConfig: targetConfig({ bucket: "plain" }),
      log,
    });
    assert.deepEqual(
      r.problems.map((p) => p.kind),
      ["object-lock-disabled"],
    );
    assert.equal(r.changed, false);
  });

  it("needs the admin credential", async () => {
    const b = new MemoryBucket("x", { exists: false });
    const { admin: _admin, ...noAdmin } = b.target("test");
    await assert.rejects(
      runInit({ target: noAdmin, targetConfig: targetConfig({ bucket: "x" }), log }),
      (e: unknown) => e instanceof ConfigError && /credentials\.admin is not set/.test(e.message),
    );
  });
});
