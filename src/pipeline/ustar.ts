/**
 * Plain ustar header blocks, written the way tar-stream's pack writes them,
 * for the entries that need nothing more: the tar writer (src/pipeline/tar.ts)
 * adds most entries of a tree this way and leaves every other case to
 * tar-stream. Pure: a header in, one 512-byte block written, or false.
 *
 * Why not tar-stream for these too: its pack makes a stream object per entry,
 * and on a tree of small files that cost more than reading them (100,000
 * files of 0.5-4 KiB: 0.6 s of a 2 s walk in its per-entry streams and header
 * code). The bytes are tar-stream's own, checked block for block against its
 * pack (test/ustar.test.ts): an archive does not change with the writer that
 * wrote an entry, and tar-stream still reads every archive.
 *
 * false means the header does not fit plain ustar as tar-stream would write
 * it: a name or link target that is not ASCII (tar-stream then writes a pax
 * `path`), a name that no split at a "/" fits into the 155-byte prefix and
 * 100-byte name fields, a link target over 100 bytes, pax records, a mode of
 * 0 (tar-stream substitutes its default) or an owner name (never set here).
 */
import type { EntryHeader } from "./tar.js";

export const BLOCK = 512;

const NAME = 100;
const PREFIX = 155;
/** "ustar\0" and version "00", at offset 257 of every header block. */
export const USTAR_MAGIC = Buffer.from("ustar\u000000", "latin1");
const TYPEFLAG: Readonly<Record<string, number>> = { file: 0, link: 1, symlink: 2, directory: 5 };
/** Any character outside ASCII: tar-stream writes such a name in a pax header. */
const NOT_ASCII = /[\u0080-\uffff]/;

/**
 * Writes the ustar block of `header` (whose name and link target are text,
 * see src/pipeline/file-names.ts textOf) at `buf[off..off+512)`, or returns
 * false and leaves `buf` as it was.
 */
export function writePlainHeader(header: EntryHeader, buf: Buffer, off: number): boolean {
  const type = header.type;
  const flag = type === undefined ? undefined : TYPEFLAG[type];
  // tar-stream fills in a missing type, mode or mtime with defaults of its own.
  if (flag === undefined || !header.mode || header.mtime === undefined) return false;
  if (header.pax !== undefined) return false;
  if (header.uname || header.gname || header.devmajor || header.devminor) return false;
  const linkname = header.linkname ?? "";
  if (linkname.length > NAME || NOT_ASCII.test(linkname)) return false;
  let name = header.name;
  if (NOT_ASCII.test(name)) return false;
  let prefix = "";
  // tar-stream's split: leading components move to the prefix until the name fits.
  while (name.length > NAME) {
    const i = name.indexOf("/");
    if (i === -1) return false;
    prefix += prefix ? `/${name.slice(0, i)}` : name.slice(0, i);
    name = name.slice(i + 1);
  }
  if (prefix.length > PREFIX) return false;
  // tar-stream sets a symlink's size, or a missing one, to 0.
  const size = type === "symlink" ? 0 : (header.size ?? 0);
  const mtime = header.mtime;

  buf.fill(0, off, off + BLOCK);
  buf.write(name, off, "latin1");
  buf.write(octal(header.mode & 0o7777, 6), off + 100, "latin1");
  buf.write(octal(header.uid ?? 0, 6), off + 108, "latin1");
  buf.write(octal(header.gid ?? 0, 6), off + 116, "latin1");
  writeSize(size, buf, off + 124);
  buf.write(octal((mtime.getTime() / 1000) | 0, 11), off + 136, "latin1");
  buf[off + 156] = 0x30 + flag;
  if (linkname) buf.write(linkname, off + 157, "latin1");
  USTAR_MAGIC.copy(buf, off + 257);
  buf.write(octal(0, 6), off + 329, "latin1");
  buf.write(octal(0, 6), off + 337, "latin1");
  if (prefix) buf.write(prefix, off + 345, "latin1");
  writeChecksum(buf, off);
  return true;
}

/** Fills in the checksum field of the header block at `buf[off..off+512)`, all its other fields written. */
export function writeChecksum(buf: Buffer, off: number): void {
  let sum = 8 * 0x20; // the checksum field counts as spaces
  for (let i = off; i < off + 148; i++) sum += buf[i] as number;
  for (let i = off + 156; i < off + BLOCK; i++) sum += buf[i] as number;
  buf.write(octal(sum, 6), off + 148, "latin1");
}

/** Bytes of zeros after `size` bytes of content, up to the next block. */
export function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** `digits` octal digits and a space; all sevens when the value does not fit (as tar-stream). */
export function octal(value: number, digits: number): string {
  const s = value.toString(8);
  if (s.length > digits) return `${"7".repeat(digits)} `;
  return `${s.padStart(digits, "0")} `;
}

/** The 12-byte size field: 11 octal digits, or base-256 from 8 GiB (as tar-stream). */
function writeSize(size: number, buf: Buffer, off: number): void {
  if (size.toString(8).length <= 11) {
    buf.write(octal(size, 11), off, "latin1");
    return;
  }
  buf[off] = 0x80;
  let rest = size;
  for (let i = 11; i > 0; i--) {
    buf[off + i] = rest & 0xff;
    rest = Math.floor(rest / 0x100);
  }
}
