/** Times on the command line: UTC unless they carry an offset, as `immutd list` shows them. */
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import { parseTimeBound } from "../src/cli/time.js";
import { UsageError } from "../src/errors.js";
import { logRecords, runCli } from "./support/cli.js";

const iso = (text: string) => parseTimeBound("--at", text).toISOString();

describe("parseTimeBound", () => {
  it("reads a time without an offset as UTC, whatever the machine's zone", () => {
    const before = process.env.TZ;
    process.env.TZ = "America/New_York"; // Node applies a changed TZ at once
    try {
      assert.equal(new Date(2026, 11, 1).getTimezoneOffset(), 300, "the zone took effect");
      assert.equal(iso("2026-12-01T18:23:05"), "2026-12-01T18:23:05.999Z");
      assert.equal(iso("2026-12-01"), "2026-12-01T23:59:59.999Z");
    } finally {
      if (before === undefined) delete process.env.TZ;
      else process.env.TZ = before;
    }
  });

  it("covers the whole last unit given: day, minute, second, millisecond", () => {
    assert.equal(iso("2026-12-01"), "2026-12-01T23:59:59.999Z");
    assert.equal(iso("2026-12-01T18:23"), "2026-12-01T18:23:59.999Z");
    assert.equal(iso("2026-12-01T18:23:05"), "2026-12-01T18:23:05.999Z");
    assert.equal(iso("2026-12-01T18:23:05.250"), "2026-12-01T18:23:05.250Z");
  });

  it("accepts the form immutd list prints, and honours Z and ±HH:MM", () => {
    assert.equal(iso("2026-12-01 18:23:05"), "2026-12-01T18:23:05.999Z");
    assert.equal(iso("2026-12-01T18:23Z"), "2026-12-01T18:23:59.999Z");
    assert.equal(iso("2026-12-01T19:23+01:00"), "2026-12-01T18:23:59.999Z");
    assert.equal(iso("2026-12-01T13:23-0500"), "2026-12-01T18:23:59.999Z");
    assert.equal(iso("2026-12-01T00:30+02:00"), "2026-11-30T22:30:59.999Z");
  });

  it("refuses what is not a date, or a date that does not exist, with an example", () => {
    for (const bad of [
      "yesterday",
      "1733077380",
      "2026-12-01T18",
      "12/01/2026",
      "2026-12-01Z",
      "2026-12-01T18:23 UTC",
    ]) {
      assert.throws(
        () => parseTimeBound("--at", bad),
        (e: unknown) =>
          e instanceof UsageError &&
          e.message.startsWith(`--at ${bad}: not a date or time; give a UTC date or time`) &&
          e.message.includes("2026-11-25T03:00"),
        bad,
      );
    }
    for (const [bad, why] of [
      ["2026-02-30", "no such date"],
      ["2026-02-29", "no such date"],
      ["2026-13-01", "no such date"],
      ["2026-12-01T24:00", "no such time of day"],
      ["2026-12-01T18:60", "no such time of day"],
      ["2026-12-01T18:00+25:00", "is not a UTC offset"],
    ] as const) {
      assert.throws(() => parseTimeBound("--at", bad), new RegExp(why), bad);
    }
    assert.equal(iso("2028-02-29"), "2028-02-29T23:59:59.999Z");
  });
});

describe("restore --at (CLI)", () => {
  it("picks by UTC in a machine set to New York, as list shows the times", async () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-time-"));
    const keyFile = join(dir, "master.key");
    writeFileSync(keyFile, `${"ef".repeat(32)}\n`, { mode: 0o600 });
    const config = join(dir, "config.yaml");
    // Nothing listens on port 1: the restore fails after choosing, which is what is tested.
    writeFileSync(
      config,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${keyFile}
host: web-1
targets:
  offsite:
    endpoint: https://127.0.0.1:1
    bucket: backups-web
    forcePathStyle: true
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: etc
    target: offsite
    schedule: "0 3 * * *"
    paths: [/etc]
`,
    );
    const catalog = Catalog.open(join(dir, "catalog.db"));
    for (const [versionId, createdAt] of [
      ["v-1820", "2026-12-01T18:20:41.512Z"],
      ["v-2000", "2026-12-01T20:00:00.000Z"],
    ] as const) {
      const runId = catalog.startRun({
        job: "etc",
        target: "offsite",
        objectKey: `web-1/etc/${versionId}.tar.gz`,
        startedAt: new Date(createdAt),
      });
      catalog.recordBackup({
        runId,
        job: "etc",
        target: "offsite",
        bucket: "backups-web",
        key: `web-1/etc/${versionId}.tar.gz`,
        versionId,
        size: 1,
        sha256: "0".repeat(64),
        compression: "gzip",
        sseKey: Buffer.alloc(32, 1),
        keyDerivation: "test",
        createdAt: new Date(createdAt),
        retentionMode: "COMPLIANCE",
        retainUntil: new Date("2026-12-31T00:00:00Z"),
        status: "ok",
        files: 1,
      });
      catalog.finishRun(runId, { status: "succeeded", bytes: 1, files: 1, warnings: 0 });
    }
    catalog.close();

    const chosen = async (at: string) => {
      const r = await runCli(["--config", config, "restore", "etc", "--list", "--at", at], {
        env: { TZ: "America/New_York" },
        timeoutMs: 60_000,
      });
      const started = logRecords(r.stderr).find((l) => l.msg === "restore started");
      assert.ok(started, `no "restore started" for --at ${at}: ${r.stderr}`);
      return started.versionId;
    };
    // In New York 18:23 local is 23:23 UTC, after both backups.
    assert.equal(await chosen("2026-12-01T18:23"), "v-1820");
    // Copied from list ("CREATED (UTC)" has seconds, not milliseconds).
    assert.equal(await chosen("2026-12-01 18:20:41"), "v-1820");
    assert.equal(await chosen("2026-12-01T15:00-05:00"), "v-2000");

    const bad = await runCli(["--config", config, "restore", "etc", "--list", "--at", "18:23"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--at 18:23: not a date or time; give a UTC date or time/);
  });
});
