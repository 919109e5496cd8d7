import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pack } from "tar-stream";
import type { EntryHeader } from "../src/pipeline/tar.js";
import { BLOCK, padding, writePlainHeader } from "../src/pipeline/ustar.js";

/** What tar-stream's pack writes for `header` before any content: the header block(s). */
async function tarStreamHead(header: EntryHeader): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on("data", (c) => chunks.push(c as Buffer));
  p.on("error", () => {});
  const { pax: _pax, ...rest } = header;
  const sink = p.entry(header.pax ? { ...rest, pax: header.pax } : { ...rest }, () => {});
  sink.on("error", () => {});
  await new Promise((resolve) => setImmediate(resolve));
  p.destroy();
  return Buffer.concat(chunks);
}

function ours(header: EntryHeader): Buffer | null {
  const buf = Buffer.alloc(BLOCK + 8, 0xee);
  if (!writePlainHeader(header, buf, 4)) {
    assert.ok(
      buf.every((b) => b === 0xee),
      "a refused header left bytes behind",
    );
    return null;
  }
  assert.equal(buf.readUInt32BE(0), 0xeeeeeeee, "wrote before its block");
  assert.equal(buf.readUInt32BE(BLOCK + 4), 0xeeeeeeee, "wrote after its block");
  return buf.subarray(4, 4 + BLOCK);
}

/** A deterministic generator, so a failure names a reproducible case. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const TYPES = ["file", "directory", "symlink", "link"] as const;

describe("ustar: plain headers, block for block as tar-stream writes them", () => {
  it("matches tar-stream on 3,000 generated headers and refuses only what tar-stream writes with pax", async () => {
    const r = rng(12_345);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
    const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789._-/ ";
    let plain = 0;
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const len = 1 + Math.floor(r() * 280);
      let name = "";
      for (let k = 0; k < len; k++) name += pick([...alphabet, "/", "/"]);
      if (r() < 0.05) name += "é"; // tar-stream writes a pax path for any non-ASCII name
      const type = pick(TYPES);
      if (type === "directory") name += "/";
      const header: EntryHeader = {
        name,
        type,
        size: type === "file" ? pick([0, 1, 511, 512, 513, 0o77777777777, 2 ** 33 + 1]) : 0,
        mode: (type === "directory" ? 0o40000 : 0o100000) | Math.floor(r() * 0o7777),
        uid: pick([0, 1000, 0o777777, 0o1000000]),
        gid: pick([0, 100, 0o777777]),
        mtime: new Date(pick([0, 1_600_000_000, 2 ** 31 - 1]) * 1000),
      };
      if (type === "symlink" || type === "link") {
        let target = "";
        const tl = 1 + Math.floor(r() * 130);
        for (let k = 0; k < tl; k++) target += pick([...alphabet]);
        header.linkname = target;
      }
      const mine = ours(header);
      const theirs = await tarStreamHead(header);
      const theirsPax = theirs[156] === "x".charCodeAt(0);
      if (mine === null) {
        refused++;
        assert.ok(theirsPax, `refused a header tar-stream writes plain: ${JSON.stringify(header)}`);
      } else {
        plain++;
        assert.ok(!theirsPax, `plain where tar-stream writes pax: ${JSON.stringify(header)}`);
        assert.deepEqual(mine, theirs.subarray(0, BLOCK), `header ${i}: ${JSON.stringify(header)}`);
      }
    }
    // Both ways must be exercised, or the comparison proves nothing.
    assert.ok(plain > 1500, `${plain} plain`);
    assert.ok(refused > 300, `${refused} refused`);
  });

  it("splits a long name at a '/' into prefix and name, as tar-stream does", async () => {
    const name = `${"p".repeat(150)}/${"n".repeat(99)}`;
    const header: EntryHeader = { name, type: "file", size: 3, mode: 0o100644, mtime: new Date(0) };
    const mine = ours(header);
    assert.ok(mine);
    assert.equal(mine.toString("latin1", 0, 99), "n".repeat(99));
    assert.equal(mine.toString("latin1", 345, 495), "p".repeat(150));
    assert.deepEqual(mine, (await tarStreamHead(header)).subarray(0, BLOCK));
  });

  it("leaves tar-stream the headers it fills in or extends itself", () => {
    const base: EntryHeader = {
      name: "a",
      type: "file",
      size: 1,
      mode: 0o100644,
      mtime: new Date(0),
    };
    const { mtime: _m, ...noMtime } = base;
    const { type: _t, ...noType } = base;
    for (const h of [
      { ...base, mode: 0 },
      noMtime,
      noType,
      { ...base, pax: { mtime: "-1" } },
      { ...base, uname: "root" },
      { ...base, name: "x".repeat(101) }, // no "/" to split at
      { ...base, type: "symlink" as const, linkname: "t".repeat(101) },
      { ...base, name: "caf\xe9" }, // a byte string that is not ASCII
    ])
      assert.equal(ours(h), null, JSON.stringify(h));
  });

  it("pads content to whole blocks", () => {
    assert.deepEqual(
      [0, 1, 511, 512, 513].map((n) => padding(n)),
      [0, 511, 1, 0, 511],
    );
  });
});
