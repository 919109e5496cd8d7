/**
 * One suite for every ObjectStore: the in-memory fake (test/store-memory.test.ts)
 * and the real Ceph RGW (test/store-rgw.test.ts). What the fake promises here is
 * thereby proven on the real server too.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { StorageError } from "../src/errors.js";
import type { LifecycleRule, Target } from "../src/store/store.js";

export type Role = "writer" | "reader" | "admin";

export interface Harness {
  /** A fresh bucket with Object Lock and a COMPLIANCE default retention of 1 day. */
  lockedTarget(): Promise<Target>;
  /** A fresh bucket without Object Lock. */
  plainTarget(): Promise<Target>;
  /** Tries to delete one version with a role's credentials; rejects if refused. */
  deleteVersion(t: Target, role: Role, key: string, versionId: string): Promise<void>;
  /** Writes a delete marker on key with the writer's credentials, as an attacker could. */
  deleteMarker(t: Target, key: string): Promise<void>;
  /** A target whose bucket does not exist yet. */
  missingTarget(): Promise<Target>;
  /** The bucket policy README recommends: the writer and reader may not change the Object Lock configuration. */
  denyLockConfig(t: Target): Promise<void>;
  /** The bucket's default retention removed (Object Lock stays on), as the main user can. */
  removeDefaultRetention(t: Target): Promise<void>;
}

const DAY = 86_400_000;

/** A rule without the server's native form, for comparing. */
function plain(r: LifecycleRule): Omit<LifecycleRule, "native"> {
  const { native: _native, ...rest } = r;
  return rest;
}

const refused = (status: number) => (e: unknown) =>
  e instanceof StorageError && e.status === status;

const MiB = 1024 * 1024;

function data(size: number): Buffer {
  return randomBytes(size);
}

async function readAll(s: Readable): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of s) out.push(Buffer.from(c as Buffer));
  return Buffer.concat(out);
}

export function storeContract(name: string, h: Harness): void {
  describe(`ObjectStore contract: ${name}`, () => {
    it("reports the bucket's lock state", async () => {
      const lockedTarget = await h.lockedTarget();
      const locked = await lockedTarget.reader.lockState();
      assert.deepEqual(await lockedTarget.writer.lockState(), locked, "the writer may read it too");
      assert.equal(locked.objectLock, true);
      assert.equal(locked.versioning, "Enabled");
      assert.deepEqual(locked.defaultRetention, { mode: "COMPLIANCE", days: 1 });
      const plain = await (await h.plainTarget()).reader.lockState();
      assert.equal(plain.objectLock, false);
      assert.equal(plain.defaultRetention, undefined);
    });

    it("stores a multipart upload as one locked version, readable only with its SSE-C key", async () => {
      const t = await h.lockedTarget();
      const body = data(12 * MiB);
      const sseKey = randomBytes(32);
      const before = Date.now();
      const { versionId } = await t.writer.upload({
        key: "a/b.tar",
        body: Readable.from([body]),
        sseKey,
      });
      assert.ok(versionId);
      // HEAD also reports the version's lock to the reader, exactly as GetObjectRetention does.
      const lock = await t.reader.retention("a/b.tar", versionId);
      assert.ok(lock);
      assert.deepEqual(await t.reader.head("a/b.tar", versionId, sseKey), {
        size: body.length,
        encrypted: true,
        retention: lock,
      });
      const got = await readAll(await t.reader.get("a/b.tar", versionId, sseKey));
      assert.equal(
        createHash("sha256").update(got).digest("hex"),
        createHash("sha256").update(body).digest("hex"),
      );
      await assert.rejects(t.reader.head("a/b.tar", versionId, randomBytes(32)), StorageError);
      // A wrong key is refused as the key (not as the credential), and a read can start mid-object.
      await assert.rejects(t.reader.get("a/b.tar", versionId, randomBytes(32)), (e: unknown) => {
        assert.ok(e instanceof StorageError);
        assert.equal(e.refusal, "sse-c key", e.message);
        return true;
      });
      const tail = await readAll(await t.reader.get("a/b.tar", versionId, sseKey, { start: MiB }));
      assert.ok(tail.equals(body.subarray(MiB)), "get from byte start returns the rest");
      // And a range with an end (exclusive), as a ranged restore reads an entry.
      const mid = await readAll(
        await t.reader.get("a/b.tar", versionId, sseKey, { start: 1000, end: 1000 + 1536 }),
      );
      assert.ok(mid.equals(body.subarray(1000, 2536)), "get of start..end returns that range");
      const head = await readAll(await t.reader.get("a/b.tar", versionId, sseKey, { end: 512 }));
      assert.ok(head.equals(body.subarray(0, 512)), "get up to end returns the first bytes");
      const r = await t.reader.retention("a/b.tar", versionId);
      assert.equal(r?.mode, "COMPLIANCE");
      const expected = before + 86_400_000;
      assert.ok(
        r && Math.abs(r.retainUntil.getTime() - expected) < 5 * 60_000,
        `retain-until ${r?.retainUntil.toISOString()}`,
      );
      const versions = await t.reader.listVersions("a/");
      assert.deepEqual(
        versions.map((v) => [v.key, v.versionId, v.size, v.deleteMarker]),
        [["a/b.tar", versionId, body.length, false]],
      );
    });

    it("refuses to delete a locked version for every credential", async () => {
      const t = await h.lockedTarget();
      const { versionId } = await t.writer.upload({
        key: "k.tar",
        body: Readable.from([data(1000)]),
        sseKey: randomBytes(32),
      });
      for (const role of ["writer", "reader", "admin"] as const) {
        await assert.rejects(
          h.deleteVersion(t, role, "k.tar", versionId),
          `${role} deleted a locked version`,
        );
      }
      assert.equal((await t.reader.listVersions("")).length, 1);
    });

    it("keeps a pinned version readable after a delete marker is written on its key", async () => {
      const t = await h.lockedTarget();
      const sseKey = randomBytes(32);
      const body = data(2000);
      const { versionId } = await t.writer.upload({
        key: "p.tar",
        body: Readable.from([body]),
        sseKey,
      });
      await h.deleteMarker(t, "p.tar");
      const versions = await t.reader.listVersions("");
      assert.ok(
        versions.some((v) => v.deleteMarker && v.isLatest),
        "the delete marker is now latest",
      );
      assert.deepEqual(await readAll(await t.reader.get("p.tar", versionId, sseKey)), body);
    });

    it("leaves no upload and no version when the body fails mid-way", async () => {
      const t = await h.lockedTarget();
      const failing = Readable.from(
        (function* () {
          for (let i = 0; i < 12; i++) yield data(MiB);
          throw new Error("source failed");
        })(),
      );
      await assert.rejects(
        t.writer.upload({ key: "f.tar", body: failing, sseKey: randomBytes(32) }),
        /source failed/,
      );
      assert.deepEqual(await t.reader.listUploads(""), []);
      assert.deepEqual(await t.reader.listVersions(""), []);
    });

    it("creates a bucket with Object Lock and sets its default retention in days or years", async () => {
      const t = await h.missingTarget();
      const admin = t.admin as NonNullable<Target["admin"]>;
      assert.equal(await t.reader.bucketExists(), false);
      await assert.rejects(t.reader.lockState(), refused(404));
      await admin.createBucket();
      assert.equal(await t.reader.bucketExists(), true);
      assert.deepEqual(await t.reader.lockState(), { versioning: "Enabled", objectLock: true });
      await admin.putDefaultRetention({ mode: "GOVERNANCE", days: 2 });
      assert.deepEqual((await t.reader.lockState()).defaultRetention, {
        mode: "GOVERNANCE",
        days: 2,
      });
      await admin.putDefaultRetention({ mode: "COMPLIANCE", years: 1 });
      assert.deepEqual((await t.reader.lockState()).defaultRetention, {
        mode: "COMPLIANCE",
        days: 365,
        years: 1,
      });
    });

    it("refuses a default retention on a bucket without Object Lock", async () => {
      const t = await h.plainTarget();
      await assert.rejects(
        (t.admin as NonNullable<Target["admin"]>).putDefaultRetention({
          mode: "COMPLIANCE",
          days: 1,
        }),
        refused(409),
      );
    });

    it("lets the writer and reader change the Object Lock configuration unless a bucket policy denies it", async () => {
      const t = await h.lockedTarget();
      const same = { mode: "COMPLIANCE" as const, days: 1 };
      await t.writer.putDefaultRetention(same);
      await t.reader.putDefaultRetention(same);
      await h.denyLockConfig(t);
      await assert.rejects(t.writer.putDefaultRetention(same), refused(403));
      await assert.rejects(t.reader.putDefaultRetention(same), refused(403));
      await (t.admin as NonNullable<Target["admin"]>).putDefaultRetention({
        mode: "COMPLIANCE",
        days: 2,
      });
      assert.deepEqual((await t.reader.lockState()).defaultRetention, {
        mode: "COMPLIANCE",
        days: 2,
      });
    });

    it("sets lifecycle rules (admin only) and keeps rules it does not manage when rewriting", async () => {
      const t = await h.lockedTarget();
      const admin = t.admin as NonNullable<Target["admin"]>;
      assert.deepEqual(await admin.lifecycle(), []);
      const foreign: LifecycleRule = {
        id: "theirs",
        enabled: false,
        prefix: "other/",
        expirationDays: 400,
      };
      await admin.putLifecycle([foreign]);
      const read = await admin.lifecycle();
      assert.deepEqual(read.map(plain), [foreign]);
      const ours: LifecycleRule[] = [
        { id: "immutd-noncurrent-versions", enabled: true, prefix: "", noncurrentDays: 37 },
        {
          id: "immutd-expired-delete-markers",
          enabled: true,
          prefix: "",
          expiredObjectDeleteMarker: true,
        },
        {
          id: "immutd-abort-incomplete-uploads",
          enabled: true,
          prefix: "",
          abortIncompleteDays: 1,
        },
      ];
      await admin.putLifecycle([...read, ...ours]);
      const byId = (rules: LifecycleRule[]) =>
        rules.map(plain).sort((a, b) => a.id.localeCompare(b.id));
      assert.deepEqual(byId(await admin.lifecycle()), byId([foreign, ...ours]));
      await assert.rejects(t.reader.lifecycle(), refused(403));
      await assert.rejects(t.writer.lifecycle(), refused(403));
      await assert.rejects(t.writer.putLifecycle(ours), refused(403));
      await assert.rejects(
        admin.putLifecycle([
          {
            id: "bad",
            enabled: true,
            prefix: "",
            expirationDays: 3,
            expiredObjectDeleteMarker: true,
          },
        ]),
        refused(400),
      );
    });

    it("extends a version's retention with the writer; nobody shortens it; the reader cannot", async () => {
      const t = await h.lockedTarget();
      const { versionId } = await t.writer.upload({
        key: "x.tar",
        body: Readable.from([data(100)]),
        sseKey: randomBytes(32),
      });
      const before = await t.reader.retention("x.tar", versionId);
      assert.ok(before);
      const later = new Date(before.retainUntil.getTime() + DAY);
      await t.writer.extendRetention("x.tar", versionId, {
        mode: "COMPLIANCE",
        retainUntil: later,
      });
      assert.deepEqual(await t.reader.retention("x.tar", versionId), {
        mode: "COMPLIANCE",
        retainUntil: later,
      });
      for (const s of [t.writer, t.admin as NonNullable<Target["admin"]>]) {
        await assert.rejects(
          s.extendRetention("x.tar", versionId, {
            mode: "COMPLIANCE",
            retainUntil: before.retainUntil,
          }),
          refused(403),
        );
        await assert.rejects(
          s.extendRetention("x.tar", versionId, { mode: "GOVERNANCE", retainUntil: later }),
          refused(403),
        );
      }
      await assert.rejects(
        t.reader.extendRetention("x.tar", versionId, {
          mode: "COMPLIANCE",
          retainUntil: new Date(later.getTime() + DAY),
        }),
        refused(403),
      );
      assert.deepEqual(await t.reader.retention("x.tar", versionId), {
        mode: "COMPLIANCE",
        retainUntil: later,
      });
    });

    it("a version uploaded without a default retention reads as unlocked, and the writer can lock it", async () => {
      const t = await h.lockedTarget();
      const admin = t.admin as NonNullable<Target["admin"]>;
      // Ceph RGW 16 answers ObjectLockConfigurationNotFoundError here, AWS NoSuchObjectLockConfiguration.
      await h.removeDefaultRetention(t);
      const { versionId } = await t.writer.upload({
        key: "u.tar",
        body: Readable.from([data(100)]),
        sseKey: randomBytes(32),
      });
      assert.equal(await t.reader.retention("u.tar", versionId), undefined);
      const until = new Date(Date.now() + DAY);
      await t.writer.extendRetention("u.tar", versionId, {
        mode: "COMPLIANCE",
        retainUntil: until,
      });
      assert.deepEqual(await admin.retention("u.tar", versionId), {
        mode: "COMPLIANCE",
        retainUntil: until,
      });
    });

    it("a GOVERNANCE version becomes COMPLIANCE only with upgradeGovernance, never shorter", async () => {
      const t = await h.lockedTarget();
      const admin = t.admin as NonNullable<Target["admin"]>;
      await admin.putDefaultRetention({ mode: "GOVERNANCE", days: 1 });
      const { versionId } = await t.writer.upload({
        key: "g.tar",
        body: Readable.from([data(100)]),
        sseKey: randomBytes(32),
      });
      const before = await t.reader.retention("g.tar", versionId);
      assert.equal(before?.mode, "GOVERNANCE");
      const later = new Date((before?.retainUntil.getTime() ?? 0) + DAY);
      const compliance = { mode: "COMPLIANCE" as const, retainUntil: later };
      await assert.rejects(t.writer.extendRetention("g.tar", versionId, compliance), refused(403));
      await t.writer.extendRetention("g.tar", versionId, compliance, { upgradeGovernance: true });
      assert.deepEqual(await t.reader.retention("g.tar", versionId), compliance);
      // Now COMPLIANCE: the flag does not help to shorten it.
      await assert.rejects(
        t.writer.extendRetention(
          "g.tar",
          versionId,
          { mode: "COMPLIANCE", retainUntil: before?.retainUntil as Date },
          { upgradeGovernance: true },
        ),
        refused(403),
      );
    });

    it("doctor's canary: locked shorter than the default, readable by the reader only, deletable by nobody", async () => {
      const t = await h.lockedTarget();
      const key = "host/.immutd-doctor/canary-1";
      const sseKey = randomBytes(32);
      const body = data(64);
      const retainUntil = new Date(Date.now() + 3_600_000);
      const { versionId } = await t.writer.putCanary({ key, body, sseKey, retainUntil });
      const r = await t.reader.retention(key, versionId);
      assert.equal(r?.mode, "COMPLIANCE");
      assert.ok(r && Math.abs(r.retainUntil.getTime() - retainUntil.getTime()) < 1000);
      assert.deepEqual(await readAll(await t.reader.get(key, versionId, sseKey)), body);
      await assert.rejects(t.writer.head(key, versionId, sseKey), refused(403));
      await assert.rejects(t.writer.get(key, versionId, sseKey), refused(403));
      for (const s of [t.writer, t.reader, t.admin as NonNullable<Target["admin"]>]) {
        await assert.rejects(s.deleteCanary(key, versionId), refused(403));
      }
      await assert.rejects(
        t.reader.putCanary({ key: "host/.immutd-doctor/r", body, sseKey, retainUntil }),
        refused(403),
      );
      await assert.rejects(
        t.writer.putCanary({
          key: "host/.immutd-doctor/bad",
          body,
          sseKey,
          retainUntil,
          corruptChecksum: true,
        }),
        refused(400),
      );
      await assert.rejects(
        t.writer.putCanary({ key: "host/job/x.tar", body, sseKey, retainUntil }),
        /not a \.immutd-doctor/,
      );
      await assert.rejects(
        (t.admin as NonNullable<Target["admin"]>).deleteCanary("k.tar", versionId),
        /not a \.immutd-doctor/,
      );
      assert.deepEqual(
        (await t.reader.listVersions("")).map((v) => [v.key, v.versionId]),
        [[key, versionId]],
      );
    });

    it("a manifest: one SSE-C PutObject with the bucket default lock, readable only with its key; nothing else is written this way", async () => {
      const t = await h.lockedTarget();
      const key = "host/job/2026-12-01T000000Z-0a0b0c0d.tar.gz.manifest.json.gz";
      const sseKey = randomBytes(32);
      const body = data(3000);
      const { versionId } = await t.writer.putManifest({ key, body, sseKey });
      assert.deepEqual(await readAll(await t.reader.get(key, versionId, sseKey)), body);
      const head = await t.reader.head(key, versionId, sseKey);
      assert.equal(head.size, body.length);
      assert.equal(head.encrypted, true);
      await assert.rejects(t.reader.get(key, versionId, randomBytes(32)), refused(400));
      assert.equal((await t.reader.retention(key, versionId))?.mode, "COMPLIANCE");
      await assert.rejects(t.reader.putManifest({ key, body, sseKey }), refused(403));
      await assert.rejects(
        t.writer.putManifest({ key: "host/job/2026-12-01T000000Z-0a0b0c0d.tar.gz", body, sseKey }),
        /refusing to write/,
      );
      assert.deepEqual(
        (await t.reader.listVersions("")).map((v) => [v.key, v.versionId]),
        [[key, versionId]],
      );
    });

    it("answers an endpoint probe over TLS with its clock", async () => {
      const t = await h.lockedTarget();
      const p = await t.reader.probeEndpoint();
      assert.equal(p.protocol, "https:");
      assert.ok(p.status > 0 && p.status < 500, `status ${p.status}`);
      assert.ok(p.tls, "TLS version");
      assert.ok(p.date && Math.abs(p.date.getTime() - p.localMidpoint.getTime()) < 60_000);
    });

    it("the reader cannot write", async () => {
      const t = await h.lockedTarget();
      await assert.rejects(
        t.reader.upload({
          key: "r.tar",
          body: Readable.from([data(100)]),
          sseKey: randomBytes(32),
        }),
        (e: unknown) => e instanceof StorageError && e.status === 403,
      );
    });
  });
}
