import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { describe, it } from "node:test";
import { ConfigError } from "../src/errors.js";
import { deriveSseKey, parseMasterKey } from "../src/repo/keys.js";

/** RFC 5869 HKDF written out from HMAC, independent of node's hkdfSync. */
function hkdf(ikm: Buffer, salt: Buffer, info: Buffer, len: number): Buffer {
  const prk = createHmac("sha256", salt.length ? salt : Buffer.alloc(32))
    .update(ikm)
    .digest();
  let t = Buffer.alloc(0);
  const out: Buffer[] = [];
  for (let i = 1; Buffer.concat(out).length < len; i++) {
    t = createHmac("sha256", prk)
      .update(Buffer.concat([t, info, Buffer.from([i])]))
      .digest();
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, len);
}

describe("keys", () => {
  it("derives the SSE-C key by the documented HKDF rule", () => {
    const master = Buffer.alloc(32, 7);
    const key = "web-1/etc/2026-11-25T030000Z-0a1b2c3d.tar.gz";
    const expected = hkdf(
      master,
      Buffer.alloc(0),
      Buffer.from(`immutd/sse-c/v1:backups-web/${key}`),
      32,
    );
    assert.deepEqual(deriveSseKey(master, "backups-web", key), expected);
    assert.notDeepEqual(
      deriveSseKey(master, "backups-web", key),
      deriveSseKey(master, "other-bucket", key),
    );
  });

  it("matches the RFC 5869 test case 3 (empty salt and info)", () => {
    const ikm = Buffer.alloc(22, 0x0b);
    assert.equal(
      hkdf(ikm, Buffer.alloc(0), Buffer.alloc(0), 42).toString("hex"),
      "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    );
  });

  it("reads raw, hex and base64 master keys and rejects anything else", () => {
    const raw = Buffer.alloc(32, 0xab);
    assert.deepEqual(parseMasterKey(raw), raw);
    assert.deepEqual(parseMasterKey(Buffer.from(`${raw.toString("hex")}\n`)), raw);
    assert.deepEqual(parseMasterKey(Buffer.from(` ${raw.toString("base64")}\n`)), raw);
    assert.throws(() => parseMasterKey(Buffer.from("abc\n")), ConfigError);
    assert.throws(() => parseMasterKey(Buffer.from(raw.toString("hex").slice(2))), ConfigError);
  });
});
