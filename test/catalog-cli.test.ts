/**
 * The catalog as an operator meets it when it is not a plain writable file:
 * a directory (`catalog: /tmp`), a special file, a file on /proc, a missing
 * directory, a damaged database, a file that is not writable or not readable.
 * Each must be one line and exit 78 (or work), never a stack trace, a hang or
 * a changed mode. None of these commands reaches the S3 server: the target's
 * endpoint does not exist.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import { DaemonProcess, runCli } from "./support/cli.js";

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;

function setup(catalog: (dir: string) => string) {
  const dir = mkdtempSync(join(tmpdir(), "immutd-catcli-"));
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, "master.key"), `${"ab".repeat(32)}\n`, { mode: 0o644 });
  mkdirSync(join(dir, "data"));
  const path = catalog(dir);
  const cfg = join(dir, "config.yaml");
  writeFileSync(
    cfg,
    `catalog: ${path}
masterKeyFile: ${dir}/master.key
host: catcli
targets:
  offsite:
    endpoint: https://s3.immutd-test.invalid
    bucket: immutd-catcli
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: files
    target: offsite
    schedule: "0 0 1 1 *"
    catchUp: false
    paths: [${dir}/data]
`,
    { mode: 0o644 },
  );
  return { dir, path, cfg };
}

/** stderr without the JSON log lines: what the operator reads as the error. */
function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l !== "" && !l.startsWith("{"));
}

/** Exit 78 with exactly one line matching `re`, no stack, no "unexpected". */
function assertOneLine78(
  r: { code: number | null; signal: NodeJS.Signals | null; stderr: string },
  re: RegExp,
  what: string,
) {
  assert.equal(r.signal, null, `${what}: ended by ${r.signal} (a hang?)`);
  assert.equal(r.code, 78, `${what}: ${r.stderr}`);
  const lines = errorLines(r.stderr);
  assert.equal(lines.length, 1, `${what}: one line, got:\n${r.stderr}`);
  assert.match(lines[0] ?? "", re, what);
  assert.doesNotMatch(r.stderr, /unexpected error|SqliteError|\n\s+at /, what);
}

/** A catalog with one run, then damaged the way a bad disk does: every page but the header's garbled. */
function damagedCatalog(path: string): void {
  const c = Catalog.open(path);
  const runId = c.startRun({
    job: "files",
    target: "offsite",
    objectKey: "k",
    startedAt: new Date(),
  });
  c.finishRun(runId, { status: "succeeded", bytes: 1, files: 1, warnings: 0 });
  c.close();
  const size = statSync(path).size;
  const fd = openSync(path, "r+");
  for (let page = 1; page < size / 4096; page++) {
    writeSync(fd, Buffer.from([0x0d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), 0, 8, page * 4096);
  }
  closeSync(fd);
}

describe("catalog paths and states (CLI)", () => {
  it("catalog: a directory is exit 78 naming it, for every command, and the directory's mode is left alone", async () => {
    // The report: `catalog: /tmp` chmodded the machine's /tmp to 0600.
    const { path, cfg } = setup((dir) => {
      const d = join(dir, "shared-tmp");
      mkdirSync(d);
      chmodSync(d, 0o1777);
      return d;
    });
    for (const args of [["status"], ["list"], ["backup"], ["verify"], ["run"]]) {
      const r = await runCli(["--config", cfg, ...args], { timeoutMs: 30_000 });
      assertOneLine78(r, new RegExp(`catalog ${path} is a directory`), args.join(" "));
      assert.equal(statSync(path).mode & 0o7777, 0o1777, `${args}: mode of ${path} unchanged`);
    }
  });

  it("a special file or a file on /proc or /sys is refused before SQLite opens it (no hang, no chmod)", async () => {
    const fifoSetup = setup((dir) => {
      const f = join(dir, "catalog.fifo");
      execFileSync("mkfifo", ["-m", "0644", f]);
      return f;
    });
    const cases: [string, RegExp][] = [
      ["/dev/null", /catalog \/dev\/null is a character device/],
      [fifoSetup.path, /is a FIFO; it must be a regular file/],
      ["/proc/self/mem", /catalog \/proc\/self\/mem is on a proc filesystem/],
      ["/proc/self/oom_score_adj", /is on a proc filesystem/],
      ["/sys/kernel/immutd-catalog.db", /is on a sysfs filesystem/],
    ];
    for (const [catalog, re] of cases) {
      const { cfg } = catalog === fifoSetup.path ? fifoSetup : setup(() => catalog);
      for (const args of [["status"], ["backup"], ["run"]]) {
        const r = await runCli(["--config", cfg, ...args], { timeoutMs: 20_000 });
        assertOneLine78(r, re, `${catalog} ${args}`);
      }
    }
    assert.equal(statSync(fifoSetup.path).mode & 0o777, 0o644, "the FIFO's mode is left alone");
  });

  it("a missing catalog directory is created 0700 and `immutd run` starts in it (no crash)", async () => {
    const { dir, path, cfg } = setup((d) => join(d, "new", "deeper", "catalog.db"));
    const daemon = new DaemonProcess(["--config", cfg]);
    try {
      await daemon.waitFor((r) => r.msg === "immutd daemon started", 30_000, "daemon start");
      for (const d of [join(dir, "new"), join(dir, "new", "deeper")]) {
        assert.equal(statSync(d).mode & 0o777, 0o700, d);
      }
      assert.equal(statSync(path).mode & 0o777, 0o600);
    } finally {
      daemon.child.kill("SIGTERM");
    }
    const end = await daemon.exited;
    assert.equal(end.code, 0, daemon.stderr);
  });

  it("a catalog directory that cannot be created is exit 78 naming it", async () => {
    const { cfg } = setup((d) => {
      writeFileSync(join(d, "afile"), "x");
      return join(d, "afile", "state", "catalog.db");
    });
    for (const args of [["status"], ["run"]]) {
      const r = await runCli(["--config", cfg, ...args], { timeoutMs: 30_000 });
      assertOneLine78(r, /afile is not a directory/, args.join(" "));
    }
  });

  it("a damaged catalog is one line and exit 78 for every command, pointing to restore --from-bucket", async () => {
    const { path, cfg } = setup((d) => join(d, "state", "catalog.db"));
    mkdirSync(join(path, ".."), { mode: 0o700 });
    damagedCatalog(path);
    const before = readFileSync(path);
    for (const args of [
      ["status"],
      ["list"],
      ["backup"],
      ["verify"],
      ["restore", "files", "--list"],
      ["run"],
    ]) {
      const r = await runCli(["--config", cfg, ...args], { timeoutMs: 30_000 });
      assertOneLine78(
        r,
        new RegExp(`catalog ${path} is damaged \\(SQLite: .+\\).*restore JOB --from-bucket`),
        args.join(" "),
      );
    }
    assert.deepEqual(readFileSync(path), before, "the damaged catalog is left as it was");
  });

  it("a file that is not a SQLite database is exit 78 naming it", async () => {
    const { path, cfg } = setup((d) => join(d, "catalog.db"));
    writeFileSync(path, Buffer.alloc(8192, 0x41), { mode: 0o600 });
    const r = await runCli(["--config", cfg, "list"], { timeoutMs: 30_000 });
    assertOneLine78(r, new RegExp(`catalog ${path} is damaged`), "list");
  });

  it("a catalog file that is not writable (mode 0400) serves list and status; backup refuses out loud", {
    skip: !isRoot && "needs root to run immutd as another user",
  }, async () => {
    const { dir, path, cfg } = setup((d) => join(d, "state", "catalog.db"));
    mkdirSync(join(dir, "state"), { mode: 0o700 });
    const c = Catalog.open(path);
    const runId = c.startRun({
      job: "files",
      target: "offsite",
      objectKey: "k",
      startedAt: new Date("2026-01-01T00:00:00Z"),
    });
    c.finishRun(runId, { status: "succeeded", bytes: 1, files: 1, warnings: 2 });
    c.close();
    chmodSync(path, 0o400);
    for (const f of [dir, join(dir, "state"), path, join(dir, "master.key"), cfg])
      chownSync(f, NOBODY, NOBODY);
    const asNobody = { uid: NOBODY, gid: NOBODY, timeoutMs: 30_000 };

    const status = await runCli(["--config", cfg, "status", "--json"], asNobody);
    assert.equal(status.code, 0, status.stderr);
    const [row] = (
      JSON.parse(status.stdout) as { jobs: { lastRun: { status: string; warnings: number } }[] }
    ).jobs;
    assert.deepEqual(row?.lastRun.status, "succeeded");
    assert.equal(row?.lastRun.warnings, 2);
    assert.match(status.stderr, /cannot be written .*is not writable: EACCES/);
    const list = await runCli(["--config", cfg, "list"], asNobody);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /no backups yet/);

    const backup = await runCli(["--config", cfg, "backup"], asNobody);
    assertOneLine78(
      backup,
      new RegExp(`catalog ${path} is read-only .*list, status and restore`),
      "backup",
    );
    assert.equal(statSync(path).mode & 0o777, 0o400, "mode left alone");
  });

  it("a catalog this user cannot read is exit 78 naming it and its owner", {
    skip: !isRoot && "needs root to run immutd as another user",
  }, async () => {
    const { dir, path, cfg } = setup((d) => join(d, "catalog.db"));
    Catalog.open(path).close(); // root's, 0600
    chownSync(dir, NOBODY, NOBODY);
    for (const f of [join(dir, "master.key"), cfg]) chownSync(f, NOBODY, NOBODY);
    const r = await runCli(["--config", cfg, "status"], {
      uid: NOBODY,
      gid: NOBODY,
      timeoutMs: 30_000,
    });
    assertOneLine78(r, new RegExp(`cannot read catalog ${path}: EACCES.*uid 0`), "status");
  });
});
