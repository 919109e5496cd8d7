/**
 * verify reads a backup's immutd-keep tag back from the bucket only when it
 * must: the catalog records the tag immutd set, so a plain run trusts it (no
 * GetObjectTagging per backup); `verify --deep` reads every one back and so
 * finds a tag removed or changed behind immutd's back; a backup whose tagging
 * failed (no tag recorded) is read and tagged by a plain run. Counted on the
 * memory store; the RGW side, counted by a proxy, is in retention.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { runVerify } from "../src/flows/verify.js";
import { desiredLifecycle } from "../src/retention/bucket-check.js";
import { KEEP_TAG } from "../src/retention/tiers.js";
import type { ObjectStore, Target } from "../src/store/store.js";
import { memoryJob } from "./support/memory-job.js";

const HOUR = 3_600_000;

/** The target with every tag read (GetObjectTagging) of its reader and admin counted. */
function countingTagReads(t: Target): { target: Target; reads: { n: number } } {
  const reads = { n: 0 };
  const wrap = (s: ObjectStore): ObjectStore =>
    new Proxy(s, {
      get(o, p) {
        const v = Reflect.get(o, p, o) as unknown;
        if (typeof v !== "function") return v;
        if (p === "tags")
          return (...a: unknown[]) => {
            reads.n++;
            return (v as (...x: unknown[]) => unknown).apply(o, a);
          };
        return (v as (...x: unknown[]) => unknown).bind(o);
      },
    });
  return {
    target: { ...t, reader: wrap(t.reader), ...(t.admin ? { admin: wrap(t.admin) } : {}) },
    reads,
  };
}

describe("verify reads keep tags back only on --deep (memory store)", () => {
  it("three backups: a plain verify reads no tag, --deep reads each and finds one removed and one changed", async () => {
    const policy = { daily: 10, monthly: 3 };
    const {
      clock,
      now,
      tc,
      catalog,
      config,
      log,
      backup,
      target: plain,
    } = await memoryJob({
      label: "keep-reads",
      start: "2026-11-30T03:00:00Z",
      job: { keep: policy, timezone: "UTC" },
    });
    await plain.admin?.putLifecycle(desiredLifecycle(tc, [policy]));
    for (let i = 0; i < 3; i++) {
      await backup();
      clock.t += 25 * HOUR; // one a day: each stands for a daily tier
    }
    const rows = catalog.listBackups();
    // 30 November and 1 December stand for monthly tiers, 2 December for daily.
    assert.deepEqual(
      rows.map((r) => r.keepTag),
      ["monthly-3", "monthly-3", "daily-10"],
    );
    const { target, reads } = countingTagReads(plain);
    const verify = async (deep: boolean) => {
      reads.n = 0;
      const report = await runVerify({
        config,
        catalog,
        targets: { mem: target },
        log,
        now,
        ...(deep ? { deep: true } : {}),
      });
      return { report, reads: reads.n };
    };
    const first = await verify(false);
    assert.deepEqual(first.report.findings, []);
    assert.equal(first.reads, 0, "a plain verify trusts the recorded tags");
    const deep = await verify(true);
    assert.deepEqual(deep.report.findings, []);
    assert.equal(deep.reads, 3, "--deep reads each backup's tag");

    // Attacker (the writer): one tag removed, one changed to a shorter hold.
    const [a, b] = rows as [(typeof rows)[0], (typeof rows)[0]];
    await plain.writer.putTags(a.key, a.versionId, { [KEEP_TAG]: "floor-7" });
    await plain.writer.putTags(b.key, b.versionId, {});
    const found = await verify(true);
    const kinds = found.report.findings.filter((f) => f.kind === "keep-tag");
    assert.equal(kinds.length, 2, JSON.stringify(found.report.findings));
    assert.match(
      kinds.find((f) => f.backupId === a.id)?.message ?? "",
      /is tagged immutd-keep=floor-7, not immutd-keep=monthly-3.*verify tagged it again/,
    );
    assert.match(
      kinds.find((f) => f.backupId === b.id)?.message ?? "",
      /has no immutd-keep tag, not immutd-keep=monthly-3.*verify tagged it again/,
    );
    assert.equal((await plain.reader.tags(a.key, a.versionId))[KEEP_TAG], "monthly-3");
    assert.equal((await plain.reader.tags(b.key, b.versionId))[KEEP_TAG], "monthly-3");
    assert.deepEqual((await verify(true)).report.findings, []);

    // A backup whose tagging failed (no tag recorded, none in the bucket): a plain run reads and tags it, once.
    const c = rows[2] as (typeof rows)[0];
    await plain.writer.putTags(c.key, c.versionId, {});
    catalog.setBackupTiers(c.id, ["daily"], null);
    const failed = await verify(false);
    assert.deepEqual(
      failed.report.findings,
      [],
      "a promotion tags it: nothing was wrong but a failed write",
    );
    assert.equal((await plain.reader.tags(c.key, c.versionId))[KEEP_TAG], "daily-10");
    assert.equal(catalog.backup(c.id)?.keepTag, "daily-10");
    assert.equal((await verify(false)).reads, 0, "recorded again: no read next time");
  });
});
