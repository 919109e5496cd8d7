import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { finished, pipeline } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { extract } from "tar-stream";
import {
  type ArchiveOptions,
  type ArchiveWarning,
  createArchive,
  missingPaths,
} from "../src/pipeline/archive.js";
import { headerFor, TarWriter } from "../src/pipeline/tar.js";
import { bytesOf, byteTree, makeByteNamesTree } from "./support/byte-names.js";

const MiB = 1024 * 1024;
const BASE_MTIME = 1_600_000_000; // 2020-09-13
const isRoot = process.getuid?.() === 0;
const archiveModule = fileURLToPath(new URL("../src/pipeline/archive.js", import.meta.url));

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

/** A fresh directory under os.tmpdir(), removed when the test file ends. */
function tmpDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `immutd-${label}-`));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function write(p: string, content: string | Buffer, mode?: number): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  if (mode !== undefined) fs.chmodSync(p, mode);
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Runs an archive to completion and returns its bytes, warnings and result. */
async function archive(opts: ArchiveOptions) {
  const warnings: ArchiveWarning[] = [];
  const a = createArchive({ ...opts, onWarning: (w) => warnings.push(w) });
  const tar = await collect(a.stream);
  const result = await a.done;
  return { tar, warnings, result };
}

interface TarListing {
  code: number | null;
  stderr: string;
  /** One line per entry: type letter, mode string, size, name (links stripped). */
  entries: { perms: string; owner: string; size: number; name: string }[];
}

/** `tar -tvf -` of the given bytes or stream, as GNU tar sees it. */
async function gnuTarList(input: Buffer | Readable): Promise<TarListing> {
  const child = spawn("tar", ["--quoting-style=literal", "--numeric-owner", "-tvf", "-"], {
    env: { ...process.env, LC_ALL: "C.UTF-8" },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on("data", (c: Buffer) => out.push(c));
  child.stderr.on("data", (c: Buffer) => err.push(c));
  const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
  if (Buffer.isBuffer(input)) {
    child.stdin.on("error", () => {}); // tar exiting early shows in its exit code
    child.stdin.end(input);
  } else {
    await pipeline(input, child.stdin);
  }
  const code = await closed;
  const entries = Buffer.concat(out)
    .toString("utf8")
    .split("\n")
    .filter((l) => l !== "")
    .map((line) => {
      const m = /^(\S+) (\S+) +(\d+) \d{4}-\d\d-\d\d \d\d:\d\d (.*)$/.exec(line);
      assert.ok(m, `unexpected tar -tv line: ${line}`);
      const [, perms = "", owner = "", size = "", rest = ""] = m;
      let name = rest;
      if (perms.startsWith("l")) name = rest.slice(0, rest.lastIndexOf(" -> "));
      if (perms.startsWith("h")) name = rest.slice(0, rest.lastIndexOf(" link to "));
      return { perms, owner, size: Number(size), name };
    });
  return { code, stderr: Buffer.concat(err).toString("utf8"), entries };
}

interface EntryFacts {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  linkname: string | null;
  sha256: string | null;
}

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Parses a tar with tar-stream, applying pax records as a POSIX reader does. */
async function parseTar(tar: Buffer): Promise<EntryFacts[]> {
  const ex = extract();
  ex.end(tar);
  const facts: EntryFacts[] = [];
  for await (const entry of ex) {
    const h = entry.header;
    const pax = (h.pax ?? {}) as Record<string, string>;
    const hash = createHash("sha256");
    for await (const chunk of entry) hash.update(chunk as Buffer);
    facts.push({
      name: h.name,
      type: h.type,
      mode: h.mode & 0o7777,
      uid: Number(pax.uid ?? h.uid),
      gid: Number(pax.gid ?? h.gid),
      mtime: pax.mtime !== undefined ? Math.floor(Number(pax.mtime)) : h.mtime.getTime() / 1000,
      size: h.size,
      linkname: h.linkname || null,
      sha256: h.type === "file" ? hash.digest("hex") : null,
    });
  }
  return facts;
}

/**
 * What the archive of `top` must contain, read from the filesystem by a walk
 * independent of the module: archive order (names sorted by bytes), hard links
 * after their first name.
 */
function expectedFacts(top: string): EntryFacts[] {
  const facts: EntryFacts[] = [];
  const firstName = new Map<string, string>();
  const visit = (abs: string) => {
    const st = fs.lstatSync(abs);
    const base = {
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
    };
    const name = abs.slice(1);
    if (st.isDirectory()) {
      facts.push({
        ...base,
        name: `${name}/`,
        type: "directory",
        size: 0,
        linkname: null,
        sha256: null,
      });
      const children = fs.readdirSync(abs, { encoding: "buffer" }).sort(Buffer.compare);
      for (const child of children) visit(path.join(abs, child.toString("utf8")));
    } else if (st.isSymbolicLink()) {
      const target = fs.readlinkSync(abs);
      facts.push({ ...base, name, type: "symlink", size: 0, linkname: target, sha256: null });
    } else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = firstName.get(key);
      if (first !== undefined) {
        facts.push({ ...base, name, type: "link", size: 0, linkname: first, sha256: null });
      } else {
        if (st.nlink > 1) firstName.set(key, name);
        const data = fs.readFileSync(abs);
        facts.push({
          ...base,
          name,
          type: "file",
          size: st.size,
          linkname: null,
          sha256: sha256(data),
        });
      }
    }
  };
  visit(top);
  return facts;
}

/** Sets mtimes bottom-up (children first: creating entries bumps their directory's mtime). */
function stampMtimes(dir: string, next: { t: number }): void {
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.lstatSync(p);
    if (st.isDirectory()) stampMtimes(p, next);
    else if (st.isSymbolicLink()) fs.lutimesSync(p, next.t, next.t++);
    else fs.utimesSync(p, next.t, next.t++);
  }
  fs.utimesSync(dir, next.t, next.t++);
}

/**
 * ArrayBuffer bytes still referenced: a full GC first (V8's gc, exposed at run
 * time). V8 frees the memory of dead ArrayBuffers on a background thread after
 * the collection, so the count is read after a pause and a second collection
 * (read at once, it still held the garbage in about one run of five on Node 26).
 */
async function liveArrayBuffers(): Promise<number> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  return process.memoryUsage().arrayBuffers;
}

function openFds(): number {
  return fs.readdirSync("/proc/self/fd").length;
}

describe("createArchive: a tree with every kind of entry", () => {
  let top = "";
  let longPath = "";
  let result: Awaited<ReturnType<typeof archive>>;

  before(async () => {
    top = path.join(tmpDir("tree"), "tree");
    write(path.join(top, "a/b/c/deep.txt"), "deep\n");
    fs.mkdirSync(path.join(top, "empty"));
    write(path.join(top, "random.bin"), randomBytes(3 * 1000 * 1000));
    write(path.join(top, "setuid-tool"), "#!/bin/sh\n", 0o4755);
    write(path.join(top, "private.key"), "secret\n", 0o600);
    fs.mkdirSync(path.join(top, "shared-tmp"));
    fs.chmodSync(path.join(top, "shared-tmp"), 0o1777);
    fs.symlinkSync("a/b/c/deep.txt", path.join(top, "link-relative"));
    fs.symlinkSync("does/not/exist", path.join(top, "link-dangling"));
    write(path.join(top, "hard-1"), "same inode\n");
    fs.linkSync(path.join(top, "hard-1"), path.join(top, "hard-2"));
    write(path.join(top, "Grüße-日本.txt"), "unicode\n");
    write(path.join(top, `${"n".repeat(150)}.txt`), "long name\n");
    longPath = path.join(top, "long", "x".repeat(90), "y".repeat(90), `${"z".repeat(90)}.txt`);
    write(longPath, "long path\n");
    fs.linkSync(longPath, `${longPath}.hardlink`); // a link entry whose target name is > 255 bytes
    fs.symlinkSync(path.relative(top, longPath), path.join(top, "link-long-target"));
    fs.symlinkSync("Grüße-日本.txt", path.join(top, "link-unicode-target"));
    write(path.join(top, "future.txt"), "2100\n");
    if (isRoot) {
      // ids above the ustar limit, as in user-namespaced containers
      write(path.join(top, "high-ids"), "ns\n");
      fs.chownSync(path.join(top, "high-ids"), 300_000, 300_001);
      write(path.join(top, "mode-000"), "only root reads this\n", 0o000);
    }
    stampMtimes(top, { t: BASE_MTIME });
    const year2100 = 4_102_444_800;
    fs.utimesSync(path.join(top, "future.txt"), year2100, year2100);
    result = await archive({ paths: [top] });
  });

  it("completes without warnings and counts what it archived", () => {
    assert.deepEqual(result.warnings, []);
    const { files, dirs, symlinks, bytes, warnings } = result.result;
    assert.deepEqual(
      { files, dirs, symlinks, warnings },
      { files: isRoot ? 13 : 11, dirs: 9, symlinks: 4, warnings: 0 },
    );
    assert.ok(bytes > 3_000_000);
  });

  it("is listed by GNU tar with the right names, sizes and modes", async () => {
    assert.ok(Buffer.byteLength(longPath) > 255);
    const listing = await gnuTarList(result.tar);
    assert.equal(listing.code, 0, listing.stderr);
    assert.equal(listing.stderr, "");
    const names = listing.entries.map((e) => e.name);
    assert.deepEqual(
      names,
      expectedFacts(top).map((f) => f.name),
    );
    const rel = (name: string) =>
      listing.entries.find((e) => e.name === path.join(top, name).slice(1));
    assert.equal(rel("Grüße-日本.txt")?.perms, "-rw-r--r--");
    assert.equal(rel("random.bin")?.size, 3_000_000);
    assert.equal(rel("setuid-tool")?.perms, "-rwsr-xr-x");
    assert.equal(rel("private.key")?.perms, "-rw-------");
    assert.equal(rel("shared-tmp")?.perms, undefined); // directories carry a trailing "/"
    assert.equal(rel("shared-tmp/")?.perms, "drwxrwxrwt");
    assert.equal(rel("hard-2")?.perms.at(0), "h");
    assert.equal(listing.entries.find((e) => e.name === longPath.slice(1))?.size, 10);
    if (isRoot) {
      assert.equal(rel("high-ids")?.owner, "300000/300001");
      assert.equal(rel("mode-000")?.perms, "----------");
    }
  });

  it("round-trips type, name, mode, mtime, owner, link target and content of every entry", async () => {
    const got = await parseTar(result.tar);
    const want = expectedFacts(top);
    assert.deepEqual(got, want);
    // the parents of the configured path are not archived, the path itself is
    assert.equal(got[0]?.name, `${top.slice(1)}/`);
    const hard2 = got.find((f) => f.name.endsWith("/hard-2"));
    assert.equal(hard2?.type, "link");
    assert.equal(hard2?.linkname, path.join(top, "hard-1").slice(1));
    const future = got.find((f) => f.name.endsWith("/future.txt"));
    assert.equal(future?.mtime, 4_102_444_800);
  });

  it("is byte-for-byte the same when the tree has not changed", async () => {
    const again = await archive({ paths: [top] });
    assert.ok(again.tar.equals(result.tar));
  });

  it("archives overlapping configured paths once", async () => {
    const overlap = await archive({
      paths: [path.join(top, "a"), top, `${top}/`, path.join(top, "a/b")],
    });
    const names = (await parseTar(overlap.tar)).map((f) => f.name);
    assert.equal(names.length, new Set(names).size);
    assert.deepEqual(
      [...names].sort(),
      expectedFacts(top)
        .map((f) => f.name)
        .sort(),
    );
  });
});

/** `tar ARGS` with `input` on stdin, in a UTF-8 locale; fails the test on a warning. */
function gnuTar(args: string[], input: Buffer): Buffer {
  const r = spawnSync("tar", args, { input, env: { ...process.env, LC_ALL: "C.UTF-8" } });
  assert.equal(r.status, 0, r.stderr.toString());
  // GNU tar says so of every time before 1970, such as the fixture's pax mtime.
  const stderr = r.stderr
    .toString()
    .split("\n")
    .filter((l) => l !== "" && !/implausibly old time stamp/.test(l));
  assert.deepEqual(stderr, [], "GNU tar printed no other warning");
  return r.stdout;
}

describe("createArchive: names that are not UTF-8", () => {
  it("archives them byte-exact: GNU tar lists and extracts every name and link target as bytes", async () => {
    const top = path.join(tmpDir("bytes"), "src");
    fs.mkdirSync(top);
    makeByteNamesTree(top);
    const { tar, warnings, result } = await archive({ paths: [top] });
    assert.deepEqual(warnings, []);
    assert.deepEqual([result.files, result.dirs, result.symlinks, result.warnings], [7, 2, 2, 0]);

    // Names compared as bytes, in archive order (a newline in a name is just a byte here).
    const listed = gnuTar(["--quoting-style=literal", "-tf", "-"], tar);
    const want = [...byteTree(top).keys()].map((rel) => bytesOf(`${top.slice(1)}/${rel}\n`));
    assert.equal(listed.toString("hex"), Buffer.concat(want).toString("hex"));

    const out = tmpDir("bytes-gnu-x");
    gnuTar(["-xf", "-", "-C", out], tar);
    assert.deepEqual(byteTree(path.join(out, top.slice(1))), byteTree(top));
  });

  it("writes valid UTF-8 names exactly as before: text in a pax path, no raw record", async () => {
    const top = path.join(tmpDir("bytes-utf8"), "src");
    fs.mkdirSync(top);
    makeByteNamesTree(top);
    const { tar } = await archive({ paths: [top] });
    const utf8 = Buffer.from(`path=${top.slice(1)}/Grüße\n`, "utf8");
    assert.ok(tar.includes(utf8), "the UTF-8 name is in a pax path record, as UTF-8");
    const entries = await parseTar(tar);
    const gruss = entries.find((e) => e.name.endsWith("Gr\u00fc\u00dfe"));
    assert.equal(gruss?.name, `${top.slice(1)}/Grüße`, "tar-stream reads it back as the same text");
    assert.ok(!tar.includes(Buffer.from("Gr__e")), "no ASCII stand-in for a UTF-8 name");
  });

  it("excludes see a component that is not UTF-8 as Latin-1 characters", async () => {
    const top = path.join(tmpDir("bytes-exclude"), "src");
    fs.mkdirSync(top);
    makeByteNamesTree(top);
    const { tar, warnings } = await archive({
      paths: [top],
      exclude: ["caf?", `${top}/dérÿ`, "*ÿ", "Grüße"],
    });
    assert.deepEqual(warnings, []);
    const listed = gnuTar(["--quoting-style=escape", "-tf", "-"], tar).toString("utf8");
    const names = listed
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => l.slice(top.length - 1));
    // hard\351 is now the first name of the inode: a file, no longer a link entry.
    assert.deepEqual(names, ["/", "/hard\\351", "/new\\nline", "/old\\351", "/utf8-link"]);
  });
});

describe("createArchive: excludes", () => {
  it("drops basename and absolute matches and never descends into an excluded directory", async () => {
    const top = path.join(tmpDir("exclude"), "src");
    write(path.join(top, "app/main.js"), "main\n");
    write(path.join(top, "app/.main.js.swp"), "swap\n");
    write(path.join(top, "app/node_modules/dep/index.js"), "dep\n");
    write(path.join(top, "app/data/cache/blob"), "cached\n");
    write(path.join(top, "app/data/cache/sub/blob"), "cached\n");
    write(path.join(top, "app/data/keep.db"), "keep\n");
    write(path.join(top, "logs/old.gz"), "gz\n");
    write(path.join(top, "logs/nested/old.gz"), "gz\n");
    // A FIFO inside the excluded directory: descending would raise a warning.
    execFileSync("mkfifo", [path.join(top, "app/node_modules/fifo")]);

    const { tar, warnings } = await archive({
      paths: [top],
      exclude: ["*.swp", "node_modules", `${top}/app/data/cache/**`, `${top}/logs/*.gz`],
    });
    assert.deepEqual(warnings, []);
    const names = (await parseTar(tar)).map((f) => f.name.slice(top.length - 1));
    assert.deepEqual(names, [
      "/",
      "/app/",
      "/app/data/",
      "/app/data/cache/", // kept, empty: "DIR/**" excludes only what is below DIR
      "/app/data/keep.db",
      "/app/main.js",
      "/logs/",
      "/logs/nested/",
      "/logs/nested/old.gz",
    ]);
  });

  it("never excludes a configured path itself", async () => {
    const top = path.join(tmpDir("exclude-top"), "cache");
    write(path.join(top, "x"), "x\n");
    const { tar } = await archive({ paths: [top], exclude: ["cache"] });
    const names = (await parseTar(tar)).map((f) => f.name.slice(top.length - 1));
    assert.deepEqual(names, ["/", "/x"]);
  });

  it("rejects an invalid pattern before any stream exists", () => {
    assert.throws(() => createArchive({ paths: ["/tmp"], exclude: ["var/log"] }), /"var\/log"/);
  });
});

describe("createArchive: what the filesystem throws at it", () => {
  it("skips a FIFO and a unix socket with warnings and still completes", async () => {
    const top = path.join(tmpDir("special"), "t");
    write(path.join(top, "regular"), "r\n");
    execFileSync("mkfifo", [path.join(top, "fifo")]);
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(path.join(top, "sock"), resolve));
    try {
      const { tar, warnings, result } = await archive({ paths: [top] });
      assert.deepEqual(
        warnings.map((w) => [path.basename(w.path), w.message]),
        [
          ["fifo", "FIFO skipped: only files, directories and symlinks are archived"],
          ["sock", "socket skipped: only files, directories and symlinks are archived"],
        ],
      );
      assert.equal(result.warnings, 2);
      const listing = await gnuTarList(tar);
      assert.equal(listing.code, 0);
      assert.deepEqual(
        listing.entries.map((e) => path.basename(e.name)),
        ["t", "regular"],
      );
    } finally {
      server.close();
    }
  });

  it("warns about a configured path that does not exist and archives the others", async () => {
    const dir = tmpDir("missing");
    write(path.join(dir, "here"), "h\n");
    const gone = path.join(dir, "gone");
    const { tar, warnings } = await archive({ paths: [gone, path.join(dir, "here")] });
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.path, gone);
    assert.equal(warnings[0]?.code, "ENOENT");
    assert.match(warnings[0]?.message ?? "", /configured path no longer exists/);
    assert.deepEqual(
      (await parseTar(tar)).map((f) => path.basename(f.name)),
      ["here"],
    );
  });

  it("missingPaths lists the configured paths that do not exist", async () => {
    const dir = tmpDir("missing-paths");
    write(path.join(dir, "file"), "f\n");
    fs.symlinkSync("nowhere", path.join(dir, "dangling"));
    const missing = await missingPaths([
      dir,
      path.join(dir, "file"),
      path.join(dir, "dangling"),
      path.join(dir, "nope"),
      path.join(dir, "file", "below-a-file"),
    ]);
    assert.deepEqual(missing, [path.join(dir, "nope"), path.join(dir, "file", "below-a-file")]);
  });

  it("skips unreadable files and directories with warnings and completes", async () => {
    // Root reads anything whatever the mode, so as root the walk runs as nobody.
    const dir = fs.mkdtempSync("/tmp/immutd-perm-");
    cleanups.push(() => {
      fs.chmodSync(path.join(dir, "t", "closed"), 0o755);
      fs.rmSync(dir, { recursive: true, force: true });
    });
    fs.chmodSync(dir, 0o755);
    const top = path.join(dir, "t");
    write(path.join(top, "readable"), "ok\n", 0o644);
    write(path.join(top, "unreadable"), "no\n", 0o000);
    write(path.join(top, "closed/inside"), "hidden\n", 0o644);
    fs.chmodSync(path.join(top, "closed"), 0o000);
    fs.chmodSync(top, 0o755);

    let tar: Buffer;
    let warnings: ArchiveWarning[];
    if (isRoot) {
      const script = `
        import { createArchive } from ${JSON.stringify(archiveModule)};
        const warnings = [];
        const a = createArchive({ paths: [${JSON.stringify(top)}], onWarning: (w) => warnings.push(w) });
        a.stream.pipe(process.stdout);
        await a.done;
        process.stderr.write(JSON.stringify(warnings));
      `;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
        uid: 65534,
        gid: 65534,
        cwd: "/",
        stdio: ["ignore", "pipe", "pipe"],
      });
      const stderr: Buffer[] = [];
      child.stderr.on("data", (c: Buffer) => stderr.push(c));
      const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
      tar = await collect(child.stdout);
      assert.equal(await closed, 0, Buffer.concat(stderr).toString());
      warnings = JSON.parse(Buffer.concat(stderr).toString()) as ArchiveWarning[];
    } else {
      ({ tar, warnings } = await archive({ paths: [top] }));
    }
    assert.deepEqual(
      warnings.map((w) => [path.relative(top, w.path), w.code]),
      [
        ["closed", "EACCES"],
        ["unreadable", "EACCES"],
      ],
    );
    assert.match(warnings[0]?.message ?? "", /cannot read directory, its contents were skipped/);
    assert.match(warnings[1]?.message ?? "", /cannot open file, skipped/);
    const listing = await gnuTarList(tar);
    assert.equal(listing.code, 0, listing.stderr);
    assert.deepEqual(
      listing.entries.map((e) => path.relative(top.slice(1), e.name)),
      ["", "closed", "readable"],
    );
  });
});

describe("createArchive: files changing while being read", () => {
  /**
   * Archives a single big file and calls `change` once the consumer has seen
   * the first MiB: backpressure keeps the reader only a few MiB ahead.
   */
  async function archiveWhileChanging(size: number, change: (file: string) => void) {
    const top = path.join(tmpDir("change"), "t");
    const file = path.join(top, "big");
    const content = randomBytes(size);
    write(file, content);
    const warnings: ArchiveWarning[] = [];
    const a = createArchive({ paths: [top], onWarning: (w) => warnings.push(w) });
    const chunks: Buffer[] = [];
    let seen = 0;
    let changed = false;
    for await (const chunk of a.stream) {
      chunks.push(chunk as Buffer);
      seen += (chunk as Buffer).length;
      if (!changed && seen >= MiB) {
        changed = true;
        change(file);
      }
    }
    await a.done;
    return { tar: Buffer.concat(chunks), warnings, content, file };
  }

  it("pads a file that shrank to its declared size and warns", async () => {
    const { tar, warnings, content, file } = await archiveWhileChanging(32 * MiB, (f) =>
      fs.truncateSync(f, 16 * MiB),
    );
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.path, file);
    assert.match(warnings[0]?.message ?? "", /^file shrank while being read/);
    const listing = await gnuTarList(tar);
    assert.equal(listing.code, 0, listing.stderr);
    assert.equal(listing.entries[1]?.size, 32 * MiB);
    const entry = (await parseTar(tar))[1];
    const expected = Buffer.concat([content.subarray(0, 16 * MiB), Buffer.alloc(16 * MiB)]);
    assert.equal(entry?.sha256, sha256(expected));
  });

  it("stops a file that grew at its declared size and warns", async () => {
    const { tar, warnings, content, file } = await archiveWhileChanging(16 * MiB, (f) =>
      fs.appendFileSync(f, randomBytes(4 * MiB)),
    );
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.path, file);
    assert.match(warnings[0]?.message ?? "", /^file grew while being read/);
    const listing = await gnuTarList(tar);
    assert.equal(listing.code, 0, listing.stderr);
    assert.equal(listing.entries[1]?.size, 16 * MiB);
    assert.equal((await parseTar(tar))[1]?.sha256, sha256(content));
  });

  it("warns about a file rewritten in place while being read", async () => {
    const { warnings } = await archiveWhileChanging(16 * MiB, (f) => {
      const fd = fs.openSync(f, "r+");
      fs.writeSync(fd, Buffer.from("rewritten"), 0, 9, 15 * MiB);
      fs.closeSync(fd);
      const later = new Date(Date.now() + 5000);
      fs.utimesSync(f, later, later);
    });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]?.message ?? "", /changed while being read/);
  });
});

describe("createArchive: huge files", () => {
  /**
   * Reading the holes of a sparse file on ext4/xfs fills the page cache with
   * 8 GiB of zeroed pages (slow, and it evicts the machine's cache); on tmpfs
   * holes read as the shared zero page. So prefer /dev/shm when it is tmpfs.
   */
  function sparseDir(): string {
    const TMPFS_MAGIC = 0x01021994;
    try {
      if (fs.statfsSync("/dev/shm").type === TMPFS_MAGIC) {
        const dir = fs.mkdtempSync("/dev/shm/immutd-huge-");
        cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
        return dir;
      }
    } catch {
      // no usable /dev/shm: fall back to the temp dir
    }
    return tmpDir("huge");
  }

  it("archives a sparse file of 8 GiB + 1 byte that GNU tar lists with its size", async () => {
    const top = path.join(sparseDir(), "t");
    const file = path.join(top, "sparse.img");
    const size = 8 * 1024 * MiB + 1;
    write(file, "");
    fs.truncateSync(file, size);
    const started = performance.now();
    const a = createArchive({ paths: [top] });
    const listing = await gnuTarList(a.stream);
    const result = await a.done;
    const seconds = (performance.now() - started) / 1000;
    console.log(`# 8 GiB sparse file through tar -tvf: ${seconds.toFixed(1)} s`);
    assert.equal(listing.code, 0, listing.stderr);
    assert.equal(listing.stderr, "");
    assert.deepEqual(
      listing.entries.map((e) => [e.name, e.size]),
      [
        [`${top.slice(1)}/`, 0],
        [file.slice(1), size],
      ],
    );
    assert.equal(result.bytes, size);
  });
});

describe("createArchive: how its bytes are passed on", () => {
  it("passes 1,000 small files on in a few large chunks, not three per file", async () => {
    const top = path.join(tmpDir("batch"), "t");
    const content = new Map<string, Buffer>();
    for (let i = 0; i < 1000; i++) {
      const name = `d${i % 10}/f${i}`;
      const data = randomBytes(512 + (i % 1536));
      content.set(name, data);
      write(path.join(top, name), data);
    }
    const a = createArchive({ paths: [top] });
    // Each chunk as pushed ('data' events; an async iterator would join what is buffered).
    const chunks: Buffer[] = [];
    a.stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    await finished(a.stream);
    await a.done;
    const tar = Buffer.concat(chunks);
    // Each file costs 1,024 to 2,560 bytes of tar: about 1.8 MB in all, 7 batches of 256 KiB.
    assert.ok(chunks.length <= 12, `${chunks.length} chunks for ${tar.length} bytes`);
    const seen = new Map((await parseTar(tar)).map((f) => [f.name, f.sha256]));
    for (const [name, data] of content) {
      assert.equal(seen.get(`${top.slice(1)}/${name}`), sha256(data), `content of ${name}`);
    }
  });

  it("passes on what it holds as soon as the walk waits, however little", async () => {
    const stop = new AbortController();
    const tar = new TarWriter(stop.signal, () => {});
    const st = fs.lstatSync(tmpDir("held"), { bigint: true });
    await tar.addVoid(headerFor("held/", "directory", st, 0));
    // One header block, far below a batch: held until the event loop turns.
    assert.equal(tar.out.readableLength, 0);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(tar.out.readableLength, 512);
    tar.out.on("error", () => {});
    tar.destroy(new Error("done"));
  });
});

for (const thread of ["worker", "main"] as const)
  describe(`createArchive: stopping early (walk on the ${thread} thread)`, () => {
    let top = "";
    before(() => {
      top = path.join(tmpDir("abort"), "t");
      for (let i = 0; i < 4; i++) write(path.join(top, `f${i}`), randomBytes(16 * MiB));
    });

    it("rejects done with the abort reason, errors the stream with it and leaks no fd", async () => {
      const fdsBefore = openFds();
      const controller = new AbortController();
      const reason = new Error("operator cancelled");
      const a = createArchive({ paths: [top], thread, signal: controller.signal });
      let streamError: unknown;
      let received = 0;
      try {
        for await (const chunk of a.stream) {
          received += (chunk as Buffer).length;
          if (received >= MiB) controller.abort(reason);
        }
      } catch (err) {
        streamError = err;
      }
      assert.equal(streamError, reason);
      await assert.rejects(a.done, (err) => err === reason);
      assert.ok(received < 16 * MiB, `read ${received} bytes after abort`);
      assert.equal(openFds(), fdsBefore);
    });

    // This thread's ArrayBuffers measure a walk on this thread only (the
    // worker's are its own, and transferred ones are not counted); the
    // worker's read-ahead is measured in test/archive-thread.test.ts.
    if (thread === "main")
      it("reads only a few MiB ahead of a consumer that stalls", async () => {
        const a = createArchive({ paths: [top], thread });
        const first = await new Promise<Buffer>((resolve) => a.stream.once("data", resolve));
        a.stream.pause();
        const buffersBefore = process.memoryUsage().arrayBuffers;
        await new Promise((resolve) => setTimeout(resolve, 300)); // reading 64 MiB takes far less
        const growth = process.memoryUsage().arrayBuffers - buffersBefore;
        assert.ok(first.length > 0);
        assert.ok(growth < 8 * MiB, `buffered ${growth} bytes while the consumer stalled`);
        a.stream.destroy();
        await assert.rejects(a.done);
      });

    // This thread's ArrayBuffers measure a walk on this thread only (the
    // worker's are its own, and transferred ones are not counted); the
    // worker's read-ahead is measured in test/archive-thread.test.ts.
    if (thread === "main")
      it("reads only a few MiB of small files ahead of a consumer that stalls", async () => {
        // Files of 256 KiB are read whole ahead of their turn (the small-file
        // path), each into its own buffer: nothing but the writer's room check
        // keeps 50 MiB of them from piling up in memory while nobody reads.
        const small = path.join(tmpDir("stall-small"), "t");
        const data = randomBytes(256 * 1024);
        for (let i = 0; i < 200; i++) write(path.join(small, `f${i}`), data);
        // Measured before the archive exists, so whatever it reads counts; after a
        // full GC each time, so that only buffers still held do (the chunks
        // already passed on and each file's read buffer, copied into its tar
        // block, are garbage).
        const buffersBefore = await liveArrayBuffers();
        const a = createArchive({ paths: [small], thread });
        const first = await new Promise<Buffer>((resolve) => a.stream.once("data", resolve));
        a.stream.pause();
        await new Promise((resolve) => setTimeout(resolve, 300)); // reading 50 MiB takes far less
        const growth = (await liveArrayBuffers()) - buffersBefore;
        assert.ok(first.length > 0);
        assert.ok(growth < 8 * MiB, `buffered ${growth} bytes while the consumer stalled`);
        a.stream.destroy();
        await assert.rejects(a.done);
      });

    it("closes every file it opened before done rejects", async () => {
      // The FIFO's warning aborts the walk halfway through a directory of small
      // files. Where the walk stands at that instant is up to the scheduler,
      // hence several rounds.
      const dir = path.join(tmpDir("abort-small"), "t");
      fs.mkdirSync(dir);
      execFileSync("mkfifo", [path.join(dir, "s31-fifo")]);
      for (let i = 0; i < 64; i++) {
        write(path.join(dir, `s${String(i).padStart(2, "0")}`), randomBytes(256 * 1024));
      }
      const fdsBefore = openFds();
      for (let round = 0; round < 16; round++) {
        const controller = new AbortController();
        const a = createArchive({
          paths: [dir],
          thread,
          signal: controller.signal,
          onWarning: () => controller.abort(new Error("stop")),
        });
        a.stream.resume();
        a.stream.on("error", () => {});
        await assert.rejects(a.done, /stop/);
        assert.equal(openFds(), fdsBefore, `round ${round}`);
      }
    });

    it("fails the archive when a callback throws: done rejects, the stream errors", async () => {
      const bug = new Error("bug in onProgress");
      const a = createArchive({
        paths: [top],
        thread,
        onProgress: () => {
          throw bug;
        },
      });
      await assert.rejects(collect(a.stream), (err) => err === bug);
      await assert.rejects(a.done, (err) => err === bug);
    });

    it("rejects done when the signal is already aborted", async () => {
      const controller = new AbortController();
      controller.abort(new Error("too late"));
      const a = createArchive({ paths: [top], thread, signal: controller.signal });
      a.stream.on("error", () => {});
      await assert.rejects(a.done, /too late/);
    });

    it("stops the walk when the consumer destroys the stream, leaking no fd", async () => {
      const fdsBefore = openFds();
      const a = createArchive({ paths: [top], thread });
      await new Promise<void>((resolve) => {
        a.stream.once("data", () => {
          a.stream.destroy();
          resolve();
        });
      });
      await assert.rejects(a.done, /destroyed before the archive was complete/);
      assert.equal(openFds(), fdsBefore);
    });

    it("stops the walk when a pipeline stage fails", async () => {
      const fdsBefore = openFds();
      const a = createArchive({ paths: [top], thread });
      const failure = new Error("upload failed");
      let seen = 0;
      await assert.rejects(
        pipeline(a.stream, async (source: AsyncIterable<Buffer>) => {
          for await (const chunk of source) {
            seen += chunk.length;
            if (seen > 2 * MiB) throw failure;
          }
        }),
        (err) => err === failure,
      );
      await assert.rejects(a.done);
      assert.equal(openFds(), fdsBefore);
    });
  });
