import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough, Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { after, describe, it } from "node:test";
import { type Header, pack } from "tar-stream";
import { ImmutdError, UsageError } from "../src/errors.js";
import { createArchive } from "../src/pipeline/archive.js";
import {
  compileIncludes,
  type ExtractOptions,
  type ExtractResult,
  type ExtractWarning,
  extractTar,
  listTar,
  type TarEntryInfo,
} from "../src/pipeline/extract.js";
import { displayName } from "../src/pipeline/file-names.js";
import { paxHeader, paxRecord } from "../src/pipeline/pax.js";
import { BYTE_NAMES, bytesOf, byteTree, makeByteNamesTree } from "./support/byte-names.js";

const MiB = 1024 * 1024;
const BASE_MTIME = 1_500_000_000; // 2017-07-14
const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

/** A fresh directory under os.tmpdir(), removed when the test file ends. */
function tmpDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `immutd-extract-${label}-`));
  cleanups.push(() => {
    // Read-only directories left by a test must not stop the cleanup.
    writableDirs(Buffer.from(dir));
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** chmod 0700 of every directory below `abs`, through Buffer paths (names may not be UTF-8). */
function writableDirs(abs: Buffer): void {
  if (!fs.lstatSync(abs).isDirectory()) return;
  fs.chmodSync(abs, 0o700);
  for (const n of fs.readdirSync(abs, { encoding: "buffer" }))
    writableDirs(Buffer.concat([abs, Buffer.from("/"), n]));
}

function* walk(abs: string, rel = ""): Generator<{ abs: string; rel: string; st: fs.Stats }> {
  const st = fs.lstatSync(abs);
  yield { abs, rel, st };
  if (!st.isDirectory()) return;
  for (const name of fs.readdirSync(abs).sort()) {
    yield* walk(path.join(abs, name), rel === "" ? name : `${rel}/${name}`);
  }
}

function write(p: string, content: string | Buffer, mode?: number): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  if (mode !== undefined) fs.chmodSync(p, mode);
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Open file descriptors of this process (Linux), to catch leaks. */
function openFds(): number {
  return fs.readdirSync("/proc/self/fd").length;
}

/** The bytes in pieces of `size`, so entries and headers straddle chunk boundaries. */
function streamOf(tar: Buffer, size = 7919): Readable {
  const chunks: Buffer[] = [];
  for (let i = 0; i < tar.length; i += size) chunks.push(tar.subarray(i, i + size));
  return Readable.from(chunks, { objectMode: false });
}

interface PackEntry {
  header: Partial<Header> & { name: string; pax?: Record<string, string> };
  content?: string | Buffer;
  /** Raw pax records (src/pipeline/pax.ts) written in a pax header just before the entry. */
  rawPax?: Buffer;
}

/** A hand-made tar (tar-stream's pack), for archives immutd itself would never write. */
async function packTar(entries: PackEntry[]): Promise<Buffer> {
  const p = pack();
  const out: Buffer[] = [];
  const collected = (async () => {
    for await (const chunk of p) out.push(chunk as Buffer);
  })();
  for (const { header, content, rawPax } of entries) {
    const body = content === undefined ? undefined : Buffer.from(content);
    const h = { mtime: new Date(BASE_MTIME * 1000), ...header } as Parameters<typeof p.entry>[0];
    if (rawPax !== undefined)
      p.push(paxHeader(rawPax, { mode: 0o644, uid: 0, gid: 0, mtime: BASE_MTIME }));
    if (body !== undefined) h.size = body.length;
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body === undefined) p.entry(h, cb);
      else p.entry(h, body, cb);
    });
  }
  p.finalize();
  await collected;
  return Buffer.concat(out);
}

async function extract(
  tar: Buffer | Readable,
  opts: ExtractOptions,
): Promise<{ result: ExtractResult; warnings: ExtractWarning[] }> {
  const warnings: ExtractWarning[] = [];
  const input = Buffer.isBuffer(tar) ? streamOf(tar) : tar;
  const result = await extractTar(input, { ...opts, onWarning: (w) => warnings.push(w) });
  return { result, warnings };
}

/** The warnings about one entry (named as in the archive), for messages in assertion failures. */
function about(warnings: ExtractWarning[], name: string): ExtractWarning[] {
  return warnings.filter((w) => w.path === displayName(name));
}

describe("extractTar round trip", () => {
  it("restores an archive of a tree faithfully: contents, types, modes, mtimes, links, owners", async () => {
    const base = tmpDir("rt");
    const src = path.join(base, "src");
    fs.mkdirSync(src);
    const big = randomBytes(2 * MiB);
    write(path.join(src, "a/b/c/deep.txt"), "deep\n");
    fs.mkdirSync(path.join(src, "empty"));
    write(path.join(src, "big.bin"), big);
    write(path.join(src, "bin/tool"), "#!/bin/sh\necho hi\n", 0o755);
    write(path.join(src, "secret"), "s3cr3t\n", 0o600);
    write(path.join(src, "bin/suid"), "pretend binary\n", 0o4755);
    fs.symlinkSync("big.bin", path.join(src, "link"));
    fs.symlinkSync("does/not/exist", path.join(src, "dangling"));
    write(path.join(src, "hard/one"), "shared inode\n");
    fs.linkSync(path.join(src, "hard/one"), path.join(src, "hard/two"));
    write(path.join(src, "ünïcødé/日本語 ☃.txt"), "unicode\n");
    const longDir = `long-${"d".repeat(120)}`;
    const longFile = `${"f".repeat(200)}.txt`;
    write(path.join(src, longDir, longFile), "long name\n");
    write(path.join(src, "ro/inside.txt"), "in a read-only dir\n");
    write(path.join(src, "owned"), "owned by someone else\n");
    if (isRoot) {
      fs.chownSync(path.join(src, "owned"), 1234, 5678);
      fs.lchownSync(path.join(src, "link"), 4321, 8765);
      fs.chownSync(path.join(src, "a/b"), 1111, 2222);
    }
    // Distinct mtimes, children before their directory (writing a child bumps it).
    let t = BASE_MTIME;
    const entries = [...walk(src)].reverse();
    for (const e of entries) {
      if (e.st.isSymbolicLink()) fs.lutimesSync(e.abs, t, t);
      else if (e.st.isFile()) fs.utimesSync(e.abs, t, t);
      t += 1000;
    }
    fs.chmodSync(path.join(src, "ro"), 0o555);
    for (const e of entries) {
      if (!e.st.isDirectory()) continue;
      fs.utimesSync(e.abs, t, t);
      t += 1000;
    }

    const dest = tmpDir("rt-dest");
    const archive = createArchive({ paths: [src] });
    const progress: number[] = [];
    const warnings: ExtractWarning[] = [];
    const result = await extractTar(archive.stream, {
      dest,
      onWarning: (w) => warnings.push(w),
      onProgress: (p) => progress.push(p.bytes),
    });
    await archive.done;
    assert.deepEqual(warnings, []);

    const restored = path.join(dest, src.slice(1));
    const want = [...walk(src)];
    const got = [...walk(restored)];
    assert.deepEqual(
      got.map((e) => e.rel),
      want.map((e) => e.rel),
    );
    for (const [i, w] of want.entries()) {
      const g = got[i];
      assert.ok(g);
      const what = w.rel === "" ? "(top)" : w.rel;
      const kind = (st: fs.Stats) =>
        st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : "other";
      assert.equal(kind(g.st), kind(w.st), `type of ${what}`);
      assert.equal(
        Math.floor(g.st.mtimeMs / 1000),
        Math.floor(w.st.mtimeMs / 1000),
        `mtime of ${what}`,
      );
      if (w.st.isSymbolicLink()) {
        assert.equal(fs.readlinkSync(g.abs), fs.readlinkSync(w.abs), `target of ${what}`);
      } else {
        // Without owners (not root), setuid/setgid are stripped from files.
        const want = w.st.isFile() && !isRoot ? w.st.mode & 0o1777 : w.st.mode & 0o7777;
        assert.equal((g.st.mode & 0o7777).toString(8), want.toString(8), `mode of ${what}`);
      }
      if (w.st.isFile()) {
        assert.equal(
          sha256(fs.readFileSync(g.abs)),
          sha256(fs.readFileSync(w.abs)),
          `content of ${what}`,
        );
      }
      if (isRoot) {
        assert.equal(`${g.st.uid}:${g.st.gid}`, `${w.st.uid}:${w.st.gid}`, `owner of ${what}`);
      }
    }
    const one = fs.statSync(path.join(restored, "hard/one"));
    const two = fs.statSync(path.join(restored, "hard/two"));
    assert.equal(one.ino, two.ino, "hard link pair shares one inode");
    assert.equal(one.nlink, 2);
    assert.deepEqual(fs.readdirSync(path.join(restored, "empty")), []);
    if (isRoot) assert.equal(fs.statSync(path.join(restored, "owned")).uid, 1234);

    // Counts: files include the hard link; dirs include the archived top directory.
    const files = want.filter((e) => e.st.isFile()).length;
    const dirs = want.filter((e) => e.st.isDirectory()).length;
    const symlinks = want.filter((e) => e.st.isSymbolicLink()).length;
    assert.deepEqual(result, {
      files,
      dirs,
      symlinks,
      bytes: want
        .filter((e) => e.st.isFile() && e.rel !== "hard/two")
        .reduce((n, e) => n + e.st.size, 0),
      refused: 0,
      skipped: 0,
      warnings: 0,
      unmatched: [],
    });
    assert.ok(progress.length > files, "progress reported per entry and during the big file");
    assert.equal(progress.at(-1), result.bytes);
    // Parents the archive has no entry for are created with the default mode.
    assert.equal(fs.statSync(path.join(dest, base.slice(1))).mode & 0o7777, 0o755);
  });

  it("strips setuid/setgid when owners are not restored, keeps them when they are", async () => {
    const tar = await packTar([
      { header: { name: "suid", mode: 0o4755, uid: process.getuid?.() ?? 0 }, content: "x" },
      { header: { name: "sgid", mode: 0o2750, uid: process.getuid?.() ?? 0 }, content: "y" },
      { header: { name: "sticky", mode: 0o1644 }, content: "z" },
    ]);
    const plain = tmpDir("suid-plain");
    await extract(tar, { dest: plain, owners: false });
    const modeOf = (p: string) => (fs.statSync(p).mode & 0o7777).toString(8);
    assert.equal(modeOf(path.join(plain, "suid")), "755");
    assert.equal(modeOf(path.join(plain, "sgid")), "750");
    assert.equal(modeOf(path.join(plain, "sticky")), "1644");
    if (isRoot) {
      const owned = tmpDir("suid-owned");
      await extract(tar, { dest: owned, owners: true });
      assert.equal(modeOf(path.join(owned, "suid")), "4755");
      assert.equal(modeOf(path.join(owned, "sgid")), "2750");
    }
  });

  it("gives directories their archived mode and mtime only at the end, so read-only ones still get children", async () => {
    const tar = await packTar([
      { header: { name: "locked/", type: "directory", mode: 0o500, mtime: new Date(1e12) } },
      { header: { name: "locked/sub/", type: "directory", mode: 0o555, mtime: new Date(2e12) } },
      { header: { name: "locked/sub/file", mode: 0o444 }, content: "read me" },
    ]);
    const dest = tmpDir("ro-dirs");
    const { result } = await extract(tar, { dest });
    assert.equal(result.files, 1);
    assert.equal(fs.readFileSync(path.join(dest, "locked/sub/file"), "utf8"), "read me");
    const locked = fs.statSync(path.join(dest, "locked"));
    const sub = fs.statSync(path.join(dest, "locked/sub"));
    assert.equal(locked.mode & 0o7777, 0o500);
    assert.equal(sub.mode & 0o7777, 0o555);
    assert.equal(locked.mtimeMs, 1e12);
    assert.equal(sub.mtimeMs, 2e12);
  });

  it("as an unprivileged user: read-only directories still get their children, no setuid, no owners", async () => {
    const tar = await packTar([
      { header: { name: "ro/", type: "directory", mode: 0o555 } },
      { header: { name: "ro/sub/", type: "directory", mode: 0o500 } },
      { header: { name: "ro/sub/tool", mode: 0o4755, uid: 0, gid: 0 }, content: "x" },
    ]);
    const dest = tmpDir("unpriv");
    let result: unknown;
    if (isRoot) {
      // Root bypasses permission checks: run the extraction as nobody to see them.
      fs.chownSync(dest, NOBODY, NOBODY);
      const moduleUrl = new URL("../src/pipeline/extract.js", import.meta.url).href;
      const script = `import { extractTar } from ${JSON.stringify(moduleUrl)};
        const r = await extractTar(process.stdin, { dest: process.env.DEST });
        process.stdout.write(JSON.stringify(r));`;
      const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
        input: tar,
        uid: NOBODY,
        gid: NOBODY,
        env: { ...process.env, DEST: dest },
      });
      result = JSON.parse(out.toString("utf8"));
    } else {
      result = (await extract(tar, { dest })).result;
    }
    assert.deepEqual(result, {
      files: 1,
      dirs: 2,
      symlinks: 0,
      bytes: 1,
      refused: 0,
      skipped: 0,
      unmatched: [],
      warnings: 0,
    });
    const tool = fs.statSync(path.join(dest, "ro/sub/tool"));
    assert.equal(tool.mode & 0o7777, 0o755);
    assert.equal(tool.uid, isRoot ? NOBODY : process.getuid?.());
    assert.equal(fs.statSync(path.join(dest, "ro")).mode & 0o7777, 0o555);
    assert.equal(fs.statSync(path.join(dest, "ro/sub")).mode & 0o7777, 0o500);
  });

  it("applies pax mtime, uid and gid (values the ustar fields cannot hold)", async () => {
    const tar = await packTar([
      {
        header: { name: "old", pax: { mtime: "-86400", uid: "3000000", gid: "3000001" } },
        content: "1969",
      },
      { header: { name: "frac", pax: { mtime: "1600000000.5" } }, content: "half" },
    ]);
    const dest = tmpDir("pax");
    await extract(tar, { dest });
    const old = fs.statSync(path.join(dest, "old"));
    assert.equal(old.mtimeMs, -86_400_000);
    if (isRoot) assert.equal(`${old.uid}:${old.gid}`, "3000000:3000001");
    assert.equal(fs.statSync(path.join(dest, "frac")).mtimeMs, 1_600_000_000_500);
  });

  it("extracts into a destination given as a symlink to a directory", async () => {
    const real = tmpDir("real");
    const base = tmpDir("via");
    fs.symlinkSync(real, path.join(base, "dest"));
    const tar = await packTar([{ header: { name: "f.txt" }, content: "via symlink" }]);
    await extract(tar, { dest: path.join(base, "dest") });
    assert.equal(fs.readFileSync(path.join(real, "f.txt"), "utf8"), "via symlink");
  });

  it("rejects a destination that is relative, missing or not a directory", async () => {
    const base = tmpDir("bad-dest");
    write(path.join(base, "file"), "x");
    const tar = await packTar([]);
    for (const dest of ["relative/dir", path.join(base, "missing"), path.join(base, "file")]) {
      await assert.rejects(extractTar(streamOf(tar), { dest }), UsageError, dest);
    }
  });
});

describe("extractTar on hostile archives", () => {
  it("never writes outside dest, refuses and names each unsafe entry, extracts the harmless ones", async () => {
    const base = tmpDir("hostile");
    const dest = path.join(base, "dest");
    const outside = path.join(base, "outside");
    fs.mkdirSync(dest);
    fs.mkdirSync(outside);
    write(path.join(outside, "victim"), "untouched\n", 0o600);
    write(path.join(dest, "preexisting"), "was here before\n", 0o600);

    const hostile = [
      { header: { name: path.join(outside, "abs-evil").slice(0) }, content: "abs" },
      { header: { name: "../evil" }, content: "dotdot" },
      { header: { name: "a/../../evil2" }, content: "dotdot inside" },
      { header: { name: "../evil-dir/", type: "directory" as const } },
      { header: { name: "escape", type: "symlink" as const, linkname: outside } },
      { header: { name: "escape/evil3" }, content: "through symlink" },
      { header: { name: "escape/victim" }, content: "overwrite through symlink" },
      { header: { name: "here", type: "symlink" as const, linkname: "." } },
      { header: { name: "here/evil4" }, content: "through . symlink" },
      { header: { name: "up", type: "symlink" as const, linkname: ".." } },
      { header: { name: "up/evil5" }, content: "through .. symlink" },
      { header: { name: "up/outside/", type: "directory" as const } },
      { header: { name: "pw", type: "link" as const, linkname: "/etc/passwd" } },
      { header: { name: "pw2", type: "link" as const, linkname: "../outside/victim" } },
      { header: { name: "pw3", type: "link" as const, linkname: "escape/victim" } },
      { header: { name: "to-symlink", type: "link" as const, linkname: "escape" } },
      { header: { name: "to-preexisting", type: "link" as const, linkname: "preexisting" } },
      { header: { name: "nul", pax: { path: "nul\0/evil6" } }, content: "nul" },
      { header: { name: "" }, content: "no name" },
    ];
    const harmless = [
      { header: { name: "ok/", type: "directory" as const, mode: 0o750 } },
      { header: { name: "ok/file.txt" }, content: "fine\n" },
      { header: { name: "./ok//dotted.txt" }, content: "normalised\n" },
      { header: { name: "ok/copy", type: "link" as const, linkname: "ok/file.txt" } },
    ];
    // Harmless entries before and after the hostile ones.
    const tar = await packTar([
      harmless[0],
      harmless[1],
      ...hostile,
      harmless[2],
      harmless[3],
    ] as PackEntry[]);
    const { result, warnings } = await extract(tar, { dest });

    for (const p of ["abs-evil", "evil3", "evil5"])
      assert.equal(exists(path.join(outside, p)), false, p);
    for (const p of ["evil", "evil2", "evil-dir", "evil5"])
      assert.equal(exists(path.join(base, p)), false, p);
    assert.equal(
      exists(path.join(dest, "evil4")),
      false,
      "nothing written through a symlink to dest itself",
    );
    assert.equal(exists(path.join(dest, "nul")), false);
    assert.deepEqual(fs.readdirSync(outside), ["victim"]);
    assert.equal(fs.readFileSync(path.join(outside, "victim"), "utf8"), "untouched\n");
    assert.equal(
      fs.statSync(path.join(outside, "victim")).nlink,
      1,
      "no hard link to an outside file",
    );
    assert.equal(fs.statSync(path.join(dest, "preexisting")).nlink, 1);
    for (const name of ["pw", "pw2", "pw3", "to-symlink", "to-preexisting"]) {
      assert.equal(exists(path.join(dest, name)), false, name);
    }

    const refusedNames = hostile
      .map((e) => e.header.pax?.path ?? e.header.name)
      .filter((n) => !["escape", "here", "up"].includes(n));
    for (const name of refusedNames) {
      const w = about(warnings, name);
      assert.equal(
        w.length,
        1,
        `one warning naming ${JSON.stringify(name)}: ${JSON.stringify(warnings)}`,
      );
      assert.match(w[0]?.message ?? "", /^refused: /);
    }
    assert.equal(result.refused, refusedNames.length);
    assert.equal(result.warnings, refusedNames.length);

    // Symlinks pointing anywhere are restored verbatim; harmless entries are all there.
    assert.equal(fs.readlinkSync(path.join(dest, "escape")), outside);
    assert.equal(fs.readlinkSync(path.join(dest, "here")), ".");
    assert.equal(fs.readFileSync(path.join(dest, "ok/file.txt"), "utf8"), "fine\n");
    assert.equal(fs.readFileSync(path.join(dest, "ok/dotted.txt"), "utf8"), "normalised\n");
    assert.equal(
      fs.statSync(path.join(dest, "ok/copy")).ino,
      fs.statSync(path.join(dest, "ok/file.txt")).ino,
    );
    assert.equal(fs.statSync(path.join(dest, "ok")).mode & 0o7777, 0o750);
    assert.equal(result.files, 3);
    assert.equal(result.symlinks, 3);
  });

  it("does not chmod a file through a hard link entry's attributes", async () => {
    const tar = await packTar([
      { header: { name: "private", mode: 0o600 }, content: "secret" },
      { header: { name: "public", type: "link", linkname: "private", mode: 0o666 } },
    ]);
    const dest = tmpDir("link-mode");
    await extract(tar, { dest });
    assert.equal(fs.statSync(path.join(dest, "private")).mode & 0o7777, 0o600);
  });

  it("refuses a file whose parent in dest is not a directory", async () => {
    const tar = await packTar([
      { header: { name: "plain" }, content: "a file" },
      { header: { name: "plain/child" }, content: "under a file" },
    ]);
    const dest = tmpDir("notdir");
    const { result, warnings } = await extract(tar, { dest });
    assert.equal(result.refused, 1);
    assert.match(
      about(warnings, "plain/child")[0]?.message ?? "",
      /refused: parent "plain" is a regular file/,
    );
  });

  it("does not hang on a directory header that claims data", { timeout: 10_000 }, async () => {
    const tar = await packTar([
      { header: { name: "d/", type: "directory", size: 0 } },
      { header: { name: "d/f" }, content: "after" },
    ]);
    // Patch the directory header's size field to 1 and fix its checksum.
    const h = tar.subarray(0, 512);
    h.write("00000000001\0", 124, "ascii");
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
    const dest = tmpDir("dir-size");
    const { result } = await extract(tar, { dest });
    assert.equal(result.dirs, 1);
  });
});

describe("extractTar include", () => {
  const entries: PackEntry[] = [
    { header: { name: "etc/", type: "directory", mode: 0o700 } },
    { header: { name: "etc/hosts" }, content: "127.0.0.1 localhost\n" },
    { header: { name: "etc/passwd" }, content: "root:x:0:0\n" },
    { header: { name: "srv/", type: "directory", mode: 0o711 } },
    { header: { name: "srv/app/", type: "directory", mode: 0o750 } },
    { header: { name: "srv/app/x/", type: "directory" } },
    { header: { name: "srv/app/x/y.txt" }, content: "deep\n" },
    { header: { name: "srv/app/z.txt" }, content: "z\n" },
    { header: { name: "srv/apple" }, content: "not below srv/app\n" },
    { header: { name: "srv/other.txt" }, content: "other\n" },
  ];

  function tree(dest: string): string[] {
    return [...walk(dest)]
      .filter((e) => e.rel !== "")
      .map((e) => e.rel + (e.st.isDirectory() ? "/" : ""));
  }

  it("writes only the matching file and its parent directories", async () => {
    const dest = tmpDir("inc-file");
    const { result } = await extract(await packTar(entries), { dest, include: ["etc/hosts"] });
    assert.deepEqual(tree(dest), ["etc/", "etc/hosts"]);
    assert.equal(result.files, 1);
    assert.equal(result.dirs, 0);
    // The parent's own entry was not selected: it gets the default mode.
    assert.equal(fs.statSync(path.join(dest, "etc")).mode & 0o7777, 0o755);
  });

  it("takes a directory pattern to mean its whole subtree", async () => {
    const dest = tmpDir("inc-dir");
    await extract(await packTar(entries), { dest, include: ["srv/app"] });
    assert.deepEqual(tree(dest), [
      "srv/",
      "srv/app/",
      "srv/app/x/",
      "srv/app/x/y.txt",
      "srv/app/z.txt",
    ]);
    assert.equal(fs.statSync(path.join(dest, "srv/app")).mode & 0o7777, 0o750);
  });

  it("accepts absolute-style patterns and globs", async () => {
    const dest = tmpDir("inc-abs");
    await extract(await packTar(entries), { dest, include: ["/etc/hosts", "/srv/*.txt"] });
    assert.deepEqual(tree(dest), ["etc/", "etc/hosts", "srv/", "srv/other.txt"]);
  });

  it("compileIncludes: leading and trailing slashes, subtrees, dot files, bad patterns", () => {
    const m = compileIncludes(["/srv/app/", "*.conf"]);
    assert.equal(m("srv/app/"), true);
    assert.equal(m("srv/app/x/.hidden"), true);
    assert.equal(m("./srv/app/x"), true);
    assert.equal(m("srv/apple"), false);
    assert.equal(m("srv"), false);
    assert.equal(m("nginx.conf"), true);
    assert.equal(m(".conf"), true);
    assert.equal(m("etc/nginx.conf"), false);
    assert.equal(compileIncludes([])("anything"), true);
    assert.equal(compileIncludes(["/"])("anything/at/all"), true);
    assert.throws(() => compileIncludes([""]), UsageError);
    assert.throws(() => compileIncludes(["!srv"]), UsageError);
  });

  it("reports each include pattern that selected no entry, as given", async () => {
    const dest = tmpDir("inc-none");
    const { result } = await extract(await packTar(entries), {
      dest,
      include: ["/etc/hosts", "/etc/nope", "/srv/*.gz", "/"],
    });
    assert.deepEqual(result.unmatched, ["/etc/nope", "/srv/*.gz"]);
    const all = await extract(await packTar(entries), {
      dest: tmpDir("inc-all"),
      include: ["/etc", "/srv/"],
    });
    assert.deepEqual(all.result.unmatched, []);
  });

  it("skips a hard link whose target was not selected, saying why", async () => {
    const tar = await packTar([
      { header: { name: "a/first" }, content: "data" },
      { header: { name: "b/second", type: "link", linkname: "a/first" } },
    ]);
    const dest = tmpDir("inc-link");
    const { result, warnings } = await extract(tar, { dest, include: ["b"] });
    assert.equal(result.skipped, 1);
    assert.equal(result.refused, 0);
    assert.match(
      about(warnings, "b/second")[0]?.message ?? "",
      /not selected by the include patterns/,
    );
  });
});

describe("extractTar over existing files", () => {
  async function archiveOf(content: string): Promise<Buffer> {
    return packTar([
      { header: { name: "dir/", type: "directory" } },
      { header: { name: "dir/file.txt", mode: 0o640 }, content },
    ]);
  }

  it("skips an existing file with a warning unless overwrite is set", async () => {
    const dest = tmpDir("exist");
    write(path.join(dest, "dir/file.txt"), "local version\n");
    const first = await extract(await archiveOf("archived\n"), { dest });
    assert.equal(fs.readFileSync(path.join(dest, "dir/file.txt"), "utf8"), "local version\n");
    assert.equal(first.result.skipped, 1);
    assert.equal(first.result.files, 0);
    assert.match(about(first.warnings, "dir/file.txt")[0]?.message ?? "", /already exists/);

    const second = await extract(await archiveOf("archived\n"), { dest, overwrite: true });
    assert.equal(fs.readFileSync(path.join(dest, "dir/file.txt"), "utf8"), "archived\n");
    assert.equal(fs.statSync(path.join(dest, "dir/file.txt")).mode & 0o7777, 0o640);
    assert.equal(second.result.files, 1);
    assert.deepEqual(second.warnings, []);
  });

  it("with overwrite replaces a symlink at a file's path and leaves its target alone", async () => {
    const base = tmpDir("exist-link");
    const dest = path.join(base, "dest");
    const target = path.join(base, "outside.txt");
    write(target, "outside, must stay\n", 0o644);
    fs.mkdirSync(path.join(dest, "dir"), { recursive: true });
    fs.symlinkSync(target, path.join(dest, "dir/file.txt"));

    await extract(await archiveOf("archived\n"), { dest, overwrite: true });
    assert.equal(fs.lstatSync(path.join(dest, "dir/file.txt")).isFile(), true);
    assert.equal(fs.readFileSync(path.join(dest, "dir/file.txt"), "utf8"), "archived\n");
    assert.equal(fs.readFileSync(target, "utf8"), "outside, must stay\n");
    assert.equal(fs.statSync(target).mode & 0o7777, 0o644);
  });

  it("counts a symlink where a directory already is, and a name too long for DIR, as skipped", async () => {
    const dest = tmpDir("exist-dir-link");
    const tar = await packTar([
      { header: { name: "dir/", type: "directory" } },
      { header: { name: "dir", type: "symlink", linkname: "/etc" } },
      { header: { name: `long/${"n".repeat(300)}` }, content: "too long" },
      { header: { name: "ok.txt" }, content: "fine" },
    ]);
    const { result, warnings } = await extract(tar, { dest });
    assert.equal(result.skipped, 2, JSON.stringify(warnings));
    assert.equal(result.files, 1);
    assert.equal(fs.lstatSync(path.join(dest, "dir")).isDirectory(), true);
    assert.match(about(warnings, "dir")[0]?.message ?? "", /a directory exists at this path/);
    assert.match(warnings.at(-1)?.message ?? "", /name too long/i);
  });

  it("does not count the archive root entry (tar -C dir .) as skipped", async () => {
    const tar = await packTar([
      { header: { name: "./", type: "directory" } },
      { header: { name: "./a.txt" }, content: "a" },
    ]);
    const { result } = await extract(tar, { dest: tmpDir("root-entry") });
    assert.equal(result.skipped, 0);
    assert.equal(result.files, 1);
  });

  it("never replaces an existing directory with a file", async () => {
    const dest = tmpDir("exist-dir");
    write(path.join(dest, "dir/file.txt/keep"), "a directory is in the way\n");
    const { result } = await extract(await archiveOf("archived\n"), { dest, overwrite: true });
    assert.equal(result.skipped, 1);
    assert.equal(
      fs.readFileSync(path.join(dest, "dir/file.txt/keep"), "utf8"),
      "a directory is in the way\n",
    );
  });

  it("lets a later entry of the same name win, as tar does, without overwrite", async () => {
    const tar = await packTar([
      { header: { name: "twice" }, content: "first" },
      { header: { name: "twice" }, content: "second" },
    ]);
    const dest = tmpDir("twice");
    const { result } = await extract(tar, { dest });
    assert.equal(fs.readFileSync(path.join(dest, "twice"), "utf8"), "second");
    assert.equal(result.files, 2);
    assert.equal(result.skipped, 0);
  });
});

describe("extractTar on damaged streams", () => {
  async function sample(): Promise<{ tar: Buffer; cutInData: number }> {
    const tar = await packTar([
      { header: { name: "dir/", type: "directory" } },
      { header: { name: "dir/first.txt" }, content: "complete\n" },
      { header: { name: "dir/second.bin" }, content: randomBytes(300_000) },
    ]);
    // dir/ header, first.txt header + 1 data block, second.bin header: data starts at 2048.
    return { tar, cutInData: 2048 + 150_000 };
  }

  it("rejects a stream cut in the middle of a file, keeps what was complete, removes the partial file", async () => {
    const { tar, cutInData } = await sample();
    const dest = tmpDir("trunc");
    await assert.rejects(
      extractTar(streamOf(tar.subarray(0, cutInData)), { dest }),
      (err: Error) => err instanceof ImmutdError && /unexpected end of archive/.test(err.message),
    );
    assert.equal(fs.readFileSync(path.join(dest, "dir/first.txt"), "utf8"), "complete\n");
    assert.equal(exists(path.join(dest, "dir/second.bin")), false);
    // Directory attributes are applied even though the extraction failed.
    assert.equal(fs.statSync(path.join(dest, "dir")).mode & 0o7777, 0o755);
  });

  it("rejects a stream cut at an entry boundary (no end-of-archive blocks)", async () => {
    const { tar } = await sample();
    const dest = tmpDir("trunc-boundary");
    await assert.rejects(
      extractTar(streamOf(tar.subarray(0, tar.length - 1024)), { dest }),
      /unexpected end of archive.*end-of-archive blocks/,
    );
    await assert.rejects(
      extractTar(streamOf(tar.subarray(0, tar.length - 512)), { dest: tmpDir("half") }),
    );
    await assert.rejects(
      extractTar(streamOf(Buffer.alloc(0)), { dest: tmpDir("empty") }),
      /unexpected end/,
    );
    // The complete stream is fine.
    const ok = await extract(tar, { dest: tmpDir("whole") });
    assert.equal(ok.result.files, 2);
  });

  it("rejects a corrupt header", async () => {
    const { tar } = await sample();
    const bad = Buffer.from(tar);
    bad[512 + 10] = (bad[512 + 10] ?? 0) ^ 0xff; // first.txt's header: checksum no longer matches
    await assert.rejects(extractTar(streamOf(bad), { dest: tmpDir("corrupt") }), /corrupt archive/);
  });

  it("makes the pipeline that feeds it fail with the same error", async () => {
    const { tar } = await sample();
    const bad = Buffer.from(tar);
    bad[512 + 10] = (bad[512 + 10] ?? 0) ^ 0xff;
    const through = new PassThrough();
    const piping = pipeline(streamOf(bad, 4096), through);
    const [extracted, piped] = await Promise.allSettled([
      extractTar(through, { dest: tmpDir("pipe") }),
      piping,
    ]);
    assert.equal(extracted.status, "rejected");
    assert.equal(piped.status, "rejected");
    assert.match(String(extracted.reason), /corrupt archive/);
    assert.equal(piped.reason, extracted.reason);
  });

  it("rejects with the input stream's own error", async () => {
    const { tar } = await sample();
    const boom = new Error("sha256 mismatch");
    const input = new Readable({
      read() {
        this.push(tar.subarray(0, 4096));
        this.destroy(boom);
      },
    });
    await assert.rejects(extractTar(input, { dest: tmpDir("input-err") }), (err) => err === boom);
  });

  it("stops on abort: rejects with the reason, destroys the input, removes the partial file", async () => {
    const { tar } = await sample();
    const dest = tmpDir("abort");
    const ac = new AbortController();
    const fdsBefore = openFds();
    // Sends everything up to the middle of second.bin, then stalls forever.
    let sent = false;
    const input = new Readable({
      read() {
        if (sent) return;
        sent = true;
        this.push(tar.subarray(0, 100_000));
      },
    });
    const reason = new Error("shutdown");
    const second = path.join(dest, "dir/second.bin");
    const abortOnceOpen = () => {
      if (exists(second)) ac.abort(reason);
      else setTimeout(abortOnceOpen, 5);
    };
    const done = extractTar(input, {
      dest,
      signal: ac.signal,
      onProgress: (p) => {
        if (p.files === 1 && !ac.signal.aborted) abortOnceOpen();
      },
    });
    await assert.rejects(done, (err) => err === reason);
    assert.equal(input.destroyed, true);
    assert.equal(exists(second), false);
    assert.equal(exists(path.join(dest, "dir/first.txt")), true);
    assert.equal(openFds(), fdsBefore, "every file descriptor closed");

    const pre = new AbortController();
    pre.abort(reason);
    await assert.rejects(
      extractTar(streamOf(tar), { dest, signal: pre.signal }),
      (err) => err === reason,
    );
  });
});

/** A raw pax path (and linkpath) record set: bytes given as byte strings. */
function rawPath(name: string, linkname?: string): Buffer {
  const records = [paxRecord("path", bytesOf(name))];
  if (linkname !== undefined) records.push(paxRecord("linkpath", bytesOf(linkname)));
  return Buffer.concat(records);
}

describe("extractTar on a full disk", () => {
  const isRoot = process.getuid?.() === 0;
  it("stops at the file that does not fit, naming it; keeps what fit, removes the partial file, closes every fd", {
    skip: !isRoot && "needs root to mount a small tmpfs",
  }, async () => {
    const mnt = tmpDir("full");
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", mnt]);
    try {
      const tar = await packTar([
        { header: { name: "small.txt" }, content: "fits\n" },
        { header: { name: "big.bin" }, content: randomBytes(3 * 1024 * 1024) },
        { header: { name: "after.txt" }, content: "never reached\n" },
      ]);
      const fds = openFds();
      await assert.rejects(
        extractTar(streamOf(tar, 65_536), { dest: mnt }),
        (err: Error) =>
          err instanceof ImmutdError && /cannot restore "big\.bin": .*ENOSPC/.test(err.message),
      );
      assert.equal(fs.readFileSync(path.join(mnt, "small.txt"), "utf8"), "fits\n");
      assert.equal(exists(path.join(mnt, "big.bin")), false, "the partial file is removed");
      assert.equal(exists(path.join(mnt, "after.txt")), false, "a full disk ends the restore");
      assert.equal(openFds(), fds, "no fd left open");
    } finally {
      execFileSync("umount", [mnt]);
    }
  });
});

describe("extractTar: names that are not UTF-8", () => {
  /** The byte-names fixture, without its top directory's own entry (the destination keeps its attributes). */
  function fixture(): { src: string; want: Map<string, string> } {
    const src = tmpDir("bytes-src");
    makeByteNamesTree(src);
    const want = byteTree(src);
    want.delete("");
    return { src, want };
  }
  const restored = (dest: string) => {
    const got = byteTree(dest);
    got.delete("");
    return got;
  };

  for (const format of ["gnu", "posix"]) {
    it(`restores a GNU tar --format=${format} archive byte-exact`, async () => {
      const { src, want } = fixture();
      const tar = execFileSync("tar", [`--format=${format}`, "-cf", "-", "-C", src, "."]);
      const dest = tmpDir(`bytes-${format}`);
      const { result, warnings } = await extract(tar, { dest });
      assert.equal(result.refused + result.skipped, 0, JSON.stringify(warnings));
      const got = restored(dest);
      if (format === "gnu") {
        // Not about names: GNU format stores a time before 1970 in base-256,
        // which tar-stream 3 decodes one second off (one's complement).
        for (const m of [got, want])
          m.set(
            BYTE_NAMES.pre1970,
            m.get(BYTE_NAMES.pre1970)?.replace(/ -86(400|399) /, " T ") ?? "",
          );
      }
      assert.deepEqual(got, want);
    });
  }

  it("restores immutd's own archive byte-exact, and lists names as GNU tar -t prints them", async () => {
    const { src, want } = fixture();
    const a = createArchive({ paths: [src] });
    const chunks: Buffer[] = [];
    for await (const c of a.stream) chunks.push(c as Buffer);
    const tar = Buffer.concat(chunks);
    const dest = tmpDir("bytes-own");
    const { result, warnings } = await extract(tar, { dest });
    assert.equal(result.refused + result.skipped, 0, JSON.stringify(warnings));
    assert.deepEqual(restored(path.join(dest, src.slice(1))), want);

    const names: string[] = [];
    await listTar(streamOf(tar), (e) => names.push(e.name));
    const gnu = execFileSync("tar", ["--quoting-style=escape", "-tf", "-"], {
      input: tar,
      env: { ...process.env, LC_ALL: "C.UTF-8" },
      stdio: ["pipe", "pipe", "ignore"],
    });
    assert.deepEqual(names, gnu.toString("utf8").split("\n").slice(0, -1));
  });

  it("rejects a stream cut in a raw-byte pax header or in the file after it, leaving no partial file", async () => {
    const src = tmpDir("bytes-cut-src");
    fs.writeFileSync(Buffer.from(`${src}/caf\xe9`, "latin1"), "some data\n");
    const a = createArchive({ paths: [src] });
    const chunks: Buffer[] = [];
    for await (const c of a.stream) chunks.push(c as Buffer);
    const tar = Buffer.concat(chunks);
    const record = tar.indexOf(Buffer.from(`path=${src.slice(1)}/caf\xe9`, "latin1"));
    assert.ok(record > 0, "the raw name is in a pax record");
    // Records start a block; the entry's ustar header is the next block, its data the one after.
    const content = record - (record % 512) + 1024;
    assert.equal(tar.subarray(content, content + 4).toString(), "some");
    for (const cut of [record + 5, content + 4]) {
      const dest = tmpDir("bytes-cut");
      // (A cut inside a small file's only block reads as "corrupt archive ... Stream
      // was destroyed" with any name: tar-stream's quirk, not this test's subject.)
      await assert.rejects(
        extractTar(streamOf(tar.subarray(0, cut)), { dest }),
        /unexpected end of archive|corrupt archive/,
      );
      const names = fs.readdirSync(path.join(dest, src.slice(1)), { encoding: "buffer" });
      assert.deepEqual(names, [], `cut at ${cut}: the half-written file is removed by its bytes`);
    }
  });

  it("selects such names with include patterns in their Latin-1 form", async () => {
    const { src } = fixture();
    const tar = execFileSync("tar", ["-cf", "-", "-C", src, "."]);
    const dest = tmpDir("bytes-include");
    const { result } = await extract(tar, { dest, include: ["ÿ", "/dérÿ/x*", "new?line"] });
    assert.deepEqual(result.unmatched, []);
    assert.deepEqual(
      [...restored(dest).keys()],
      ["d\xe9r\xff/", `d\xe9r\xff/${"x".repeat(120)}\xfe`, "new\nline", "\xff"],
    );
  });

  it("cannot be made to escape dest by raw bytes: NUL is refused, no encoding of '..' is one", async () => {
    const base = tmpDir("bytes-hostile");
    const dest = path.join(base, "dest");
    fs.mkdirSync(dest);
    const ustar = (name: string, type: Header["type"] = "file") => ({ name, type });
    const tar = await packTar([
      // A NUL byte cuts a C string: "a" + NUL + "/../../nul-escape" must not become "a".
      { header: ustar("stand-in-1"), rawPax: rawPath("a\0/../../nul-escape"), content: "x" },
      { header: ustar("stand-in-2"), rawPax: rawPath("\xff/../../dotdot-escape"), content: "x" },
      // Overlong UTF-8 for "." (0xc0 0xae) and fullwidth ．(U+FF0E) are only bytes to Linux.
      { header: ustar("stand-in-3"), rawPax: rawPath("\xc0\xae\xc0\xae/overlong"), content: "x" },
      {
        header: ustar("stand-in-4"),
        rawPax: rawPath(Buffer.from("．．/fullwidth", "utf8").toString("latin1")),
        content: "x",
      },
      { header: ustar("stand-in-5", "link"), rawPax: rawPath("hl", "../\xff") },
      { header: ustar("stand-in-6", "symlink"), rawPax: rawPath("sl", "nul\0target") },
      { header: ustar("stand-in-7", "directory"), rawPax: rawPath("dir\0/") },
    ]);
    const { result, warnings } = await extract(tar, { dest });
    assert.equal(result.refused, 5, JSON.stringify(warnings));
    assert.deepEqual(
      warnings.map((w) => w.path),
      ["a\\000/../../nul-escape", "\\377/../../dotdot-escape", "hl", "sl", "dir\\000/"],
    );
    assert.deepEqual(fs.readdirSync(base), ["dest"]);
    assert.deepEqual(
      fs
        .readdirSync(dest, { encoding: "buffer" })
        .map((n) => n.toString("latin1"))
        .sort(),
      ["\xc0\xae\xc0\xae", Buffer.from("．．", "utf8").toString("latin1")].sort(),
    );
    assert.ok(!exists(path.join(base, "nul-escape")) && !exists(path.join(base, "dotdot-escape")));
  });
});

describe("listTar", () => {
  it("lists names, types, sizes, modes, mtimes, link targets, and respects include", async () => {
    const tar = await packTar([
      { header: { name: "srv/", type: "directory", mode: 0o755 } },
      { header: { name: "srv/a.txt", mode: 0o640, uid: 7, gid: 8 }, content: "12345" },
      { header: { name: "srv/l", type: "symlink", linkname: "a.txt" } },
      { header: { name: "srv/h", type: "link", linkname: "srv/a.txt" } },
      { header: { name: "etc/hosts" }, content: "x" },
    ]);
    const all: TarEntryInfo[] = [];
    const n = await listTar(streamOf(tar), (e) => all.push(e));
    assert.deepEqual(n, { listed: 5, unmatched: [] });
    assert.deepEqual(
      all.map((e) => [e.name, e.type, e.size, e.linkname ?? null]),
      [
        ["srv/", "directory", 0, null],
        ["srv/a.txt", "file", 5, null],
        ["srv/l", "symlink", 0, "a.txt"],
        ["srv/h", "link", 0, "srv/a.txt"],
        ["etc/hosts", "file", 1, null],
      ],
    );
    assert.equal(all[1]?.mode, 0o640);
    assert.equal(all[1]?.uid, 7);
    assert.equal(all[1]?.gid, 8);
    assert.equal(all[1]?.mtime.getTime(), BASE_MTIME * 1000);

    const some: string[] = [];
    assert.deepEqual(await listTar(streamOf(tar), (e) => some.push(e.name), ["/srv"]), {
      listed: 4,
      unmatched: [],
    });
    assert.deepEqual(some, ["srv/", "srv/a.txt", "srv/l", "srv/h"]);
    const none = await listTar(streamOf(tar), () => {}, ["/srv/a.txt", "/nope", "*.gz"]);
    assert.deepEqual(none, { listed: 1, unmatched: ["/nope", "*.gz"] });

    await assert.rejects(
      listTar(streamOf(tar.subarray(0, 1500)), () => {}),
      /unexpected end of archive/,
    );
  });
});

describe("extractTar special files", () => {
  const specials: PackEntry[] = [
    {
      header: { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3, mode: 0o666 },
    },
    { header: { name: "dev/sda", type: "block-device", devmajor: 8, devminor: 0, mode: 0o660 } },
    { header: { name: "run/pipe", type: "fifo", mode: 0o620 } },
    { header: { name: "after.txt" }, content: "still extracted" },
  ];

  it("skips device and FIFO entries with a warning by default", async () => {
    const dest = tmpDir("dev");
    const { result, warnings } = await extract(await packTar(specials), { dest });
    assert.equal(result.skipped, 3);
    assert.equal(result.files, 1);
    for (const name of ["dev/null", "dev/sda", "run/pipe"]) {
      assert.equal(exists(path.join(dest, name)), false, name);
      assert.match(about(warnings, name)[0]?.message ?? "", /skipped/, name);
    }
    assert.equal(fs.readFileSync(path.join(dest, "after.txt"), "utf8"), "still extracted");
  });

  it("creates a FIFO with its mode when devices is set, as root", {
    skip: !isRoot && "needs root",
  }, async () => {
    const dest = tmpDir("fifo");
    await extract(await packTar([specials[2] as PackEntry]), { dest, devices: true });
    const st = fs.lstatSync(path.join(dest, "run/pipe"));
    assert.equal(st.isFIFO(), true);
    assert.equal(st.mode & 0o7777, 0o620);
    assert.equal(st.mtimeMs, BASE_MTIME * 1000);
  });
});
