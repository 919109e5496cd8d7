/**
 * verify's chain-lock repair, the fast side: a later restore point locked
 * longer than a member it is built on (a lock extended through a path that
 * did not extend its parents: a tier promotion, a recovery after a crash, an
 * operator) has that member extended by verify, extend only, on the server
 * and in the catalog, with keepLatestLocked off so nothing else extends it.
 * The real server's side is in chain-lock.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { runVerify } from "../src/flows/verify.js";
import { lockAtLeast } from "../src/retention/lock.js";
import { memoryJob } from "./support/memory-job.js";

const DAY = 86_400_000;

describe("verify extends an older chain member to a later point's lock (memory store)", () => {
  it("a point locked 30 days longer than its members: verify extends both members, reports nothing", async () => {
    const { tree, clock, now, bucket, target, catalog, config, log, backup } = await memoryJob({
      label: "chain-lock",
      start: "2026-11-10T00:00:00Z",
      job: { incremental: { fullEvery: { runs: 5, text: "5" } } },
      // Nothing but the chain repair may extend a lock in this test.
      config: { keepLatestLocked: false },
    });
    const ids: number[] = [];
    for (const content of ["a1", "a2", "a3"]) {
      clock.t += 60_000;
      writeFileSync(join(tree, "a"), content);
      ids.push((await backup()).backupId as number);
    }
    const row = (id: number) => catalog.backup(id);
    assert.equal(row(ids[2] as number)?.parentId, ids[1]);
    assert.equal(row(ids[1] as number)?.parentId, ids[0]);
    // The newest point is locked 30 days longer on the server, its parents are not.
    const point = row(ids[2] as number);
    assert.ok(point?.manifestKey && point.manifestVersionId);
    const longer = { mode: "COMPLIANCE" as const, retainUntil: new Date(clock.t + 37 * DAY) };
    for (const [k, v] of [
      [point.key, point.versionId],
      [point.manifestKey, point.manifestVersionId],
    ] as const) {
      const lock = await lockAtLeast(target, k, v, longer, { now: now() });
      assert.equal(lock.problem, undefined);
      assert.equal(lock.changed, true);
    }
    const serverUntil = (versionId: string) =>
      bucket.versions.find((v) => v.versionId === versionId)?.retention?.retainUntil.getTime() ?? 0;
    for (const id of ids.slice(0, 2))
      assert.ok(serverUntil(row(id)?.versionId ?? "") < longer.retainUntil.getTime() - DAY);

    clock.t += 60_000;
    const report = await runVerify({ config, catalog, targets: { mem: target }, log, now });
    assert.deepEqual(
      report.findings.map((f) => f.message),
      [],
    );
    assert.equal(report.extensions.length, 0, "keepLatestLocked is off");
    const pointUntil = Date.parse(row(ids[2] as number)?.retainUntil ?? "");
    assert.ok(pointUntil >= longer.retainUntil.getTime() - 1000, "verify adopted the point's lock");
    for (const id of ids.slice(0, 2)) {
      const m = row(id);
      assert.ok(
        Date.parse(m?.retainUntil ?? "") >= pointUntil,
        `backup ${id} in the catalog until ${m?.retainUntil}, point until ${new Date(pointUntil).toISOString()}`,
      );
      assert.ok(serverUntil(m?.versionId ?? "") >= pointUntil, `backup ${id} on the server`);
      assert.ok(
        serverUntil(m?.manifestVersionId ?? "") >= pointUntil,
        `backup ${id}'s manifest on the server`,
      );
    }
    // A second run finds everything in place and changes nothing.
    const again = await runVerify({ config, catalog, targets: { mem: target }, log, now });
    assert.deepEqual(again.findings, []);
  });
});
