/**
 * The manifest's index spool (src/pipeline/index-spool.ts) in real backups
 * through the CLI against Ceph RGW: no spool is left after a backup, a
 * run killed with SIGKILL mid-walk leaves none either (the spool is unlinked
 * once open; the catalog's directory is inside the tree), and a
 * spool that cannot be written (a file-size limit: the disk is full for it)
 * fails the backup naming the file, with no version left in the bucket.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ListObjectVersionsCommand, type S3Client } from "@aws-sdk/client-s3";
import { type TestConfig, writeConfig } from "./support/assurance.js";
import { CLI, runCli } from "./support/cli.js";
import { client, createLockedBucket, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

/** The spools in the catalog's directory. */
const spools = (cfg: TestConfig): string[] =>
  readdirSync(join(cfg.dir, "state")).filter((n) => n.endsWith(".spool"));

/** Whether process `pid` holds an unlinked spool open (its /proc/PID/fd links). */
function holdsSpool(pid: number): boolean {
  try {
    return readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return /\.spool \(deleted\)$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`));
      } catch {
        return false;
      }
    });
  } catch {
    return false;
  }
}

/** A tree of `n` small files under the config's data directory. */
function manyFiles(cfg: TestConfig, n: number): void {
  for (let d = 0; d < n / 500; d++) {
    const dir = join(cfg.data, "many", `d${d}`);
    mkdirSync(dir, { recursive: true });
    for (let i = 0; i < 500; i++)
      writeFileSync(join(dir, `file-with-a-longer-name-${i}`), `${d}/${i}\n`);
  }
}

/** The config with the job's path widened from data/ to the whole directory (the catalog's state/ included). */
function wholeDir(cfg: TestConfig): void {
  const text = readFileSync(cfg.file, "utf8").replace(
    `paths: [${cfg.data}]`,
    `paths: [${cfg.dir}]`,
  );
  writeFileSync(cfg.file, text, { mode: 0o600 });
}

describe("manifest index spool (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  before(() => {
    env = s3env();
    main = client(env, env.main);
  });
  after(() => main?.destroy());

  const versions = async (bucket: string) =>
    ((await main.send(new ListObjectVersionsCommand({ Bucket: bucket }))).Versions ?? []).map(
      (v) => v.Key,
    );

  it("a run killed mid-walk leaves no spool, and the next run neither meets nor archives one", async () => {
    const bucket = uniqueBucket("spool");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket, job: ["compression: none"] });
    wholeDir(cfg);
    manyFiles(cfg, 8_000);
    const first = await runCli(["--config", cfg.file, "backup"], { timeoutMs: 300_000 });
    assert.equal(first.code, 0, first.stderr);
    assert.deepEqual(spools(cfg), [], "a backup that succeeded leaves no spool");

    // kill -9 while the walk is spooling the index: the run holds it open, unlinked.
    const child = spawn(process.execPath, [CLI, "--config", cfg.file, "backup"], {
      stdio: "ignore",
    });
    const exited = new Promise((r) => child.once("exit", r));
    const pid = child.pid as number;
    for (let i = 0; i < 6000 && !holdsSpool(pid); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(holdsSpool(pid), "the run holds its spool while it walks");
    assert.deepEqual(spools(cfg), [], "by then it has no name in the catalog's directory");
    child.kill("SIGKILL");
    await exited;
    assert.deepEqual(spools(cfg), [], "SIGKILL leaves no spool behind");

    const next = await runCli(["--config", cfg.file, "backup"], { timeoutMs: 300_000 });
    assert.equal(next.code, 0, next.stderr);
    assert.deepEqual(spools(cfg), [], "nor does the next run");
    const ls = await runCli(["--config", cfg.file, "ls", "files", "--json"]);
    assert.equal(ls.code, 0, ls.stderr);
    const listed = ls.stdout;
    assert.ok(listed.includes("many/d15/file-with-a-longer-name-499"), "the index is complete");
    assert.match(
      listed,
      /\/state\/?"/,
      "the catalog's directory was walked (the live catalog itself is never archived)",
    );
    assert.ok(!listed.includes(".spool"), "no spool was archived");
  });

  it("a spool that cannot be written fails the backup naming it, and leaves no version and no spool", async () => {
    const bucket = uniqueBucket("spoolfull");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket, job: ["compression: none"] });
    manyFiles(cfg, 8_000);
    // The disk is full for files above 512 KiB: the spool of 8,000 entries
    // (about 1.6 MB) hits it, the small catalog does not. SIGXFSZ ignored, so a
    // write past the limit fails with EFBIG as on a full disk.
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
      const child = spawn(
        "bash",
        [
          "-c",
          'trap "" XFSZ; ulimit -f 512; exec "$0" "$@"',
          process.execPath,
          CLI,
          "--config",
          cfg.file,
          "backup",
        ],
        { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, IMMUTD_CONFIG: "" } },
      );
      // The run's error: in the log (stdout) and the summary (stderr).
      let stderr = "";
      const collect = (d: Buffer) => {
        stderr += d.toString();
      };
      child.stderr.on("data", collect);
      child.stdout.on("data", collect);
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, stderr }));
    });
    assert.notEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /index could not be written to \S*state\/catalog\.db\.index-\d+-\d+-[0-9a-f]+\.spool/,
    );
    assert.match(r.stderr, /EFBIG|too large/i);
    assert.deepEqual(
      await versions(bucket),
      [],
      "no version of the archive (nor a manifest) is left",
    );
    assert.deepEqual(spools(cfg), [], "the failed run removed its spool");
  });
});
