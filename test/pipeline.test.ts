import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import { type ArchiveOptions, createArchive } from "../src/pipeline/archive.js";
import { cipherFor } from "../src/pipeline/cipher.js";
import { Coalesce, DECODE_CHUNK, decoderFor, encoderFor } from "../src/pipeline/codec.js";
import { HashingCounter } from "../src/pipeline/hash.js";
import { runStages, type Stages } from "../src/pipeline/index.js";
import { type Sink, s3Sink } from "../src/pipeline/sink.js";
import { deriveSseKey, KEY_DERIVATION } from "../src/repo/keys.js";
import type { ObjectStore } from "../src/store/store.js";
import { makePinnedTree, normalisedHash } from "./support/pinned-tree.js";

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe("the tar bytes of a fixed tree", () => {
  it("are the ones immutd 0.1 wrote (pinned SHA-256 of the normalised archive)", async () => {
    const { top, token } = makePinnedTree();
    cleanups.push(() => fs.rmSync(top, { recursive: true, force: true }));
    const a = createArchive({ paths: [top] });
    const tar = await collect(a.stream);
    await a.done;
    assert.equal(
      normalisedHash(tar, token),
      "04066e883a128fa654b1de1daaae1e59699d008e40402d3243209878ebda34a3",
    );
  });
});

const MiB = 1024 * 1024;

function openFds(): number {
  return fs.readdirSync("/proc/self/fd").length;
}

/** A tree of `files` random files of `size` bytes each, removed when the test file ends. */
function randomTree(files: number, size: number): string {
  const top = fs.mkdtempSync(path.join(os.tmpdir(), "immutd-stages-"));
  cleanups.push(() => fs.rmSync(top, { recursive: true, force: true }));
  for (let i = 0; i < files; i++) fs.writeFileSync(path.join(top, `f${i}`), randomBytes(size));
  return top;
}

/** A store whose upload is the given function of the body (only upload is used by the sink). */
function storeWith(upload: (body: Readable) => Promise<{ versionId: string }>): ObjectStore {
  return { upload: (req: { body: Readable }) => upload(req.body) } as unknown as ObjectStore;
}

/** A Writable that keeps every chunk in `into`. */
function collectInto(into: Buffer[]): Writable {
  return new Writable({
    write(chunk: Buffer, _e, cb) {
      into.push(chunk);
      cb();
    },
  });
}

/** Reads the body to its end, returning every byte. */
async function readAll(body: Readable): Promise<Buffer> {
  return collect(body);
}

function stages(
  top: string,
  sink: Sink,
  over: Partial<Stages> = {},
  walk: Omit<ArchiveOptions, "paths"> = {},
): Stages {
  const signal = over.signal ? { signal: over.signal } : {};
  return {
    archive: createArchive({ paths: [top], ...signal, ...walk }),
    between: [],
    hash: new HashingCounter(),
    sink,
    cancelled: () => new Error("job t: cancelled"),
    ...over,
  };
}

describe("codec stage", () => {
  const data = Buffer.concat([
    randomBytes(300_000),
    Buffer.alloc(2 * MiB, "text, text "),
    randomBytes(7),
  ]);
  for (const c of ["none", "gzip", "zstd"] as const) {
    it(`${c}: decoderFor undoes encoderFor`, async () => {
      const chunks: Buffer[] = [];
      await pipeline([
        Readable.from([data.subarray(0, 1000), data.subarray(1000)]),
        ...encoderFor(c),
        ...decoderFor(c),
        new Writable({
          write(chunk: Buffer, _e, cb) {
            chunks.push(chunk);
            cb();
          },
        }),
      ]);
      assert.ok(Buffer.concat(chunks).equals(data));
      if (c !== "none") {
        // The decoders hand on up to 1 MiB at a time (zlib's default is 16 KiB,
        // four times the CPU per byte downstream: one pool round trip and one
        // file write per chunk).
        const largest = Math.max(...chunks.map((b) => b.length));
        assert.ok(largest > 16384 && largest <= DECODE_CHUNK, `largest decoded chunk ${largest}`);
      }
    });
  }

  it("Coalesce joins small chunks into writes of at least its minimum, in order, the rest at the end", async () => {
    const out: Buffer[] = [];
    const pieces = Array.from({ length: 40 }, (_, i) => data.subarray(i * 1000, (i + 1) * 1000));
    await pipeline([
      Readable.from([...pieces, data.subarray(40_000)]),
      new Coalesce(4096),
      collectInto(out),
    ]);
    assert.ok(Buffer.concat(out).equals(data), "every byte, in order");
    assert.deepEqual(
      out.map((b) => b.length),
      [...Array(8).fill(5000), data.length - 40_000],
      "five 1000-byte chunks per write, then the large chunk as it came (nothing was held before it)",
    );
    const tail: Buffer[] = [];
    await pipeline([
      Readable.from([data.subarray(0, 10), data.subarray(10, 30)]),
      new Coalesce(4096),
      collectInto(tail),
    ]);
    assert.deepEqual(
      tail.map((b) => b.length),
      [30],
      "what is held when the input ends comes out whole",
    );
  });

  it("gzip writes the bytes immutd 0.1 wrote (zlib level 6), so old and new archives compare", async () => {
    const out = await collect(Readable.from([data]).pipe(encoderFor("gzip")[0] as Transform));
    assert.ok(out.equals(gzipSync(data, { level: 6 })));
    assert.equal(encoderFor("none").length, 0, "no compression costs no stage");
  });
});

describe("codec stage: zstd", () => {
  const tarOf = async () => {
    const { top } = makePinnedTree();
    cleanups.push(() => fs.rmSync(top, { recursive: true, force: true }));
    fs.writeFileSync(path.join(top, "big.txt"), Buffer.alloc(3 * MiB, "log line 42\n"));
    fs.writeFileSync(path.join(top, "noise.bin"), randomBytes(MiB));
    const a = createArchive({ paths: [top] });
    const tar = await collect(a.stream);
    await a.done;
    return tar;
  };
  const zstd = async (tar: Buffer, level?: number) =>
    collect(
      Readable.from([tar.subarray(0, 4096), tar.subarray(4096)]).pipe(
        encoderFor("zstd", level)[0] as Transform,
      ),
    );
  const unzstd = async (z: Buffer) => {
    const out: Buffer[] = [];
    await pipeline([Readable.from([z]), ...decoderFor("zstd"), collectInto(out)]);
    return Buffer.concat(out);
  };

  it("the standard zstd -d reads immutd's archive back byte for byte into the tar", async () => {
    const tar = await tarOf();
    const z = await zstd(tar);
    assert.ok(z.length < tar.length / 2, `compressed ${tar.length} to ${z.length}`);
    const r = spawnSync("zstd", ["-d", "-c", "-q"], { input: z, maxBuffer: 64 * MiB });
    assert.equal(r.status, 0, String(r.stderr));
    assert.ok(r.stdout.equals(tar), "zstd -d gives back the tar");
    const t = spawnSync("zstd", ["-t", "-q"], { input: z });
    assert.equal(t.status, 0, String(t.stderr));
    // And immutd's own decoder reads what `zstd -19` wrote, so an archive made by any zstd restores.
    const cli = spawnSync("zstd", ["-19", "-c", "-q"], { input: tar, maxBuffer: 64 * MiB });
    assert.ok((await unzstd(cli.stdout)).equals(tar));
  });

  it("compressionLevel reaches the encoder (19 smaller than 1)", async () => {
    const tar = await tarOf();
    const [fast, small] = [await zstd(tar, 1), await zstd(tar, 19)];
    assert.ok(small.length < fast.length, `level 1: ${fast.length}, level 19: ${small.length}`);
    assert.ok((await unzstd(small)).equals(tar));
  });

  it("a truncated or corrupted zstd archive fails decoding instead of yielding a short tar", async () => {
    const tar = await tarOf();
    const z = await zstd(tar);
    const flipped = Buffer.from(z);
    for (let i = z.length >> 1; i < (z.length >> 1) + 16; i++)
      flipped[i] = (flipped[i] ?? 0) ^ 0x5a;
    for (const [what, bad] of [
      ["cut in half", z.subarray(0, z.length >> 1)],
      ["cut before the checksum", z.subarray(0, z.length - 20)],
      ["16 bytes flipped", flipped],
      ["not zstd at all", tar.subarray(0, 4096)],
    ] as const) {
      await assert.rejects(
        unzstd(bad),
        /unexpected end of file|checksum|ZSTD|Unknown frame|corrupt/i,
        what,
      );
    }
  });
});

describe("cipher stage", () => {
  it("decides the SSE-C key per object from the master key, as keys.ts derives it", () => {
    const master = randomBytes(32);
    const a = cipherFor(master, "b", "host/job/1.tar.gz");
    assert.ok(a.sseKey?.equals(deriveSseKey(master, "b", "host/job/1.tar.gz")));
    assert.equal(a.scheme, "sse-c");
    assert.equal(a.keyDerivation, KEY_DERIVATION);
    assert.deepEqual(a.stages, [], "SSE-C encrypts on the server: no client stage");
    assert.ok(!a.sseKey?.equals(cipherFor(master, "b", "host/job/2.tar.gz").sseKey as Buffer));
    assert.ok(
      !a.sseKey?.equals(cipherFor(randomBytes(32), "b", "host/job/1.tar.gz").sseKey as Buffer),
    );
  });
});

describe("hash stage", () => {
  it("passes every chunk unchanged and counts and hashes exactly those bytes", async () => {
    const input = [randomBytes(1), Buffer.alloc(0), randomBytes(65_537), randomBytes(3 * MiB)];
    const totals: number[] = [];
    const h = new HashingCounter((n) => totals.push(n));
    assert.throws(() => h.digest(), /before the stream ended/);
    const out = await collect(Readable.from(input).pipe(h));
    const all = Buffer.concat(input);
    assert.ok(out.equals(all));
    assert.equal(h.bytes, all.length);
    assert.equal(h.digest(), createHash("sha256").update(all).digest("hex"));
    assert.equal(totals.at(-1), all.length);
  });
});

describe("runStages: the composition", { timeout: 60_000 }, () => {
  it("stores exactly the bytes it hashed, and the walk's counts", async () => {
    const top = randomTree(3, 2 * MiB + 5);
    let stored: Buffer = Buffer.alloc(0);
    const sink = s3Sink(
      storeWith(async (body) => {
        stored = await readAll(body);
        return { versionId: "v1" };
      }),
      { key: "k", sseKey: randomBytes(32) },
    );
    const s = stages(top, sink, { between: encoderFor("gzip") });
    const r = await runStages(s);
    assert.equal(r.versionId, "v1");
    assert.equal(r.walk.files, 3);
    assert.equal(r.bytes, stored.length);
    assert.equal(r.sha256, createHash("sha256").update(stored).digest("hex"));
    const tar = gunzipSync(stored);
    assert.equal(tar.length % 512, 0);
  });

  it("a sink that fails mid-upload fails the run with its own error, stops the walk and leaks no fd", async () => {
    const top = randomTree(48, MiB);
    const fdsBefore = openFds();
    const refused = new Error("UploadPart: 500 InternalError");
    const sink = s3Sink(
      storeWith(async (body) => {
        // As lib-storage does: it stops reading the body, it does not destroy it.
        await new Promise<void>((resolve) => {
          let got = 0;
          const onData = (chunk: Buffer) => {
            got += chunk.length;
            if (got < 3 * MiB) return;
            body.off("data", onData);
            body.pause();
            resolve();
          };
          body.on("data", onData);
        });
        throw refused;
      }),
      { key: "k", sseKey: randomBytes(32) },
    );
    let read = 0;
    const s = stages(
      top,
      sink,
      { between: encoderFor("gzip") },
      { onProgress: (p) => (read = p.bytes) },
    );
    await assert.rejects(runStages(s), (err) => err === refused);
    await assert.rejects(s.archive.done);
    assert.ok(read < 24 * MiB, `the walk read ${read} bytes after the sink failed`);
    assert.ok(s.archive.stream.destroyed && s.hash.destroyed);
    assert.equal(openFds(), fdsBefore);
  });

  it("a codec that fails aborts the sink's body and leaks no fd", async () => {
    const top = randomTree(2, 16 * MiB);
    const fdsBefore = openFds();
    const broken = new Error("codec: out of memory");
    let seen = 0;
    const codec = new Transform({
      transform(chunk: Buffer, _e, cb) {
        seen += chunk.length;
        cb(seen > 2 * MiB ? broken : null, chunk);
      },
    });
    let bodyFailed = false;
    const sink = s3Sink(
      storeWith(async (body) => {
        try {
          await readAll(body);
        } catch (err) {
          bodyFailed = true;
          throw err;
        }
        return { versionId: "never" };
      }),
      { key: "k", sseKey: randomBytes(32) },
    );
    await assert.rejects(
      runStages(stages(top, sink, { between: [codec] })),
      (err) => err === broken,
    );
    assert.ok(bodyFailed, "the upload saw its body fail (and so aborts the multipart upload)");
    assert.equal(openFds(), fdsBefore);
  });

  it("cancelling fails with the cancel error and closes every file", async () => {
    const top = randomTree(2, 16 * MiB);
    const fdsBefore = openFds();
    const controller = new AbortController();
    const sink = s3Sink(
      storeWith(async (body) => {
        let got = 0;
        for await (const chunk of body) {
          got += (chunk as Buffer).length;
          if (got > MiB) controller.abort(new Error("SIGTERM"));
        }
        return { versionId: "never" };
      }),
      { key: "k", sseKey: randomBytes(32) },
    );
    const s = stages(top, sink, { signal: controller.signal });
    await assert.rejects(runStages(s), /job t: cancelled/);
    await assert.rejects(s.archive.done);
    assert.equal(openFds(), fdsBefore);
  });

  for (const c of ["none", "gzip"] as const) {
    it(`${c}: a sink that stops reading stops the walk within a few MiB (backpressure end to end)`, async () => {
      // onProgress comes after each entry, so many files make a fine-grained measure.
      const top = randomTree(64, MiB);
      let resume: () => void = () => {};
      const stalled = new Promise<void>((r) => (resume = r));
      let taken = 0;
      const sink = s3Sink(
        storeWith(async (body) => {
          for await (const chunk of body) {
            taken += (chunk as Buffer).length;
            if (taken > MiB) await stalled; // the server stopped answering
          }
          return { versionId: "v" };
        }),
        { key: "k", sseKey: randomBytes(32) },
      );
      // File content the walk has read, the measure of read-ahead.
      let read = 0;
      const s = stages(
        top,
        sink,
        { between: encoderFor(c) },
        { onProgress: (p) => (read = p.bytes) },
      );
      const running = runStages(s);
      // Wait until the walk has stopped moving: reading 64 MiB takes far less than this.
      let last = -1;
      while (read !== last) {
        last = read;
        await new Promise((r) => setTimeout(r, 300));
      }
      assert.ok(read < 24 * MiB, `the walk read ${read} bytes while the sink took ${taken}`);
      resume();
      const r = await running;
      assert.ok(r.bytes > 0);
      assert.equal(read, 64 * MiB, "and it finishes once the sink reads again");
    });
  }
});
