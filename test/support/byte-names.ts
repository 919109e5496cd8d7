/**
 * A tree whose names are not all UTF-8, made and compared through Buffer
 * paths only (a string path would be re-encoded as UTF-8 and prove nothing).
 */
import { createHash } from "node:crypto";
import fs from "node:fs";

const b = (s: string) => Buffer.from(s, "latin1");
const join = (...parts: Buffer[]) =>
  Buffer.concat(parts.flatMap((p, i) => (i ? [b("/"), p] : [p])));

/** Names below the tree's top, as byte strings (one char per byte), directories with "/". */
export const BYTE_NAMES = {
  latin1: "caf\xe9",
  ff: "\xff",
  newline: "new\nline",
  dir: "d\xe9r\xff/",
  long: `d\xe9r\xff/${"x".repeat(120)}\xfe`,
  symlinkInDir: "d\xe9r\xff/to-caf\xe9",
  utf8NameRawTarget: "utf8-link",
  hardLink: "hard\xe9",
  utf8: Buffer.from("Grüße", "utf8").toString("latin1"),
  pre1970: "old\xe9",
} as const;

/** Makes the tree below `top` (which must exist). */
export function makeByteNamesTree(top: string): void {
  const t = b(top);
  const at = (name: string) => join(t, b(name));
  fs.writeFileSync(at(BYTE_NAMES.latin1), "latin-1 name\n");
  fs.writeFileSync(at(BYTE_NAMES.ff), "0xff name\n");
  fs.writeFileSync(at(BYTE_NAMES.newline), "newline in the name\n");
  fs.mkdirSync(at(BYTE_NAMES.dir));
  fs.writeFileSync(at(BYTE_NAMES.long), "a name longer than the ustar field\n");
  fs.symlinkSync(b("../caf\xe9"), at(BYTE_NAMES.symlinkInDir));
  fs.symlinkSync(b("\xff\xfe-target"), at(BYTE_NAMES.utf8NameRawTarget));
  fs.linkSync(at(BYTE_NAMES.latin1), at(BYTE_NAMES.hardLink));
  fs.writeFileSync(at(BYTE_NAMES.utf8), "valid UTF-8\n");
  fs.writeFileSync(at(BYTE_NAMES.pre1970), "from before 1970: a pax mtime too\n");
  const old = new Date(-86_400_000);
  fs.utimesSync(at(BYTE_NAMES.pre1970), old, old);
  const t0 = new Date("2024-05-06T07:08:09Z");
  fs.utimesSync(at(BYTE_NAMES.dir), t0, t0);
  fs.utimesSync(t, t0, t0);
}

/**
 * Every path below `root` (root itself as ""), keyed by its byte string, in
 * the order immutd archives them (byte order, a directory before its
 * contents): type, mode, mtime, size, content hash, link count, link target
 * in hex. Symlink mtimes are left out (not every tool restores them).
 */
export function byteTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const visit = (abs: Buffer, rel: string) => {
    const st = fs.lstatSync(abs);
    const mode = (st.mode & 0o7777).toString(8);
    const mtime = Math.floor(st.mtimeMs / 1000);
    if (st.isSymbolicLink()) {
      out.set(rel, `l ${fs.readlinkSync(abs, { encoding: "buffer" }).toString("hex")}`);
    } else if (st.isDirectory()) {
      out.set(rel === "" ? "" : `${rel}/`, `d ${mode} ${mtime}`);
      const names = fs.readdirSync(abs, { encoding: "buffer" }).sort(Buffer.compare);
      for (const n of names)
        visit(join(abs, n), rel === "" ? n.toString("latin1") : `${rel}/${n.toString("latin1")}`);
    } else {
      const hash = createHash("sha256").update(fs.readFileSync(abs)).digest("hex").slice(0, 16);
      out.set(rel, `f ${mode} ${mtime} ${st.size} ${hash} ${st.nlink}`);
    }
  };
  visit(b(root), "");
  return out;
}

/** The bytes of a byte string, for comparing with a tool's output. */
export function bytesOf(name: string): Buffer {
  return b(name);
}
