import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  isDatedInFuture,
  KEY_CLOCK_SKEW_MS,
  objectKey,
  parseObjectKey,
} from "../src/repo/naming.js";

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

  it("name zstd archives .tar.zst and read all three extensions back", () => {
    const z = objectKey({
      prefix: "",
      host: "h",
      job: "j",
      at,
      compression: "zstd",
      random: "0a1b2c3d",
    });
    assert.equal(z, "h/j/2026-11-25T030405Z-0a1b2c3d.tar.zst");
    const created = new Date("2026-11-25T03:04:05Z");
    for (const [ext, compression] of [
      ["", "none"],
      [".gz", "gzip"],
      [".zst", "zstd"],
    ] as const) {
      assert.deepEqual(parseObjectKey(`h/j/2026-11-25T030405Z-0a1b2c3d.tar${ext}`), {
        createdAt: created,
        compression,
      });
    }
    for (const other of [".tar.zstd", ".tar.zst.manifest.json.gz", ".tar.bz2", ".zst"])
      assert.equal(parseObjectKey(`h/j/2026-11-25T030405Z-0a1b2c3d${other}`), undefined, other);
  });

  it("a key dated beyond now plus the clock skew counts as planted, up to it does not", () => {
    const now = new Date("2026-12-01T12:00:00Z");
    const at = (ms: number) => new Date(now.getTime() + ms);
    assert.equal(isDatedInFuture(at(-86_400_000), now), false);
    assert.equal(isDatedInFuture(at(KEY_CLOCK_SKEW_MS), now), false);
    assert.equal(isDatedInFuture(at(KEY_CLOCK_SKEW_MS + 1000), now), true);
    const planted = parseObjectKey("h/j/2099-01-01T000000Z-deadbeef.tar");
    assert.ok(planted && isDatedInFuture(planted.createdAt, now));
  });
});
