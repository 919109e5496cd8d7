/**
 * The archive with its walk on a worker thread (src/pipeline/workers/
 * archive-thread.ts): the same bytes and callbacks as on this thread, its
 * window against a stalled consumer, and the worker failing.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import {
  type ArchiveEntry,
  type ArchiveOptions,
  type ArchiveProgress,
  type ArchiveWarning,
  createArchive,
  type ListedEntry,
  type SkipReport,
} from "../src/pipeline/archive.js";
import { archiveInWorker } from "../src/pipeline/workers/archive-thread.js";
import { copied } from "../src/pipeline/workers/lent.js";
import { indexFile, type ManifestFile } from "../src/repo/manifest.js";
import { makeByteNamesTree } from "./support/byte-names.js";

const MiB = 1024 * 1024;
const roots: string[] = [];
after(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

function tmpDir(label: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `immutd-thread-${label}-`));
  roots.push(d);
  return d;
}

function write(p: string, content: string | Buffer): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
}

function openFds(): number {
  return fs.readdirSync("/proc/self/fd").length;
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Everything one archive gave: its bytes, every callback in order, its result. */
async function record(opts: ArchiveOptions) {
  const seen = {
    entries: [] as ArchiveEntry[],
    index: [] as string[],
    lasts: [] as string[],
    indexCounts: 0,
    indexFiles: 0,
    warnings: [] as ArchiveWarning[],
    skips: [] as SkipReport[],
    listed: [] as ListedEntry[],
    progress: [] as ArchiveProgress[],
  };
  const a = createArchive({
    ...opts,
    onEntry: (e) => seen.entries.push({ ...e }),
    onIndex: (b) => {
      seen.index.push(b.json);
      seen.lasts.push(b.last);
      seen.indexCounts += b.count;
      seen.indexFiles += b.files;
    },
    onWarning: (w) => seen.warnings.push(w),
    onSkip: (s) => seen.skips.push(s),
    onListed: (l) => seen.listed.push(l),
    onProgress: (p) => seen.progress.push(p),
  });
  const tar = await collect(a.stream);
  const result = await a.done;
  return { ...seen, tar, result };
}

describe("createArchive: the walk on a worker thread", () => {
  let top = "";
  let extra = "";
  before(() => {
    const root = tmpDir("tree");
    top = path.join(root, "t");
    fs.mkdirSync(top);
    makeByteNamesTree(top);
    for (let i = 0; i < 400; i++)
      write(path.join(top, `small/d${i % 7}/f${i}`), randomBytes(i * 7));
    write(path.join(top, "empty"), "");
    write(path.join(top, "streamed.bin"), randomBytes(300 * 1024));
    write(path.join(top, "large.bin"), randomBytes(3 * MiB + 17));
    write(path.join(top, "skip.log"), "left out by an exclude\n");
    write(path.join(top, "cache/CACHEDIR.TAG"), "marker\n");
    write(path.join(top, "cache/junk"), "left out by the marker\n");
    execFileSync("mkfifo", [path.join(top, "a-fifo")]);
    extra = path.join(root, "spooled.out");
    write(extra, "a command's output\n");
  });

  it("gives the same tar, callbacks and counts as the walk on this thread", async () => {
    const opts: ArchiveOptions = {
      paths: [top, path.join(top, "small")],
      exclude: ["*.log"],
      excludeIfPresent: ["CACHEDIR.TAG"],
      extraFiles: [{ name: "immutd-commands/out", path: extra }],
    };
    const here = await record({ ...opts, thread: "main" });
    const there = await record(opts);
    assert.ok(there.tar.equals(here.tar), "the same tar bytes");
    assert.deepEqual(there.entries, here.entries);
    assert.deepEqual(there.warnings, here.warnings);
    assert.deepEqual(there.skips, here.skips);
    assert.deepEqual(there.listed, here.listed);
    assert.deepEqual(there.result, here.result);
    assert.deepEqual(there.progress.at(-1), here.progress.at(-1));
    // The index records: exactly indexFile's of every entry, in order, counted right.
    const records = JSON.parse(`[${there.index.join(",")}]`) as ManifestFile[];
    assert.deepEqual(records, here.entries.map(indexFile));
    assert.equal(there.indexCounts, here.entries.length);
    const files = here.entries.filter((e) => e.type === "file" || e.type === "link").length;
    assert.equal(there.indexFiles, files);
    assert.equal(there.lasts.at(-1), here.entries.at(-1)?.name);
    // Something to compare: every kind of outcome happened.
    assert.ok(here.entries.length > 400);
    assert.ok(here.warnings.some((w) => /fifo/i.test(w.message)));
    assert.deepEqual(here.skips.map((s) => s.rule).sort(), [
      'exclude "*.log"',
      'excludeIfPresent "CACHEDIR.TAG"',
    ]);
    assert.ok(here.entries.some((e) => e.type === "link"));
    // Proof that it did run elsewhere: on this thread every entry makes a
    // callback, from the worker they come in batches of a chunk's worth.
    assert.equal(here.index.length, here.entries.length);
    assert.ok(there.index.length < here.entries.length / 10, `${there.index.length} batches`);
    assert.ok(there.progress.length < here.progress.length / 10);
  });

  it("is the same archive when every chunk goes back to the worker as soon as it is copied", async () => {
    // As the upload does (src/store/multipart.ts): copy, then give back. The
    // worker fills the buffers again; a chunk given back is gone from here.
    const opts: ArchiveOptions = { paths: [top], exclude: ["*.log"] };
    const here = await record({ ...opts, thread: "main" });
    const a = createArchive(opts);
    const parts: Buffer[] = [];
    let detached = 0;
    for await (const c of a.stream) {
      const chunk = c as Buffer;
      parts.push(Buffer.from(chunk));
      copied(chunk);
      if (chunk.buffer.byteLength === 0) detached++;
    }
    await a.done;
    assert.ok(Buffer.concat(parts).equals(here.tar), "the same tar bytes");
    assert.ok(detached > 5, `${detached} of ${parts.length} chunks went back`);
  });

  it("never follows a file swapped for a symlink while the worker walks", async () => {
    // An attacker with write access to the tree swaps a file for a symlink to
    // a secret, over and over, in a process of its own, while backups run.
    // The walk's tests that time the swap exactly (test/source-direct.test.ts)
    // need a hook that keeps the walk on the main thread; this one races the
    // worker's walk as it runs. O_NOFOLLOW on every open keeps the secret out.
    const root = tmpDir("swap");
    const secret = path.join(root, "secret");
    const secretBytes = `secret-${randomBytes(16).toString("hex")}`;
    write(secret, secretBytes);
    const tree = path.join(root, "t");
    for (let i = 0; i < 200; i++) write(path.join(tree, `f${i}`), `plain ${i}\n`);
    const swapper = spawn(
      process.execPath,
      [
        "-e",
        `const fs = require("fs"), p = require("path");
         const [tree, secret] = process.argv.slice(1);
         for (;;) for (let i = 0; i < 200; i += 7) {
           const f = p.join(tree, "f" + i), tmp = f + ".tmp";
           try { fs.symlinkSync(secret, tmp); fs.renameSync(tmp, f); } catch {}
           try { fs.writeFileSync(tmp, "plain " + i + "\\n"); fs.renameSync(tmp, f); } catch {}
         }`,
        tree,
        secret,
      ],
      { stdio: "ignore" },
    );
    try {
      // The swapper must be running before the first walk, or a fast worker walks
      // all rounds before its first swap (it once did, and the test failed).
      const swapped = () =>
        Array.from({ length: 200 }, (_, i) => path.join(tree, `f${i}`)).some((f) =>
          fs.lstatSync(f, { throwIfNoEntry: false })?.isSymbolicLink(),
        );
      // (Each look is remembered: the swapper swaps the file back at once.)
      let seen = swapped();
      for (let i = 0; i < 3000 && !seen; i++) {
        await new Promise((r) => setTimeout(r, 10));
        seen = swapped();
      }
      assert.ok(seen, "the swapper never swapped a file");
      let symlinks = 0;
      // At least 20 rounds; more, up to 200, until a walk has met a symlink.
      for (let round = 0; round < 20 || (symlinks === 0 && round < 200); round++) {
        const got = await record({ paths: [tree], exclude: ["*.tmp"] });
        assert.ok(!got.tar.includes(secretBytes), `round ${round}: the secret is in the archive`);
        symlinks += got.result.symlinks;
      }
      // The race was real: the walk met the swapped-in symlinks, and archived them as such.
      assert.ok(symlinks > 0, "no swap was ever seen");
    } finally {
      swapper.kill("SIGKILL");
    }
  });

  it("keeps a dry run and a run with a planner on this thread", async () => {
    const dry = await record({ paths: [top], dryRun: true });
    assert.equal(dry.progress.length, dry.listed.length);
    const planned = await record({
      paths: [top],
      plan: { changed: () => true, retargeted: () => true, unchanged: () => {} },
    });
    assert.equal(planned.index.length, planned.entries.length);
  });

  it("reads at most a few MiB ahead of a consumer that stalls", async () => {
    const big = path.join(tmpDir("stall"), "t");
    for (let i = 0; i < 4; i++) write(path.join(big, `f${i}`), randomBytes(16 * MiB));
    const fdsBefore = openFds();
    let read = 0;
    const a = createArchive({ paths: [big], onProgress: (p) => (read = p.bytes) });
    let taken = 0;
    await new Promise<void>((resolve) => {
      a.stream.on("data", (chunk: Buffer) => {
        taken += chunk.length;
        if (taken >= 2 * MiB) {
          a.stream.pause();
          resolve();
        }
      });
    });
    await new Promise((resolve) => setTimeout(resolve, 500)); // reading 64 MiB takes far less
    // Progress comes with the chunks, so some of what was read may not be
    // reported yet; but without the window all 64 MiB would have come.
    assert.ok(read - taken < 12 * MiB, `read ${read} bytes while the consumer took ${taken}`);
    a.stream.destroy();
    await assert.rejects(a.done, /destroyed before the archive was complete/);
    assert.equal(openFds(), fdsBefore);
  });

  it("stops the walk when a callback throws, with that error, and leaks no fd", async () => {
    const fdsBefore = openFds();
    const bug = new Error("bug in onIndex");
    let batches = 0;
    const a = createArchive({
      paths: [top],
      onIndex: () => {
        if (++batches === 2) throw bug;
      },
    });
    const streamError = collect(a.stream).then(
      () => null,
      (err: unknown) => err,
    );
    await assert.rejects(a.done, (err) => err === bug);
    assert.equal(await streamError, bug);
    assert.equal(openFds(), fdsBefore);
  });

  it("fails with the walk's own error when an extra file cannot be read", async () => {
    const a = createArchive({
      paths: [top],
      extraFiles: [{ name: "immutd-commands/gone", path: path.join(top, "no-such-output") }],
    });
    const streamError = collect(a.stream).then(
      () => null,
      (err: unknown) => err,
    );
    await assert.rejects(
      a.done,
      /cannot read .*no-such-output for archive entry immutd-commands\/gone/,
    );
    assert.match(String(await streamError), /cannot read/);
  });
});

describe("createArchive: a worker thread that fails", () => {
  const faulty = new URL("./archive-faulty-worker.js", import.meta.url);
  after(() => {
    delete process.env.IMMUTD_TEST_ARCHIVE_FAULT;
  });

  for (const [mode, message] of [
    ["exit", /the archive worker exited unexpectedly \(code 3\)/],
    ["throw", /the archive worker failed: the walk broke/],
  ] as const) {
    // A timeout of its own: a lost exit would leave done pending for ever.
    it(`fails the archive when the worker ${mode}s, after what it sent`, {
      timeout: 20_000,
    }, async () => {
      process.env.IMMUTD_TEST_ARCHIVE_FAULT = mode;
      const lasts: string[] = [];
      const a = archiveInWorker(
        { paths: ["/nonexistent"], onIndex: (b) => lasts.push(b.last) },
        faulty,
      );
      let received = 0;
      const streamError = (async () => {
        for await (const c of a.stream) received += (c as Buffer).length;
      })();
      await assert.rejects(streamError, message);
      await assert.rejects(a.done, message);
      assert.equal(received, 512);
      assert.deepEqual(lasts, ["x"]);
    });
  }

  it("fails the archive when the worker cannot start", { timeout: 20_000 }, async () => {
    const a = archiveInWorker({ paths: ["/"] }, new URL("./no-such-worker.js", import.meta.url));
    a.stream.resume();
    a.stream.on("error", () => {});
    await assert.rejects(a.done, /the archive worker failed: .*no-such-worker/);
  });
});
