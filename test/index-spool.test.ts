/**
 * The manifest's index spooled to disk (src/pipeline/index-spool.ts) and the
 * manifest encoded from the spool (src/repo/manifest-stream.ts): the same
 * document as the in-memory encoders make, for every format; the file's
 * mode, that it has no name once open (nothing a kill could leave); a failing disk.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, it } from "node:test";
import { type ArchiveEntry, createArchive } from "../src/pipeline/archive.js";
import { IndexSpool, SpoolError } from "../src/pipeline/index-spool.js";
import { generateIdentity, parseIdentities } from "../src/repo/age-keys.js";
import { openIndex, sealIndex } from "../src/repo/age-manifest.js";
import {
  decodeManifest,
  encodeManifest,
  IndexTextBatch,
  indexFile,
  type Manifest,
  ManifestIndex,
} from "../src/repo/manifest.js";
import { encodeManifestStream } from "../src/repo/manifest-stream.js";

const work = mkdtempSync(join(tmpdir(), "immutd-spool-"));
const tree = join(work, "tree");
mkdirSync(join(tree, "sub"), { recursive: true });
for (let i = 0; i < 300; i++) writeFileSync(join(tree, "sub", `f${i}`), randomBytes(i));
writeFileSync(Buffer.concat([Buffer.from(join(tree, "caf")), Buffer.from([0xe9])]), "x");
writeFileSync(join(tree, "tab\there"), "y");
symlinkSync("sub/f1", join(tree, "link"));

async function entriesOf(paths: string[]): Promise<ArchiveEntry[]> {
  const entries: ArchiveEntry[] = [];
  const a = createArchive({ paths, onEntry: (e) => entries.push({ ...e }) });
  await pipeline(a.stream, new Writable({ write: (_c, _e, cb) => cb() }));
  await a.done;
  return entries;
}

function head(files: Manifest["files"]): Manifest {
  return {
    formatVersion: 1,
    host: "h",
    job: "j",
    createdAt: "2026-01-01T00:00:00.000Z",
    archive: { key: "k.tar", versionId: "v", size: 1, sha256: "0".repeat(64), compression: "none" },
    encryption: { scheme: "sse-c", keyDerivation: "hkdf-sha256" },
    parent: null,
    walk: "w",
    schedule: null,
    files,
  };
}

/** This process's descriptor of the (unlinked) spool, as /proc/self/fd shows it; undefined if none. */
function openSpoolFd(spool: IndexSpool): string | undefined {
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === `${spool.path} (deleted)`)
        return `/proc/self/fd/${fd}`;
    } catch {
      // The directory's own descriptor, gone by now.
    }
  }
  return undefined;
}

let runs = 0;
function spoolOf(entries: ArchiveEntry[], catalogPath = join(work, "catalog.db")): IndexSpool {
  const spool = IndexSpool.open({ catalogPath, runId: ++runs });
  for (const e of entries) spool.add(e);
  return spool;
}

describe("manifest index spool", () => {
  it("encodes to the same manifest as the in-memory index, byte for byte, and for every entry", async () => {
    const entries = await entriesOf([tree]);
    const index = new ManifestIndex();
    for (const e of entries) index.add(e);
    // An incremental's carried entry goes the same way (a format 1 manifest names no member).
    const carried = { ...(index.files[0] as Manifest["files"][number]), path: "carried/again" };
    index.carry(carried);
    const spool = spoolOf(entries);
    spool.carry(carried);
    assert.equal(spool.entries, entries.length + 1);
    const { files: _f, ...rest } = head(index.files);
    const streamed = await encodeManifestStream(rest, spool.contents());
    spool.remove();
    const inMemory = encodeManifest(head(index.files));
    assert.deepEqual(decodeManifest(streamed), decodeManifest(inMemory));
    assert.ok(streamed.equals(inMemory), "the same gzip bytes as gzipSync of the whole document");
    assert.equal(decodeManifest(streamed).files.length, entries.length + 1);
  });

  it("takes records as text batches (addText) exactly as entries added one by one", async () => {
    const entries = await entriesOf([tree]);
    const one = spoolOf(entries);
    const batched = IndexSpool.open({ catalogPath: join(work, "catalog.db"), runId: ++runs });
    const inMemory = new ManifestIndex();
    // Uneven batches, an empty one among them, around a carried entry.
    const sizes = [1, 0, 7, 50, 1000];
    let at = 0;
    for (const size of sizes) {
      const batch = new IndexTextBatch();
      for (const e of entries.slice(at, at + size)) batch.add(e);
      at += size;
      const t = batch.take() ?? { json: "", count: 0, files: 0 };
      batched.addText(t);
      inMemory.addText(t);
    }
    assert.ok(at >= entries.length, "every entry went into a batch");
    const files = entries.filter((e) => e.type === "file" || e.type === "link").length;
    assert.equal(batched.entries, entries.length);
    assert.equal(batched.files, files);
    assert.equal(one.files, files);
    const bytes = async (spool: IndexSpool) => {
      const parts: Buffer[] = [];
      for await (const p of spool.contents()) parts.push(p);
      spool.remove();
      return Buffer.concat(parts).toString("utf8");
    };
    assert.equal(await bytes(batched), await bytes(one));
    assert.deepEqual(inMemory.files, entries.map(indexFile));
  });

  it("encodes an empty index as files: []", async () => {
    const spool = spoolOf([]);
    const { files: _f, ...rest } = head([]);
    const streamed = await encodeManifestStream(rest, spool.contents());
    spool.remove();
    assert.ok(streamed.equals(encodeManifest(head([]))));
  });

  it("seals the index for age as sealIndex does (format 2), and it opens with the identity", async () => {
    const entries = await entriesOf([tree]);
    const index = new ManifestIndex();
    for (const e of entries) index.add(e);
    const { identity, recipient } = generateIdentity();
    const m = { ...head(index.files), encryption: { scheme: "age" as const, keyDerivation: "x" } };
    const spool = spoolOf(entries);
    const { files: _f, ...rest } = m;
    const streamed = decodeManifest(
      await encodeManifestStream(rest, spool.contents(), [recipient], spool.files),
    );
    spool.remove();
    const reference = decodeManifest(encodeManifest(sealIndex(m, [recipient])));
    assert.equal(streamed.formatVersion, 2);
    assert.deepEqual(streamed.files, []);
    const { sealedFiles: _a, ...s1 } = streamed;
    const { sealedFiles: _b, ...s2 } = reference;
    assert.deepEqual(s1, s2, "every field but the (randomly encrypted) index");
    const ids = parseIdentities(identity, "test");
    assert.deepEqual(openIndex(streamed, ids, "t").files, index.files);
  });

  it("is created 0600 beside the catalog, has no name once open, and is freed by remove()", async () => {
    const dir = join(work, "unlinked");
    mkdirSync(dir);
    const spool = spoolOf(await entriesOf([tree]), join(dir, "catalog.db"));
    assert.ok(spool.path.startsWith(join(dir, "catalog.db.index-")), spool.path);
    // Nothing in the directory: a kill -9 now leaves nothing behind, and the walk meets nothing.
    assert.deepEqual(readdirSync(dir), []);
    const fd = openSpoolFd(spool);
    assert.ok(fd, "the spool is held open by this process");
    assert.equal(statSync(fd).mode & 0o777, 0o600);
    // Still read back in full through its descriptor.
    let n = 0;
    for await (const c of spool.contents()) n += c.length;
    assert.ok(n > 300 * 40, `${n} bytes read back`);
    spool.remove();
    assert.equal(openSpoolFd(spool), undefined, "closed, so the kernel frees it");
    spool.remove(); // twice is fine
  });

  it("refuses a file or symlink already at its name, naming it", () => {
    const catalogPath = join(work, "taken.db");
    const name = `${catalogPath}.index-${process.pid}-7-fixed.spool`;
    symlinkSync(join(work, "elsewhere"), name);
    assert.throws(
      () => IndexSpool.open({ catalogPath, runId: 7, suffix: "fixed" }),
      (err: Error) => err instanceof SpoolError && err.message.includes(name),
    );
    assert.equal(existsSync(join(work, "elsewhere")), false, "the symlink was not followed");
  });

  it("a directory it cannot write in fails the open with the path in the message", () => {
    const catalogPath = join(work, "no-such-dir", "catalog.db");
    assert.throws(
      () => IndexSpool.open({ catalogPath, runId: 1 }),
      (err: Error) =>
        err instanceof SpoolError &&
        err.message.includes(join(work, "no-such-dir", "catalog.db.index-")) &&
        err.message.includes("nothing was uploaded"),
    );
  });

  it("a full disk fails its stage (the upload) with the path, and contents() rejects", async () => {
    const errors: SpoolError[] = [];
    let budget = 64 * 1024;
    const spool = IndexSpool.open({
      catalogPath: join(work, "full.db"),
      runId: 1,
      onError: (err) => errors.push(err),
      write: (_fd, _buf, _off, len) => {
        if (budget <= 0)
          throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        const n = Math.min(len, budget);
        budget -= n;
        return n;
      },
    });
    const stage = spool.endOfIndex();
    const failed = new Promise<Error>((resolve) => stage.on("error", resolve));
    const entries = await entriesOf([tree]);
    // Past a batch (1 MiB of JSON), so that the spool writes to the full disk.
    for (let i = 0; i < 100; i++) for (const e of entries) spool.add(e);
    const err = await failed;
    assert.equal(errors.length, 1);
    assert.equal(err, errors[0]);
    assert.match(err.message, /ENOSPC/);
    assert.ok(err.message.includes(spool.path), err.message);
    await assert.rejects(async () => {
      for await (const _ of spool.contents());
    }, SpoolError);
    spool.remove();
  });

  it("refuses to encode a manifest larger than readers open, rather than store one nobody can read", async () => {
    const spool = spoolOf(await entriesOf([tree]));
    const { files: _f, ...rest } = head([]);
    await assert.rejects(
      encodeManifestStream(rest, spool.contents(), [], undefined, 4096),
      /more than 4096 bytes of JSON, the most a reader opens/,
    );
    spool.remove();
  });

  it("keeps a tail below a batch in memory: a small index never touches the disk", async () => {
    const spool = IndexSpool.open({
      catalogPath: join(work, "last.db"),
      runId: 1,
      write: () => {
        throw new Error("EIO: i/o error");
      },
    });
    const stage = spool.endOfIndex();
    const entries = await entriesOf([tree]);
    for (const e of entries) spool.add(e);
    const out: Buffer[] = [];
    await pipeline(
      Readable.from([Buffer.from("abc")]),
      stage,
      new Writable({
        write: (c: Buffer, _e, cb) => {
          out.push(c);
          cb();
        },
      }),
    );
    assert.equal(Buffer.concat(out).toString(), "abc", "the bytes pass through");
    const chunks: Buffer[] = [];
    for await (const c of spool.contents()) chunks.push(c);
    const files = JSON.parse(`[${Buffer.concat(chunks).toString()}]`) as unknown[];
    assert.equal(files.length, entries.length, "every entry, from memory");
    spool.remove();
  });

  it("reads back the batches written, then the tail, in order", async () => {
    const spool = spoolOf([]);
    const entries = await entriesOf([tree]);
    // Several batches and a tail.
    for (let i = 0; i < 30; i++) for (const e of entries) spool.add(e);
    const chunks: Buffer[] = [];
    for await (const c of spool.contents()) chunks.push(c);
    const files = JSON.parse(`[${Buffer.concat(chunks).toString()}]`) as { path: string }[];
    assert.equal(files.length, 30 * entries.length);
    assert.equal(files.at(-1)?.path, indexFile(entries.at(-1) as ArchiveEntry).path);
    spool.remove();
  });
});
