/**
 * pax extended headers for names that are not UTF-8, and tar-stream's reader
 * taught to keep them. Pure: buffers in, buffers out.
 *
 * tar-stream (v3) writes and reads pax `path`/`linkpath` values as UTF-8 only
 * (its pack encodes JS strings, its extractor decodes with replacement
 * characters), so a Linux name such as "caf\xe9" would be lost both ways. The
 * format chosen for such names is the one GNU tar itself writes with
 * --format=posix: a pax header whose `path` and `linkpath` hold the raw bytes,
 * before an ordinary ustar header. GNU tar (checked: 1.34, Debian) extracts
 * those byte-exact; `hdrcharset=BINARY`, POSIX's marker for raw values, was
 * left out because GNU tar 1.34 warns "Ignoring unknown extended header
 * keyword" for it on every entry. Names that are valid UTF-8 never come here:
 * tar-stream writes them exactly as before.
 */

import { BLOCK, octal, padding, USTAR_MAGIC, writeChecksum } from "./ustar.js";

/** One pax record, "<length> <key>=<value>\n", the length counting itself. */
export function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, "utf8"), value, Buffer.from("\n", "latin1")]);
  let len = body.length + String(body.length).length;
  if (String(len).length > String(body.length).length) len++;
  return Buffer.concat([Buffer.from(String(len), "latin1"), body]);
}

export interface PaxHeaderFields {
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch, within the 11-digit octal field (the caller clamps). */
  mtime: number;
}

/**
 * A complete pax extended header (typeflag "x"): its ustar block, named
 * "PaxHeader" as tar-stream names its own, followed by `records` padded to
 * whole blocks. The entry it describes must follow immediately.
 */
export function paxHeader(records: Buffer, fields: PaxHeaderFields): Buffer {
  const block = Buffer.alloc(BLOCK);
  block.write("PaxHeader", 0, "latin1");
  block.write(octal(fields.mode & 0o7777, 6), 100, "latin1");
  block.write(octal(fields.uid, 6), 108, "latin1");
  block.write(octal(fields.gid, 6), 116, "latin1");
  block.write(octal(records.length, 11), 124, "latin1");
  block.write(octal(fields.mtime, 11), 136, "latin1");
  block.write("x", 156, "latin1");
  USTAR_MAGIC.copy(block, 257);
  block.write(octal(0, 6), 329, "latin1");
  block.write(octal(0, 6), 337, "latin1");
  writeChecksum(block, 0);
  return Buffer.concat([block, records, Buffer.alloc(padding(records.length))]);
}

/**
 * Rewrites the records of a pax header so that tar-stream's UTF-8 decoding
 * yields each `path` and `linkpath` value as a byte string (one character per
 * byte, see file-names.ts): every value byte becomes the UTF-8 encoding of the
 * character of that code, with the record length fixed up. Other records are
 * copied as they are; at the first malformed record the rest is copied as is,
 * so tar-stream stops where it always stopped.
 */
export function paxPathsAsByteStrings(buf: Buffer): Buffer {
  const out: Buffer[] = [];
  let rest = buf;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    const len = space > 0 ? Number.parseInt(rest.toString("latin1", 0, space), 10) : Number.NaN;
    if (!(len > space + 1) || len > rest.length) break;
    const record = rest.subarray(0, len);
    const inner = record.subarray(space + 1, len - 1);
    const eq = inner.indexOf(0x3d);
    const key = eq < 0 ? "" : inner.toString("utf8", 0, eq);
    if (key === "path" || key === "linkpath") {
      const value = Buffer.from(inner.subarray(eq + 1).toString("latin1"), "utf8");
      out.push(paxRecord(key, value));
    } else {
      out.push(record);
    }
    rest = rest.subarray(len);
  }
  out.push(rest);
  return Buffer.concat(out);
}
