/**
 * Hashing off the main thread (src/pipeline/workers/digest.ts): the hash
 * stage's SHA-256 and the parts' Content-MD5 are what node:crypto computes
 * on the main thread, for any chunking and with several streams at once; and
 * a hashing worker that dies mid-stream fails the stream instead of giving a
 * digest of part of it.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, it } from "node:test";
import { HashingCounter } from "../src/pipeline/hash.js";
import { md5Base64, terminateDigestWorker } from "../src/pipeline/workers/digest.js";

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function chunked(b: Buffer, size: (i: number) => number): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0, i = 0; off < b.length; i++) {
    const n = Math.max(1, size(i));
    out.push(b.subarray(off, off + n));
    off += n;
  }
  return out;
}

async function through(chunks: Buffer[]): Promise<{ h: HashingCounter; out: Buffer }> {
  const h = new HashingCounter();
  const got: Buffer[] = [];
  await pipeline(
    Readable.from(chunks),
    h,
    new Writable({
      write(c: Buffer, _e, cb) {
        got.push(c);
        cb();
      },
    }),
  );
  return { h, out: Buffer.concat(got) };
}

describe("the hash stage on the hashing worker", () => {
  it("gives node:crypto's SHA-256 and count for any chunking, and passes the bytes unchanged", async () => {
    const data = randomBytes(9 * MiB + 777);
    for (const size of [() => 64 * 1024, (i: number) => (i * 7919) % 300_000, () => 3 * MiB]) {
      const { h, out } = await through(chunked(data, size));
      assert.equal(h.digest(), sha256(data));
      assert.equal(h.bytes, data.length);
      assert.ok(out.equals(data));
    }
    const empty = await through([]);
    assert.equal(empty.h.digest(), sha256(Buffer.alloc(0)));
    assert.equal(empty.h.bytes, 0);
  });

  it("keeps several streams apart", async () => {
    const a = randomBytes(5 * MiB);
    const b = randomBytes(3 * MiB + 5);
    const [ra, rb] = await Promise.all([
      through(chunked(a, () => 100_000)),
      through(chunked(b, () => 70_000)),
    ]);
    assert.equal(ra.h.digest(), sha256(a));
    assert.equal(rb.h.digest(), sha256(b));
  });

  it("fails the stream, naming the hashing worker, when the worker dies mid-stream", async () => {
    const h = new HashingCounter();
    let n = 0;
    const source = new Readable({
      read() {
        n++;
        if (n === 6) void terminateDigestWorker();
        this.push(n > 40 ? null : randomBytes(MiB));
      },
    });
    await assert.rejects(
      pipeline(source, h, new Writable({ write: (_c, _e, cb) => cb() })),
      /the hashing worker exited/,
    );
    assert.throws(() => h.digest(), /before the stream ended/);
    // Killed while it holds no batch of the stream: the stream cannot go on on a new worker.
    const idle = new HashingCounter();
    let written = 0;
    const done = pipeline(
      new Readable({
        read() {
          n++;
          this.push(n > 60 ? null : randomBytes(MiB));
        },
      }),
      idle,
      new Writable({
        write: (_c, _e, cb) => {
          if (++written === 20) terminateDigestWorker().then(() => cb(), cb);
          else cb();
        },
      }),
    );
    await assert.rejects(done, /the hashing worker exit/);
    // The next stream gets a new worker.
    const data = randomBytes(2 * MiB);
    assert.equal((await through([data])).h.digest(), sha256(data));
  });
});

describe("Content-MD5 on the hashing worker", () => {
  it("is node:crypto's base64 MD5 of the part; small bodies are left to the caller", async () => {
    const part = randomBytes(16 * MiB);
    const view = part.subarray(1000, 5 * MiB + 3);
    assert.equal(await md5Base64(part), createHash("md5").update(part).digest("base64"));
    assert.equal(await md5Base64(view), createHash("md5").update(view).digest("base64"));
    assert.equal(md5Base64(randomBytes(1000)), undefined);
  });
});
