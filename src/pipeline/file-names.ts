/**
 * File names as Linux has them: bytes, not text. Pure.
 *
 * The archive walk and the extractor carry every path as a *byte string*: a JS
 * string in which each character is one byte of the name (Latin-1 decoding,
 * U+0000..U+00FF). String code (Set lookups, "/" splitting, "." and ".."
 * checks, concatenation) then works on the exact bytes, whether or not they
 * are UTF-8; `fsPath` turns a byte string back into the Buffer that node:fs
 * takes, so the kernel sees the bytes that were read. Nothing here can turn
 * a byte into "/" or "." that was not one: Latin-1 maps byte to character
 * one to one.
 *
 * Names leave this representation in three forms, each in one function:
 * `textOf` (valid UTF-8 only: what tar-stream writes as today), `matchForm`
 * (for exclude and include globs) and `displayName` (logs, warnings, listings).
 */

const utf8 = new TextDecoder("utf-8", { fatal: true });
const ASCII = /^\p{ASCII}*$/u;

/** The byte string of a name given as text (a configured path, a CLI argument): its UTF-8 bytes. */
export function byteStringOf(text: string): string {
  return ASCII.test(text) ? text : Buffer.from(text, "utf8").toString("latin1");
}

/** The byte string of raw bytes (readdir, readlink with encoding "buffer"). */
export function byteStringFrom(bytes: Buffer): string {
  return bytes.toString("latin1");
}

/** The bytes of a byte string, for node:fs calls. */
export function fsPath(name: string): Buffer {
  return Buffer.from(name, "latin1");
}

/** The name as text when its bytes are valid UTF-8, null otherwise. */
export function textOf(name: string): string | null {
  if (ASCII.test(name)) return name;
  try {
    return utf8.decode(fsPath(name));
  } catch {
    return null;
  }
}

/**
 * The form globs are matched against: each "/"-separated component that is
 * valid UTF-8 as its text (so every existing pattern matches as before), any
 * other component with each byte read as the Latin-1 character of that value.
 * So "caf\xe9" (Latin-1 bytes) matches "café", "caf?" and "caf*", and a 0xff
 * byte is "ÿ". Two names can share a match form ("café" in UTF-8 and in
 * Latin-1); a glob then selects both, which is what a user typing it means.
 */
export function matchForm(name: string): string {
  if (ASCII.test(name)) return name;
  return name
    .split("/")
    .map((part) => textOf(part) ?? part)
    .join("/");
}

/** C escapes GNU tar's default (escape) quoting style prints for these bytes. */
const ESCAPES = new Map<number, string>([
  [0x07, "\\a"],
  [0x08, "\\b"],
  [0x09, "\\t"],
  [0x0a, "\\n"],
  [0x0b, "\\v"],
  [0x0c, "\\f"],
  [0x0d, "\\r"],
  [0x5c, "\\\\"],
]);

/**
 * A printable, unambiguous, one-line form of a name, the way `tar -t` prints
 * it (GNU tar's "escape" quoting style in a UTF-8 locale): valid printable
 * UTF-8 as is, a backslash as "\\", newline, tab and the other C escapes as
 * "\n", "\t"..., and every other byte (invalid UTF-8, control characters) as
 * a backslash and three octal digits: "caf\351" for Latin-1 "café".
 */
export function displayName(name: string): string {
  if (/^[\x20-\x5b\x5d-\x7e]*$/.test(name)) return name; // printable ASCII, no backslash
  const bytes = fsPath(name);
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i] as number;
    const len = utf8SequenceLength(bytes, i);
    const cEscape = ESCAPES.get(b);
    if (cEscape !== undefined) {
      out += cEscape;
      i++;
    } else if (len === 0 || b < 0x20 || b === 0x7f || isC1(bytes, i)) {
      out += `\\${b.toString(8).padStart(3, "0")}`;
      i++;
    } else {
      out += bytes.toString("utf8", i, i + len);
      i += len;
    }
  }
  return out;
}

/** U+0080..U+009F (C1 controls) are encoded as 0xc2 0x80..0x9f. */
function isC1(bytes: Buffer, i: number): boolean {
  const next = bytes[i + 1];
  return bytes[i] === 0xc2 && next !== undefined && next >= 0x80 && next <= 0x9f;
}

/**
 * The length of the well-formed UTF-8 sequence starting at `i` (Unicode
 * table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), or 0.
 */
function utf8SequenceLength(bytes: Buffer, i: number): number {
  const b = bytes[i] as number;
  if (b < 0x80) return 1;
  const inRange = (k: number, lo: number, hi: number) => {
    const c = bytes[i + k];
    return c !== undefined && c >= lo && c <= hi;
  };
  const tail = (from: number, to: number) => {
    for (let k = from; k <= to; k++) if (!inRange(k, 0x80, 0xbf)) return false;
    return true;
  };
  if (b >= 0xc2 && b <= 0xdf) return tail(1, 1) ? 2 : 0;
  if (b === 0xe0) return inRange(1, 0xa0, 0xbf) && tail(2, 2) ? 3 : 0;
  if ((b >= 0xe1 && b <= 0xec) || b === 0xee || b === 0xef) return tail(1, 2) ? 3 : 0;
  if (b === 0xed) return inRange(1, 0x80, 0x9f) && tail(2, 2) ? 3 : 0;
  if (b === 0xf0) return inRange(1, 0x90, 0xbf) && tail(2, 3) ? 4 : 0;
  if (b >= 0xf1 && b <= 0xf3) return tail(1, 3) ? 4 : 0;
  if (b === 0xf4) return inRange(1, 0x80, 0x8f) && tail(2, 3) ? 4 : 0;
  return 0;
}
