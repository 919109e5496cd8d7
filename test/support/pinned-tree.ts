/**
 * A fixed tree and a normalised archive of it, so that the tar bytes immutd
 * writes can be pinned by one SHA-256 across refactors of the writer. Only
 * what depends on the machine is blanked: the random part of the temporary
 * directory's name, uid/gid/uname/gname and the header checksums (which
 * cover them). Every other byte, names, modes, mtimes, sizes, pax records,
 * content and padding, is hashed as written.
 */
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { makeByteNamesTree } from "./byte-names.js";

const MTIME = new Date("2021-03-04T05:06:07Z");

/** Makes the tree under a fresh /tmp/immutd-pin-XXXXXX; returns it and its random token. */
export function makePinnedTree(): { top: string; token: string } {
  const top = fs.mkdtempSync("/tmp/immutd-pin-");
  const token = path.basename(top).slice("immutd-pin-".length);
  makeByteNamesTree(top);
  const at = (p: string) => path.join(top, p);
  fs.mkdirSync(at("a/b/c"), { recursive: true });
  fs.writeFileSync(at("a/empty"), "");
  fs.writeFileSync(at("a/small.txt"), "small file\n".repeat(9));
  // Above the read-ahead limit (256 KiB): streamed in chunks of 1 MiB.
  fs.writeFileSync(at("a/b/mid.bin"), pattern(300 * 1024 + 7));
  fs.writeFileSync(at("a/b/c/big.bin"), pattern(2 * 1024 * 1024 + 513));
  fs.linkSync(at("a/b/mid.bin"), at("a/mid-link.bin"));
  fs.symlinkSync("b/c/big.bin", at("a/to-big"));
  fs.writeFileSync(at(`a/${"long-name-".repeat(12)}end`), "a long UTF-8 name\n");
  fixModesAndTimes(Buffer.from(top));
  // chmod changes no mtime.
  fs.chmodSync(at("a/small.txt"), 0o640);
  fs.chmodSync(at("a/empty"), 0o000);
  return { top, token };
}

/**
 * Every entry below and including `dir` (byte-string paths) gets a mode that
 * does not depend on the umask and a fixed mtime.
 */
function fixModesAndTimes(dir: Buffer): void {
  for (const name of fs.readdirSync(dir, { encoding: "buffer" })) {
    const p = Buffer.concat([dir, Buffer.from("/"), name]);
    const st = fs.lstatSync(p);
    if (st.isFile()) fs.chmodSync(p, 0o644);
    if (st.isDirectory()) {
      fs.chmodSync(p, 0o750);
      fixModesAndTimes(p);
    }
    // The byte-names tree keeps its pre-1970 file: its pax mtime is part of what is pinned.
    if (st.mtimeMs >= 0) fs.lutimesSync(p, MTIME, MTIME);
  }
  fs.chmodSync(dir, 0o755);
  fs.lutimesSync(dir, MTIME, MTIME);
}

/** Content that is not all zeros and not periodic in 512-byte blocks. */
function pattern(n: number): Buffer {
  const buf = Buffer.alloc(n);
  for (let i = 0; i < n; i++) buf[i] = (i * 7 + (i >> 9)) & 0xff;
  return buf;
}

/** SHA-256 of the archive with the machine-dependent bytes blanked (see above). */
export function normalisedHash(tar: Buffer, token: string): string {
  const out = Buffer.from(tar);
  const fixed = Buffer.from("X".repeat(token.length));
  for (let i = out.indexOf(token); i >= 0; i = out.indexOf(token, i + 1)) fixed.copy(out, i);
  let pos = 0;
  while (pos + 512 <= out.length) {
    const block = out.subarray(pos, pos + 512);
    if (block.every((b) => b === 0)) break; // end-of-archive blocks
    const size = Number.parseInt(block.subarray(124, 136).toString("latin1").trim() || "0", 8);
    for (const [at, len] of [
      [108, 8],
      [116, 8],
      [148, 8],
      [265, 32],
      [297, 32],
    ] as const)
      block.fill(0x20, at, at + len);
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  return createHash("sha256").update(out).digest("hex");
}
