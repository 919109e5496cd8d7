/**
 * The catalog under faults, with real backups on the Ceph RGW: a disk that
 * fills during a run, a catalog mounted read-only, a catalog in any broken
 * state for `restore --from-bucket`, and a catalog reached through symlinks
 * inside (or above) a backed-up path, which must never end up in an archive.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { ListObjectVersionsCommand } from "@aws-sdk/client-s3";
import { logRecords, runCli } from "./support/cli.js";
import {
  client,
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const isRoot = process.getuid?.() === 0;

describe("the catalog under faults (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  /** A directory with a master key and data/a.txt, a new locked bucket, and config files for any catalog path. */
  async function setup(label: string) {
    const dir = mkdtempSync(join(tmpdir(), `immutd-catrgw-${label}-`));
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(data);
    writeFileSync(join(data, "a.txt"), "alpha\n");
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    let n = 0;
    const config = (catalog: string, o: { paths?: string[]; hooks?: string } = {}) => {
      const cfg = join(dir, `config-${n++}.yaml`);
      writeFileSync(
        cfg,
        `catalog: ${catalog}
masterKeyFile: ${dir}/master.key
host: catrgw
targets:
${targetYaml(env, { bucket })}jobs:
  - name: files
    target: local
    schedule: "0 0 1 1 *"
    paths: [${(o.paths ?? [data]).join(", ")}]
${o.hooks ?? ""}`,
      );
      return cfg;
    };
    const versions = async () => {
      const s3 = client(env, env.main);
      try {
        const r = await s3.send(new ListObjectVersionsCommand({ Bucket: bucket }));
        return (r.Versions ?? []).map((v) => ({ key: v.Key ?? "", versionId: v.VersionId ?? "" }));
      } finally {
        s3.destroy();
      }
    };
    return { dir, data, bucket, config, versions };
  }

  /** A tiny tmpfs of our own, unmounted when the test ends. */
  function smallDisk(t: { after(fn: () => void): void }): string {
    const mnt = mkdtempSync(join(tmpdir(), "immutd-catfull-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt]);
    t.after(() => execFileSync("umount", ["-l", mnt]));
    return mnt;
  }

  // The before hook runs once the run is recorded as running: it fills the
  // catalog's disk, so the catalog fails at the worst moment, after the upload.
  const fillHook = (mnt: string) =>
    `    hooks:\n      before: "dd if=/dev/zero of=${mnt}/fill bs=1024 2>/dev/null; true"\n`;

  it("a disk that fills during a run: the failure is recorded, naming the version it could not record; exit 3", {
    skip: !isRoot && "needs root to mount a small tmpfs",
  }, async (t) => {
    const { config, versions } = await setup("catfull");
    const mnt = smallDisk(t);
    const cfg = config(join(mnt, "catalog.db"), { hooks: fillHook(mnt) });
    // An existing catalog, as on any machine after its first day.
    assert.equal((await runCli(["--config", cfg, "status"])).code, 0);

    const r = await runCli(["--config", cfg, "backup"]);
    assert.equal(r.code, 3, r.stderr);
    assert.doesNotMatch(r.stderr, /unexpected error|SqliteError/);
    const [stored] = await versions();
    assert.ok(stored, "the upload itself completed");
    const failed = logRecords(r.stderr).find((l) => l.msg?.toString().startsWith("backup failed"));
    assert.match(
      String(failed?.msg),
      new RegExp(
        `the disk is full.*s3://\\S+/${stored.key} version ${stored.versionId} is in the bucket but not in the catalog`,
      ),
    );

    execFileSync("rm", [join(mnt, "fill")]);
    const status = await runCli(["--config", cfg, "status", "--json"]);
    const [row] = (
      JSON.parse(status.stdout) as { jobs: { lastRun: { status: string; error: string } }[] }
    ).jobs;
    assert.equal(row?.lastRun.status, "failed", "not left running");
    assert.match(
      row?.lastRun.error ?? "",
      new RegExp(`version ${stored.versionId} is in the bucket`),
    );
  });

  it("a disk full before anything can be recorded: exit 78, one line saying the run could not be recorded", {
    skip: !isRoot && "needs root to mount a small tmpfs",
  }, async (t) => {
    const { config, versions } = await setup("catfull2");
    const mnt = smallDisk(t);
    // A new catalog: its schema is still in the WAL, so no checkpoint can make room.
    const cfg = config(join(mnt, "catalog.db"), { hooks: fillHook(mnt) });
    const r = await runCli(["--config", cfg, "backup"]);
    assert.equal(r.code, 78, r.stderr);
    const lines = r.stderr.split("\n").filter((l) => l !== "" && !l.startsWith("{"));
    assert.equal(lines.length, 1, r.stderr);
    const [stored] = await versions();
    assert.ok(stored);
    assert.match(
      lines[0] ?? "",
      new RegExp(
        `^immutd: catalog ${mnt}/catalog.db: the disk is full .*version ${stored.versionId} is in the bucket but not in the catalog.*; nor could run 1 be recorded as failed: it shows as running until`,
      ),
    );
  });

  it("a catalog mounted read-only still lists, shows status and restores; backup and verify refuse before touching the bucket", {
    skip: !isRoot && "needs root for a read-only bind mount",
  }, async (t) => {
    const { dir, data, config, versions } = await setup("catro");
    const state = join(dir, "state");
    const first = await runCli(["--config", config(join(state, "catalog.db")), "backup"]);
    assert.equal(first.code, 0, first.stderr);
    const [stored] = await versions();
    assert.ok(stored);

    const ro = join(dir, "mounted-copy");
    mkdirSync(ro);
    execFileSync("mount", ["--bind", "-o", "ro", state, ro]);
    t.after(() => execFileSync("umount", ["-l", ro]));
    const cfg = config(join(ro, "catalog.db"));

    const list = await runCli(["--config", cfg, "list", "--json"]);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual(
      (JSON.parse(list.stdout) as { versionId: string }[]).map((b) => b.versionId),
      [stored.versionId],
    );
    const status = await runCli(["--config", cfg, "status", "--json"]);
    assert.equal(status.code, 0, status.stderr);
    assert.equal(
      (JSON.parse(status.stdout) as { jobs: { lastRun: { status: string } }[] }).jobs[0]?.lastRun
        .status,
      "succeeded",
    );
    const out = join(dir, "restored");
    const restore = await runCli(["--config", cfg, "restore", "files", "--to", out]);
    assert.equal(restore.code, 0, restore.stderr);
    assert.equal(readFileSync(join(out, data, "a.txt"), "utf8"), "alpha\n");

    const backup = await runCli(["--config", cfg, "backup"]);
    assert.equal(backup.code, 78, backup.stderr);
    assert.match(
      backup.stderr,
      new RegExp(`immutd: catalog ${ro}/catalog.db is read-only \\(.*EROFS\\)`),
    );
    assert.equal((await versions()).length, 2, "nothing was uploaded (one archive, its manifest)");
    const verify = await runCli(["--config", cfg, "verify"]);
    assert.equal(verify.code, 78, verify.stderr);
    assert.match(verify.stderr, /immutd: catalog .* is read-only \(.*EROFS.*\): verify records/);
  });

  it("restore --from-bucket works whatever state the catalog is in: damaged, a directory, on /proc, impossible to create", async () => {
    const { dir, config } = await setup("catfb");
    const good = await runCli(["--config", config(join(dir, "state", "catalog.db")), "backup"]);
    assert.equal(good.code, 0, good.stderr);
    const damaged = join(dir, "damaged.db");
    writeFileSync(damaged, Buffer.alloc(8192, 0x41));
    writeFileSync(join(dir, "afile"), "x");
    for (const catalog of [
      damaged,
      dir,
      "/proc/self/mem",
      join(dir, "afile", "sub", "catalog.db"),
    ]) {
      const r = await runCli([
        "--config",
        config(catalog),
        "restore",
        "files",
        "--from-bucket",
        "--list",
      ]);
      assert.equal(r.code, 0, `${catalog}: ${r.stderr}`);
      assert.match(r.stdout, /data\/a\.txt$/m, catalog);
    }
  });

  /** The names in a backup of the job, from `restore --list`. */
  async function archived(cfg: string): Promise<string[]> {
    const r = await runCli(["--config", cfg, "restore", "files", "--list"]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => l.replace(/^.* \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d /, "").replace(/ -> .*$/, ""));
  }

  it("a catalog configured through a symlink that leads inside the backed-up path is not archived", async () => {
    const { data, config } = await setup("catsym");
    // catalog: data/link/catalog.db, where data/link -> data/state: the walk
    // meets the files as data/state/catalog.db*, never under the configured name.
    mkdirSync(join(data, "state"), { mode: 0o700 });
    writeFileSync(join(data, "state", "notes.txt"), "kept\n");
    symlinkSync(join(data, "state"), join(data, "link"));
    const cfg = config(join(data, "link", "catalog.db"));
    const r = await runCli(["--config", cfg, "backup"]);
    assert.equal(r.code, 0, r.stderr);
    const names = await archived(cfg);
    const rel = data.slice(1);
    for (const want of [`${rel}/a.txt`, `${rel}/link`, `${rel}/state/`, `${rel}/state/notes.txt`]) {
      assert.ok(names.includes(want), `${want} is archived: ${names.join(", ")}`);
    }
    assert.deepEqual(
      names.filter((n) => n.includes("catalog.db")),
      [],
      "no catalog file in the archive",
    );
  });

  it("a catalog directory backed up through a symlinked path is not archived", async () => {
    const { dir, config } = await setup("catsym2");
    // The job backs up DIR/alias/state, where DIR/alias -> DIR: the catalog
    // directory itself, under a name the configured catalog path does not have.
    const state = join(dir, "state");
    mkdirSync(state, { mode: 0o700 });
    writeFileSync(join(state, "notes.txt"), "kept\n");
    symlinkSync(dir, join(dir, "alias"));
    const cfg = config(join(state, "catalog.db"), { paths: [join(dir, "alias", "state")] });
    const r = await runCli(["--config", cfg, "backup"]);
    assert.equal(r.code, 0, r.stderr);
    const names = await archived(cfg);
    const rel = join(dir, "alias", "state").slice(1);
    assert.ok(names.includes(`${rel}/notes.txt`), `the directory is archived: ${names.join(", ")}`);
    assert.deepEqual(
      names.filter((n) => n.includes("catalog.db")),
      [],
      "no catalog file in the archive",
    );
  });
});
