/**
 * The walk's direct read of entries readdir calls regular files (open and
 * fstat instead of lstat, src/pipeline/source.ts): whatever happens to such
 * an entry between readdir and its open, the archive says what the lstat
 * path would have said. The tree is changed exactly in that window through
 * walkHooks.afterReaddir.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, afterEach, describe, it } from "node:test";
import { type ArchiveWarning, createArchive } from "../src/pipeline/archive.js";
import { walkHooks } from "../src/pipeline/source.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
afterEach(() => {
  delete walkHooks.afterReaddir;
});

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "immutd-direct-"));
  dirs.push(dir);
  return dir;
}

/** Archives `top`, running `change` once, right after `top` itself was read. */
async function archiveChanging(top: string, change: () => void) {
  walkHooks.afterReaddir = (dir) => {
    if (dir.equals(Buffer.from(top))) change();
  };
  const warnings: ArchiveWarning[] = [];
  const a = createArchive({ paths: [top], onWarning: (w) => warnings.push(w) });
  const chunks: Buffer[] = [];
  for await (const c of a.stream) chunks.push(c as Buffer);
  const result = await a.done;
  return { tar: Buffer.concat(chunks), warnings, result };
}

/** GNU tar's listing, "type size name" per entry, and its content of `member`. */
function gnuTar(tar: Buffer, member?: string): { list: string[]; content?: Buffer } {
  const t = spawnSync("tar", ["--numeric-owner", "-tvf", "-"], { input: tar });
  assert.equal(t.status, 0, t.stderr.toString());
  const list = t.stdout
    .toString("latin1")
    .trim()
    .split("\n")
    .map((l) => {
      const f = l.split(/\s+/);
      return `${f[0]?.[0]} ${f[2]} ${f.slice(5).join(" ")}`;
    });
  if (member === undefined) return { list };
  const x = spawnSync("tar", ["-xOf", "-", member], { input: tar });
  assert.equal(x.status, 0, x.stderr.toString());
  return { list, content: x.stdout };
}

describe("walk: a regular file changing between readdir and its open", () => {
  it("archives a file swapped for a symlink as that symlink, not its target", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    fs.writeFileSync(path.join(top, "a"), "original");
    fs.writeFileSync(path.join(os.tmpdir(), "immutd-direct-secret"), "not for the archive");
    dirs.push(path.join(os.tmpdir(), "immutd-direct-secret"));
    const { tar, warnings } = await archiveChanging(top, () => {
      fs.rmSync(path.join(top, "a"));
      fs.symlinkSync(path.join(os.tmpdir(), "immutd-direct-secret"), path.join(top, "a"));
    });
    assert.deepEqual(warnings, []);
    const name = `${top.slice(1)}/a`;
    const { list } = gnuTar(tar);
    assert.ok(list.includes(`l 0 ${name} -> ${os.tmpdir()}/immutd-direct-secret`), list.join("\n"));
  });

  it("warns about a file that vanished, as the lstat path does, and archives the rest", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    fs.writeFileSync(path.join(top, "gone"), "x");
    fs.writeFileSync(path.join(top, "kept"), "kept content");
    const { tar, warnings } = await archiveChanging(top, () => fs.rmSync(path.join(top, "gone")));
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.path, path.join(top, "gone"));
    assert.equal(warnings[0]?.code, "ENOENT");
    assert.match(warnings[0]?.message ?? "", /^entry vanished before it could be archived/);
    const { content } = gnuTar(tar, `${top.slice(1)}/kept`);
    assert.equal(content?.toString(), "kept content");
  });

  it("warns about a directory that vanished mid-walk and archives its siblings", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(path.join(top, "d", "deep"), { recursive: true });
    fs.writeFileSync(path.join(top, "d", "deep", "f"), "x");
    fs.writeFileSync(path.join(top, "e"), "sibling");
    const { tar, warnings } = await archiveChanging(top, () =>
      fs.rmSync(path.join(top, "d"), { recursive: true }),
    );
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0]?.path, path.join(top, "d"));
    assert.match(warnings[0]?.message ?? "", /^entry vanished before it could be archived/);
    const { list, content } = gnuTar(tar, `${top.slice(1)}/e`);
    assert.equal(list.length, 2, list.join("\n"));
    assert.equal(content?.toString(), "sibling");
  });

  it("archives a file swapped for a directory as that directory with its contents", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    fs.writeFileSync(path.join(top, "x"), "file");
    const { tar, warnings } = await archiveChanging(top, () => {
      fs.rmSync(path.join(top, "x"));
      fs.mkdirSync(path.join(top, "x"));
      fs.writeFileSync(path.join(top, "x", "inner"), "inner content");
    });
    assert.deepEqual(warnings, []);
    const { list, content } = gnuTar(tar, `${top.slice(1)}/x/inner`);
    assert.ok(list.includes(`d 0 ${top.slice(1)}/x/`), list.join("\n"));
    assert.equal(content?.toString(), "inner content");
  });

  it("skips a file swapped for a FIFO with the FIFO warning, without hanging", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    fs.writeFileSync(path.join(top, "p"), "file");
    const { warnings } = await archiveChanging(top, () => {
      fs.rmSync(path.join(top, "p"));
      assert.equal(spawnSync("mkfifo", [path.join(top, "p")]).status, 0);
    });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]?.message ?? "", /^FIFO skipped/);
  });

  it("declares and archives the size the file has when it is opened, grown or shrunk since readdir", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    fs.writeFileSync(path.join(top, "grows"), Buffer.alloc(1000, 1));
    fs.writeFileSync(path.join(top, "shrinks"), Buffer.alloc(3000, 2));
    const grown = Buffer.concat([Buffer.alloc(1000, 1), Buffer.alloc(4000, 3)]);
    const { tar, warnings } = await archiveChanging(top, () => {
      fs.writeFileSync(path.join(top, "grows"), grown);
      fs.truncateSync(path.join(top, "shrinks"), 700);
    });
    assert.deepEqual(warnings, []);
    const g = gnuTar(tar, `${top.slice(1)}/grows`);
    assert.ok(g.list.includes(`- 5000 ${top.slice(1)}/grows`), g.list.join("\n"));
    assert.ok(g.content?.equals(grown));
    const s = gnuTar(tar, `${top.slice(1)}/shrinks`);
    assert.ok(s.list.includes(`- 700 ${top.slice(1)}/shrinks`), s.list.join("\n"));
    assert.ok(s.content?.equals(Buffer.alloc(700, 2)));
  });

  it("treats a name that is not UTF-8 the same way: swapped for a symlink, archived as one", async () => {
    const top = path.join(tmpDir(), "t");
    fs.mkdirSync(top);
    const latin1 = Buffer.concat([Buffer.from(`${top}/caf`), Buffer.from([0xe9])]);
    fs.writeFileSync(latin1, "bytes");
    fs.writeFileSync(Buffer.from(`${top}/plain`), "plain");
    const { tar, warnings } = await archiveChanging(top, () => {
      fs.rmSync(latin1);
      fs.symlinkSync("elsewhere", latin1);
    });
    assert.deepEqual(warnings, []);
    const { list } = gnuTar(tar);
    assert.ok(list.includes(`l 0 ${top.slice(1)}/caf\\351 -> elsewhere`), list.join("\n"));
  });
});
