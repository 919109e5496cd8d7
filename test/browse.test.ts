/**
 * ls/find and the ranged restore without a server: the plan of byte ranges
 * from a manifest, the checks that catch a manifest whose offsets lie, hostile
 * names, and the tar -tv lines. The real-server side is test/browse.rgw.test.ts.
 */
import assert from "node:assert/strict";
import {
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { describe, it } from "node:test";
import { pack } from "tar-stream";
import { pathMatcher, tvLine } from "../src/cli/browse.js";
import { planRanges, restoreRanges } from "../src/flows/ranged.js";
import { RestoreError, type RestoreSource } from "../src/flows/restore.js";
import { createArchive } from "../src/pipeline/archive.js";
import { byteStringFrom, fsPath } from "../src/pipeline/file-names.js";
import { type Manifest, ManifestIndex } from "../src/repo/manifest.js";
import type { ObjectStore } from "../src/store/store.js";

/** A store that serves one version's bytes and counts what it sent. */
function rangeStore(data: Buffer) {
  const calls: { start: number; end: number }[] = [];
  const store = {
    async get(_k: string, _v: string, _s: Buffer, o: { start?: number; end?: number } = {}) {
      const start = o.start ?? 0;
      const end = o.end ?? data.length;
      calls.push({ start, end });
      return Readable.from([data.subarray(start, end)]);
    },
  } as unknown as ObjectStore;
  return { store, calls, sent: () => calls.reduce((n, c) => n + c.end - c.start, 0) };
}

function source(size: number): RestoreSource {
  return {
    job: "files",
    bucket: "b",
    key: "h/files/x.tar",
    versionId: "v1",
    compression: "none",
    sseKey: Buffer.alloc(32),
    createdAt: new Date(),
    size,
  };
}

function manifestFor(tar: Buffer, index: ManifestIndex): Manifest {
  return {
    formatVersion: 1,
    host: "h",
    job: "files",
    createdAt: new Date().toISOString(),
    archive: {
      key: "h/files/x.tar",
      versionId: "v1",
      size: tar.length,
      sha256: "",
      compression: "none",
    },
    encryption: { scheme: "sse-c", keyDerivation: "x" },
    parent: null,
    files: index.files,
  };
}

const LONG = `${"d".repeat(60)}/${"long-name-".repeat(12)}.txt`;
const LATIN1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "caf\xe9"

/** A real archive made by immutd's writer from a tree with a big file, a long name, a hard link and a Latin-1 name. */
async function sample(): Promise<{ root: string; tar: Buffer; m: Manifest }> {
  const root = mkdtempSync(join(tmpdir(), "immutd-browse-"));
  const data = join(root, "data");
  mkdirSync(join(data, "d".repeat(60)), { recursive: true });
  writeFileSync(join(data, "big.bin"), Buffer.alloc(3_000_000, 7));
  writeFileSync(join(data, LONG), "long\n");
  writeFileSync(join(data, "small.txt"), "abc");
  linkSync(join(data, "small.txt"), join(data, "hard.txt"));
  writeFileSync(Buffer.concat([fsPath(`${data}/`), LATIN1]), "latin1\n");
  symlinkSync("small.txt", join(data, "sym"));
  const index = new ManifestIndex();
  const a = createArchive({ paths: [data], onEntry: (e) => index.add(e) });
  const tar = await buffer(a.stream);
  await a.done;
  return { root, tar, m: manifestFor(tar, index) };
}

const extractMode = (dest: string) =>
  ({ kind: "extract", dest, overwrite: false, devices: false }) as const;

describe("ranged restore", () => {
  it("restores a long name, a hard link with its target and a Latin-1 name by reading only their ranges", async () => {
    const { root, tar, m } = await sample();
    const rel = join(root, "data").slice(1);
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const s = rangeStore(tar);
    const include = [`${rel}/${LONG}`, `${rel}/small.txt`, `${rel}/hard.txt`, `${rel}/caf?`];
    const r = await restoreRanges(s.store, source(tar.length), m, extractMode(dest), { include });
    assert.equal(readFileSync(join(dest, rel, LONG), "utf8"), "long\n");
    assert.equal(readFileSync(join(dest, rel, "hard.txt"), "utf8"), "abc");
    assert.equal(
      readFileSync(Buffer.concat([fsPath(`${dest}/${rel}/`), LATIN1])).toString(),
      "latin1\n",
    );
    assert.equal(existsSync(join(dest, rel, "big.bin")), false);
    assert.equal(r.result?.files, 4);
    // The 3 MB file was not read: every request is a small range.
    assert.ok(s.sent() < 20_000, `sent ${s.sent()} of ${tar.length}`);
    assert.ok(s.calls.every((c) => c.end - c.start < 20_000));
  });

  it("a manifest whose offsets point at another entry stops before anything wrong is written", async () => {
    const { root, tar, m } = await sample();
    const rel = join(root, "data").slice(1);
    const small = m.files.find((f) => f.path.endsWith("/hard.txt"));
    const big = m.files.find((f) => f.path.endsWith("/big.bin"));
    assert.ok(small && big);
    // The forger swaps the offsets: "hard.txt" (a 3-byte file) now points at big.bin's header.
    [small.offset, big.offset] = [big.offset, small.offset];
    m.files.sort((a, b) => a.offset - b.offset);
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const s = rangeStore(tar);
    await assert.rejects(
      restoreRanges(s.store, source(tar.length), m, extractMode(dest), {
        include: [`${rel}/hard.txt`],
      }),
      (err: unknown) =>
        err instanceof RestoreError &&
        /index does not match the archive/.test(err.message) &&
        /--whole-archive/.test(err.message),
    );
    assert.equal(existsSync(join(dest, rel, "hard.txt")), false);
    assert.equal(existsSync(join(dest, rel, "big.bin")), false);
  });

  it("a manifest whose offset lands inside an entry's data is refused (header checksum or name)", async () => {
    const { root, tar, m } = await sample();
    const rel = join(root, "data").slice(1);
    const small = m.files.find((f) => f.path.endsWith("/hard.txt"));
    assert.ok(small);
    small.offset += 512;
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    await assert.rejects(
      restoreRanges(rangeStore(tar).store, source(tar.length), m, extractMode(dest), {
        include: [`${rel}/hard.txt`],
      }),
      RestoreError,
    );
    assert.equal(existsSync(join(dest, rel, "hard.txt")), false);
  });

  it("offsets out of order or past the archive are refused before any request", async () => {
    const { tar, m } = await sample();
    const last = m.files.at(-1);
    assert.ok(last);
    last.offset = tar.length + 512;
    const s = rangeStore(tar);
    await assert.rejects(
      restoreRanges(s.store, source(tar.length), m, extractMode(tmpdir()), { include: ["**"] }),
      /out of order or outside/,
    );
    assert.equal(s.calls.length, 0);
  });

  it("hostile names in archive and manifest ('../', absolute) are refused, nothing lands outside the target", async () => {
    const p = pack();
    const index = new ManifestIndex();
    let offset = 0;
    const add = (name: string, body: string) => {
      index.add({
        name,
        type: "file",
        size: body.length,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        offset,
      });
      p.entry({ name, size: body.length, mode: 0o644, mtime: new Date(0) }, body);
      offset += 512 + Math.ceil(body.length / 512) * 512;
    };
    add("../escape.txt", "evil");
    add("/abs-escape.txt", "evil");
    add("ok.txt", "fine");
    p.finalize();
    const tar = await buffer(p);
    const m = manifestFor(tar, index);
    const base = mkdtempSync(join(tmpdir(), "immutd-hostile-"));
    const dest = join(base, "dest");
    mkdirSync(dest);
    await assert.rejects(
      restoreRanges(rangeStore(tar).store, source(tar.length), m, extractMode(dest), {
        include: ["**", "../escape.txt", "/abs-escape.txt"],
      }),
      /refused as unsafe/,
    );
    assert.equal(existsSync(join(base, "escape.txt")), false);
    assert.equal(existsSync("/abs-escape.txt"), false);
    assert.equal(readFileSync(join(dest, "ok.txt"), "utf8"), "fine");
  });

  it("plans merged ranges and the end-of-archive blocks", async () => {
    const { tar, m } = await sample();
    const all = planRanges(m, ["**"]);
    assert.equal(all.ranges.length, 1);
    assert.deepEqual(all.ranges[0], { start: 0, end: tar.length });
    assert.equal(all.tail.length, 0);
    const one = planRanges(m, ["**/small.txt"]);
    assert.equal(one.entries.length, 1);
    assert.equal(one.tail.length, 1024);
  });
});

describe("ls and find output", () => {
  it("prints tar -tv lines with escaped names and link targets", async () => {
    const { m } = await sample();
    const lines = m.files.map(tvLine);
    assert.ok(
      lines.some((l) => /^-rw-r--r-- \d+\/\d+ +3 .*\/hard\.txt$/.test(l)),
      lines.join("\n"),
    );
    assert.ok(
      lines.some((l) => /\/caf\\351$/.test(l)),
      lines.join("\n"),
    );
    assert.ok(lines.some((l) => /^h.*\/small\.txt link to .*\/hard\.txt$/.test(l)));
    assert.ok(lines.some((l) => /^l.*\/sym -> small\.txt$/.test(l)));
    assert.ok(lines.some((l) => /^d/.test(l)));
  });

  it("a forged manifest's control characters are escaped, not sent to the terminal", () => {
    const f = {
      path: "evil\x1b[2J\nname",
      type: "symlink" as const,
      size: 0,
      mode: 0o777,
      uid: 0,
      gid: 0,
      mtime: 0,
      link: "x\x07",
      offset: 0,
    };
    const line = tvLine(f);
    assert.ok(![...line].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f), line);
    assert.match(line, /evil\\033\[2J\\nname -> x\\a$/);
  });

  it("a pattern without / matches file names, one with / whole paths", () => {
    const name = pathMatcher("*.conf");
    assert.equal(name("etc/nginx/nginx.conf"), true);
    assert.equal(name("etc/nginx/conf"), false);
    const path = pathMatcher("/etc/nginx/**");
    assert.equal(path("etc/nginx/sites/a"), true);
    assert.equal(path("srv/etc/nginx/a"), false);
    assert.equal(pathMatcher("caf?")(byteStringFrom(Buffer.from([0x63, 0x61, 0x66, 0xe9]))), true);
    assert.throws(() => pathMatcher(" "), /must not be empty/);
  });
});
