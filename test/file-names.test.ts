import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import {
  byteStringFrom,
  byteStringOf,
  displayName,
  fsPath,
  matchForm,
  textOf,
} from "../src/pipeline/file-names.js";
import { paxPathsAsByteStrings, paxRecord } from "../src/pipeline/pax.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Byte strings (one char per byte) of awkward names. */
const NAMES = [
  "caf\xe9", // Latin-1
  "\xff",
  "new\nline",
  "tab\there",
  "back\\slash",
  "bell\x07",
  "del\x7f",
  "\xc2\x85nel", // U+0085, a C1 control, valid UTF-8
  "\xc0\xae\xc0\xae", // overlong "..": invalid
  "\xed\xa0\x80", // a UTF-16 surrogate: invalid
  "\xf4\x90\x80\x80", // above U+10FFFF: invalid
  byteStringOf("Grüße 日本 😀"),
  "plain name.txt",
];

describe("file names as bytes", () => {
  it("displayName prints a name as GNU tar -t does (escape style, UTF-8 locale)", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "immutd-names-"));
    dirs.push(dir);
    for (const n of NAMES) fs.writeFileSync(Buffer.concat([Buffer.from(`${dir}/`), fsPath(n)]), "");
    const listed = execFileSync("tar", ["--quoting-style=escape", "-cvf", "/dev/null", "."], {
      cwd: dir,
      env: { ...process.env, LC_ALL: "C.UTF-8" },
    });
    const gnu = listed
      .toString("utf8")
      .split("\n")
      .filter((l) => l !== "" && l !== "./")
      .map((l) => l.slice(2))
      .sort();
    assert.deepEqual(NAMES.map(displayName).sort(), gnu);
  });

  it("matchForm keeps valid UTF-8 components as text and reads others byte by byte as Latin-1", () => {
    assert.equal(matchForm("/srv/app/x.txt"), "/srv/app/x.txt");
    assert.equal(matchForm(byteStringOf("/srv/Grüße/x")), "/srv/Grüße/x");
    assert.equal(matchForm(`/srv/${byteStringOf("日本")}/caf\xe9/\xff`), "/srv/日本/café/ÿ");
    // A component is one or the other, never a mix: the valid "é" next to 0xff stays two bytes.
    assert.equal(matchForm(`${byteStringOf("é")}\xff`), "Ã©ÿ");
  });

  it("converts between text, byte strings and the bytes node:fs takes", () => {
    assert.equal(byteStringOf("é"), "\xc3\xa9");
    assert.equal(textOf("\xc3\xa9"), "é");
    assert.equal(textOf("caf\xe9"), null);
    assert.equal(byteStringFrom(Buffer.from([0x63, 0xe9, 0x0a])), "c\xe9\n");
    assert.deepEqual([...fsPath("\xff/\x00")], [0xff, 0x2f, 0x00]);
  });
});

describe("pax records for raw names", () => {
  it("paxRecord counts its own length, also where the digits carry over", () => {
    for (let n = 0; n < 120; n++) {
      const rec = paxRecord("path", Buffer.alloc(n, 0xe9));
      const len = Number.parseInt(rec.toString("latin1"), 10);
      assert.equal(len, rec.length, `value of ${n} bytes`);
      assert.equal(rec.at(-1), 0x0a);
    }
  });

  it("rewrites path and linkpath values so a UTF-8 decoder yields their bytes, leaves the rest", () => {
    const raw = Buffer.concat([
      paxRecord("path", Buffer.from([0x63, 0xe9, 0xff])),
      paxRecord("mtime", Buffer.from("123.5")),
      paxRecord("linkpath", Buffer.from([0xfe])),
      paxRecord("comment", Buffer.from([0xe9])),
    ]);
    const out = paxPathsAsByteStrings(raw);
    const text = out.toString("utf8");
    assert.match(text, /^\d+ path=c\u00e9\u00ff\n\d+ mtime=123\.5\n\d+ linkpath=\u00fe\n/);
    assert.ok(out.includes(paxRecord("comment", Buffer.from([0xe9]))), "other keys untouched");
  });

  it("copies a malformed remainder as it is, so tar-stream stops where it always did", () => {
    const good = paxRecord("path", Buffer.from([0xff]));
    for (const junk of ["garbage", "0 path=x\n", "99 path=short\n", "5 p\n", ""]) {
      const out = paxPathsAsByteStrings(Buffer.concat([good, Buffer.from(junk)]));
      assert.deepEqual(
        out.subarray(out.length - junk.length).toString("latin1"),
        junk,
        JSON.stringify(junk),
      );
    }
  });
});
