/**
 * The reader→writer fallback (src/store/fallback.ts), which backup's
 * preflight and stored-size check, verify's and doctor's bucket reads share:
 * only a refusal of the reader (403) is asked again with the writer; a fault
 * is the answer.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { StorageError } from "../src/errors.js";
import { readLockState } from "../src/flows/verify.js";
import { withReadFallback } from "../src/store/fallback.js";
import { MemoryBucket } from "../src/store/memory.js";
import { CANARY_DIR, type ObjectStore } from "../src/store/store.js";

/** `store` with `lockState` answering `err` (and counting its calls). */
function failing(store: ObjectStore, err: Error): ObjectStore & { calls: number } {
  const s = Object.create(store) as ObjectStore & { calls: number };
  s.calls = 0;
  s.lockState = async () => {
    s.calls++;
    throw err;
  };
  return s;
}

function counting(store: ObjectStore): ObjectStore & { calls: number } {
  const s = Object.create(store) as ObjectStore & { calls: number };
  s.calls = 0;
  s.lockState = async () => {
    s.calls++;
    return store.lockState();
  };
  return s;
}

const status = (n: number, transient = false) =>
  new StorageError(`HTTP ${n}`, { transient, status: n });

describe("withReadFallback", () => {
  it("reads as the writer where the memory store refuses the reader credential (403)", async () => {
    const bucket = new MemoryBucket("fb-head");
    const t = bucket.target("mem", "p/");
    const key = `p/h/${CANARY_DIR}/canary-x`;
    const sseKey = randomBytes(32);
    const retainUntil = new Date(Date.now() + 86_400_000);
    const { versionId } = await t.writer.putCanary({
      key,
      body: Buffer.from("x"),
      sseKey,
      retainUntil,
    });
    // A write-only credential where the reader belongs: HEAD is refused with 403 …
    const writerOnly = bucket.store("writer");
    await assert.rejects(writerOnly.head(key, versionId, sseKey), { status: 403 });
    // … and the fallback asks the other credential (here one that may read).
    const head = await withReadFallback(
      { reader: writerOnly, writer: bucket.store("admin") },
      (s) => s.head(key, versionId, sseKey),
    );
    assert.equal(head.size, 1);
  });

  it("does not ask the writer on a 500, a 404 or a network error: those are thrown as they came", async () => {
    const bucket = new MemoryBucket("fb-fault");
    for (const err of [status(500, true), status(404), new Error("ECONNRESET")]) {
      const reader = failing(bucket.store("reader"), err);
      const writer = counting(bucket.store("writer"));
      await assert.rejects(
        withReadFallback({ reader, writer }, (s) => s.lockState()),
        (e) => e === err,
      );
      assert.equal(reader.calls, 1);
      assert.equal(writer.calls, 0, `${err.message} must not fall back to the writer`);
    }
  });

  it("throws the writer's own error when the writer fails too", async () => {
    const bucket = new MemoryBucket("fb-both");
    const second = status(403);
    const reader = failing(bucket.store("reader"), status(403));
    const writer = failing(bucket.store("writer"), second);
    await assert.rejects(
      withReadFallback({ reader, writer }, (s) => s.lockState()),
      (e) => e === second,
    );
    assert.equal(writer.calls, 1);
  });

  it("verify's readLockState: a reader without bucket permissions gets the writer's answer", async () => {
    const bucket = new MemoryBucket("fb-lock");
    const t = bucket.target("mem", "p/");
    const reader = failing(t.reader, status(403));
    const state = await readLockState({ ...t, reader });
    assert.equal(state.objectLock, true);
    assert.equal(reader.calls, 1, "a 403 on bucket settings is a permission, not retried");
  });
});
