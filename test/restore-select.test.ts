/** Which version `restore --from-bucket` picks, on the in-memory store (the RGW test proves it end to end). */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import type { Config, JobConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { selectFromBucket } from "../src/flows/restore.js";
import { jobPrefix, manifestKey } from "../src/repo/naming.js";
import { MemoryBucket } from "../src/store/memory.js";

const NOW = new Date("2026-12-01T12:00:00Z");
const config = { masterKey: new Secret(randomBytes(32)) } as unknown as Config;
const job = { name: "j" } as JobConfig;

/** Stamps may end in an extension (`.gz`, `.zst`) that follows `.tar` in their key. */
async function bucketWith(stamps: string[]) {
  const bucket = new MemoryBucket("select");
  const target = bucket.target("memory", "p/");
  const ids = new Map<string, string>();
  for (const [i, stamped] of stamps.entries()) {
    const [stamp = "", ext = ""] = stamped.split(/(?=\.)/);
    const key = `${jobPrefix("p/", "h", "j")}${stamp}-0000000${i}.tar${ext}`;
    const body = Readable.from([Buffer.from("x")]);
    const { versionId } = await target.writer.upload({ key, body, sseKey: randomBytes(32) });
    ids.set(stamp, versionId);
  }
  return { target, ids };
}

describe("selectFromBucket: keys dated in the future", () => {
  const stamps = [
    "2026-11-30T030000Z",
    "2026-12-01T120500Z",
    "2026-12-01T121500Z",
    "2099-01-01T000000Z",
  ];

  it("skips keys beyond now + 10 min with one warning each, and takes the newest plausible one", async () => {
    const { target } = await bucketWith(stamps);
    for (const at of [undefined, new Date("2100-01-01T00:00:00Z")]) {
      const warnings: string[] = [];
      const src = await selectFromBucket(
        target.reader,
        config,
        target,
        job,
        "h",
        at ? { at } : {},
        {
          now: NOW,
          onWarning: (m) => warnings.push(m),
        },
      );
      assert.match(src.key, /2026-12-01T120500Z/, "5 minutes ahead is within the clock skew");
      assert.equal(warnings.length, 2);
      assert.match(
        warnings[0] ?? "",
        /2026-12-01T121500Z-00000002\.tar version \S+ skipped: its key is dated/,
      );
      assert.match(warnings[1] ?? "", /2099-01-01T000000Z-00000003\.tar/);
    }
  });

  it("still restores a future-dated version named by --version-id", async () => {
    const { target, ids } = await bucketWith(stamps);
    const versionId = ids.get("2099-01-01T000000Z") as string;
    const src = await selectFromBucket(
      target.reader,
      config,
      target,
      job,
      "h",
      { versionId },
      { now: NOW },
    );
    assert.equal(src.versionId, versionId);
  });

  it("finds .tar.zst keys beside .tar.gz and .tar ones, and refuses a planted .tar.zst dated in the future", async () => {
    const { target } = await bucketWith([
      "2026-11-29T030000Z",
      "2026-11-30T030000Z.gz",
      "2026-12-01T030000Z.zst",
      "2099-01-01T000000Z.zst",
    ]);
    const warnings: string[] = [];
    const src = await selectFromBucket(
      target.reader,
      config,
      target,
      job,
      "h",
      {},
      { now: NOW, onWarning: (m) => warnings.push(m) },
    );
    assert.match(src.key, /2026-12-01T030000Z-00000002\.tar\.zst$/);
    assert.equal(src.compression, "zstd");
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(
      warnings[0] ?? "",
      /2099-01-01T000000Z-00000003\.tar\.zst version \S+ skipped: its key is dated/,
    );
    const gz = await selectFromBucket(
      target.reader,
      config,
      target,
      job,
      "h",
      { at: new Date("2026-11-30T12:00:00Z") },
      { now: NOW },
    );
    assert.equal(gz.compression, "gzip");
  });

  it("with only planted keys, says there is no backup", async () => {
    const { target } = await bucketWith(["2099-01-01T000000Z"]);
    await assert.rejects(
      selectFromBucket(target.reader, config, target, job, "h", {}, { now: NOW }),
      /no backup of job j under s3:\/\/select\/p\/h\/j\//,
    );
  });
});

describe("selectFromBucket: manifests beside the archives", () => {
  it("never picks a manifest: not as the newest object, not by its version ID", async () => {
    const { target, ids } = await bucketWith(["2026-11-30T030000Z"]);
    const archive = `${jobPrefix("p/", "h", "j")}2026-11-30T030000Z-00000000.tar`;
    // Written after the archive, so it is the newest object under the job prefix.
    const { versionId } = await target.writer.putManifest({
      key: manifestKey(archive),
      body: Buffer.from("m"),
      sseKey: randomBytes(32),
    });
    const src = await selectFromBucket(target.reader, config, target, job, "h", {}, { now: NOW });
    assert.equal(src.key, archive);
    assert.equal(src.versionId, ids.get("2026-11-30T030000Z"));
    await assert.rejects(
      selectFromBucket(target.reader, config, target, job, "h", { versionId }, { now: NOW }),
      /no version/,
    );
  });
});
