/**
 * doctor on the in-memory store: which line says OK, WARN or FAIL for which
 * setup. The same against Ceph RGW with the tutorial's users is in
 * doctor.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import type { TargetConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { type CheckStatus, judgeClock, runDoctor } from "../src/flows/doctor.js";
import { runInit } from "../src/flows/init.js";
import { createLogger } from "../src/log.js";
import { parseObjectKey } from "../src/repo/naming.js";
import { MemoryBucket } from "../src/store/memory.js";
import type { Target } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const log = createLogger({ level: "silent" });
let n = 0;

async function doctor(
  setup: (b: MemoryBucket, t: Target) => Target | undefined = () => undefined,
  over: Partial<TargetConfig> = {},
) {
  const bucket = new MemoryBucket(`d${n++}`, { exists: false });
  const tc = targetConfig({ name: "mem", bucket: bucket.name, prefix: "p/", ...over });
  await runInit({ target: bucket.target("mem", "p/"), targetConfig: tc, log });
  // README's bucket policy for Ceph subusers.
  bucket.denyLockConfig.add("writer");
  bucket.denyLockConfig.add("reader");
  bucket.denyDelete.add("writer");
  const base = bucket.target("mem", "p/");
  const target = setup(bucket, base) ?? base;
  const config = fullConfig({
    catalog: "/nonexistent/catalog.db",
    masterKey: new Secret(randomBytes(32)),
    host: "h",
    targets: { mem: tc },
    jobs: [jobConfig({ name: "j", target: "mem" })],
  });
  const report = await runDoctor({ config, targetConfig: tc, target, log });
  const status = (name: string): CheckStatus | undefined =>
    report.checks.find((c) => c.name === name)?.status;
  return { bucket, report, status };
}

describe("runDoctor (memory store)", () => {
  it("passes with least-privilege credentials: every line OK, and one locked canary left", async () => {
    const { report, bucket } = await doctor();
    const notOk = report.checks.filter((c) => c.status !== "OK");
    assert.deepEqual(notOk, [], JSON.stringify(notOk, null, 1));
    assert.deepEqual(
      report.checks.map((c) => c.name),
      [
        "endpoint",
        "clock",
        "object lock",
        "default retention",
        "lifecycle",
        "writer upload",
        "sse-c",
        "checksum",
        "canary lock",
        "reader read",
        "writer read",
        "reader write",
        "lock extension",
        "lock config (writer)",
        "lock config (reader)",
        "delete (reader)",
        "delete (writer)",
        "delete (admin)",
        "delete marker (writer)",
      ],
    );
    assert.equal(bucket.versions.length, 1, "only the canary");
    const canary = bucket.versions[0];
    assert.match(canary?.key ?? "", /^p\/h\/\.immutd-doctor\/canary-\d{8}T\d{6}Z-[0-9a-f]{8}$/);
    assert.equal(parseObjectKey(canary?.key ?? ""), undefined, "not a backup key");
    assert.equal(canary?.retention?.mode, "COMPLIANCE");
    const days = ((canary?.retention?.retainUntil.getTime() ?? 0) - Date.now()) / 86_400_000;
    assert.ok(days > 0.99 && days < 1.01, `locked ${days} days`);
    assert.equal(report.canary?.key, canary?.key);
  });

  it("warns when the writer is the main user: it can read back and change the lock configuration", async () => {
    const { status } = await doctor((_b, t) => ({
      ...t,
      writer: t.admin as NonNullable<Target["admin"]>,
    }));
    assert.equal(status("writer read"), "WARN");
    assert.equal(status("lock config (writer)"), "WARN");
    assert.equal(status("delete (writer)"), "OK");
  });

  it("warns when subusers may change the Object Lock configuration (Ceph without the bucket policy)", async () => {
    const { status, bucket } = await doctor((b) => {
      b.denyLockConfig.clear();
      return undefined;
    });
    assert.equal(status("lock config (writer)"), "WARN");
    assert.equal(status("lock config (reader)"), "WARN");
    assert.deepEqual(
      bucket.defaultRetention,
      { mode: "COMPLIANCE", days: 1 },
      "written back unchanged",
    );
  });

  it("warns when the writer may put delete markers, and leaves one on the canary only then", async () => {
    const { status, report, bucket } = await doctor((b) => {
      b.denyDelete.clear();
      return undefined;
    });
    assert.equal(status("delete marker (writer)"), "WARN");
    assert.match(
      report.checks.find((c) => c.name === "delete marker (writer)")?.message ?? "",
      /hide the latest version of backups; they stay locked and restorable by version ID, and verify warns/,
    );
    const canary = report.canary?.key;
    assert.deepEqual(
      bucket.versions.filter((v) => v.key === canary).map((v) => v.deleteMarker),
      [false, true],
      "the canary, then the marker on top",
    );
  });

  it("fails when the writer cannot set a version's lock: every backup may need it", async () => {
    const { status, report } = await doctor((b) => {
      b.refuseRetention = new Set(["writer", "admin"]);
      return undefined;
    });
    assert.equal(status("lock extension"), "FAIL");
    assert.match(
      report.checks.find((c) => c.name === "lock extension")?.message ?? "",
      /cannot set a version's lock .*would fail and stay unlocked/,
    );
  });

  it("fails when a locked version can be deleted", async () => {
    const { status, report } = await doctor((b) => {
      b.deleteVersion = (key, versionId) => {
        const i = b.versions.findIndex((v) => v.key === key && v.versionId === versionId);
        b.versions.splice(i, 1);
      };
      return undefined;
    });
    assert.equal(status("delete (writer)"), "FAIL");
    assert.equal(status("delete (reader)"), "OK", "the reader has no delete permission at all");
    assert.equal(status("delete (admin)"), "SKIP");
    assert.equal(report.canary, undefined);
  });

  it("warns about a server that ignores checksums, and fails without Object Lock", async () => {
    const ignoring = await doctor((b) => {
      b.ignoresChecksums = true;
      return undefined;
    });
    assert.equal(ignoring.status("checksum"), "WARN");
    const plain = new MemoryBucket(`d${n++}`, { objectLock: false });
    const tc = targetConfig({ name: "mem", bucket: plain.name });
    const config = fullConfig({
      catalog: "/x.db",
      masterKey: new Secret(randomBytes(32)),
      targets: { mem: tc },
      jobs: [jobConfig({ name: "j", target: "mem" })],
    });
    const r = await runDoctor({ config, targetConfig: tc, target: plain.target("mem"), log });
    assert.equal(r.checks.find((c) => c.name === "object lock")?.status, "FAIL");
    assert.equal(plain.versions.length, 0, "no canary in a bucket that cannot lock it");
  });

  it("fails on a missing bucket, naming init", async () => {
    const b = new MemoryBucket(`d${n++}`, { exists: false });
    const tc = targetConfig({ name: "mem", bucket: b.name });
    const config = fullConfig({
      catalog: "/x.db",
      masterKey: new Secret(randomBytes(32)),
      targets: { mem: tc },
      jobs: [jobConfig({ name: "j", target: "mem" })],
    });
    const r = await runDoctor({ config, targetConfig: tc, target: b.target("mem"), log });
    const bucket = r.checks.find((c) => c.name === "bucket");
    assert.equal(bucket?.status, "FAIL");
    assert.match(bucket?.fix ?? "", /immutd init mem/);
  });

  it("judges clock skew: OK within 30 s, WARN beyond, FAIL beyond 15 minutes", () => {
    const at = (skewMs: number) =>
      judgeClock({
        url: "u",
        protocol: "https:",
        status: 200,
        date: new Date(1_000_000_000_000 + skewMs),
        localMidpoint: new Date(1_000_000_000_000),
        rttMs: 1,
      }).status;
    assert.equal(at(2_000), "OK");
    assert.equal(at(-60_000), "WARN");
    assert.equal(at(16 * 60_000), "FAIL");
  });
});
