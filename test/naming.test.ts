import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { objectKey, parseObjectKey } from "../src/naming.js";

describe("object keys", () => {
  const at = new Date("2026-11-25T03:04:05.678Z");
  it("follow <prefix><host>/<job>/<UTC yyyy-mm-ddTHHMMSSZ>-<8 hex>.tar[.gz]", () => {
    assert.equal(
      objectKey({
        prefix: "p/",
        host: "web-1",
        job: "etc",
        at,
        compression: "gzip",
        random: "0a1b2c3d",
      }),
      "p/web-1/etc/2026-11-25T030405Z-0a1b2c3d.tar.gz",
    );
    assert.equal(
      objectKey({ prefix: "", host: "h", job: "j", at, compression: "none", random: "ffffffff" }),
      "h/j/2026-11-25T030405Z-ffffffff.tar",
    );
  });

  it("are unique within one second and parse back", () => {
    const a = objectKey({ prefix: "", host: "h", job: "j", at, compression: "gzip" });
    const b = objectKey({ prefix: "", host: "h", job: "j", at, compression: "gzip" });
    assert.notEqual(a, b);
    assert.deepEqual(parseObjectKey(a), {
      createdAt: new Date("2026-11-25T03:04:05Z"),
      compression: "gzip",
    });
    assert.equal(parseObjectKey("h/j/notes.txt"), undefined);
  });
});
