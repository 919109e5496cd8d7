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
import type { Target } from "../src/store/store.js";

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
}

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
      const locked = await (await h.lockedTarget()).reader.lockState();
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
      assert.deepEqual(await t.reader.head("a/b.tar", versionId, sseKey), { size: body.length });
      const got = await readAll(await t.reader.get("a/b.tar", versionId, sseKey));
      assert.equal(
        createHash("sha256").update(got).digest("hex"),
        createHash("sha256").update(body).digest("hex"),
      );
      await assert.rejects(t.reader.head("a/b.tar", versionId, randomBytes(32)), StorageError);
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
