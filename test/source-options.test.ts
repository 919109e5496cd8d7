/**
 * The source options of a job (issue 16, point 4) without an S3 server:
 * oneFileSystem (a real tmpfs and a real proc mount inside the tree),
 * excludeIfPresent, excludeFrom (config load, hostile pattern files), jobs
 * without schedule (schedule decisions, the daemon, status), and the walk's dry
 * mode behind `immutd backup --dry-run` (in-process and through the CLI).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Readable } from "node:stream";
import { Writable } from "node:stream";
import { after, describe, it } from "node:test";
import { extract } from "tar-stream";
import { jobExcludes, loadConfig, parseConfig } from "../src/config/config.js";
import { missedRun, nextRun } from "../src/config/schedule.js";
import { Daemon } from "../src/daemon/daemon.js";
import { ConfigError } from "../src/errors.js";
import { createLogger } from "../src/log.js";
import {
  type ArchiveOptions,
  createArchive,
  type ListedEntry,
  type SkipReport,
} from "../src/pipeline/archive.js";
import { compileExcludeIndex, compileExcludes } from "../src/pipeline/exclude.js";
import { MemoryBucket } from "../src/store/memory.js";
import { runCli } from "./support/cli.js";

const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

function tmpDir(label: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `immutd-src-${label}-`));
  fs.chmodSync(d, 0o755);
  return d;
}

function write(p: string, content: string | Buffer = "x"): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
}

async function names(stream: Readable): Promise<string[]> {
  const ex = extract();
  const out: string[] = [];
  const done = (async () => {
    for await (const entry of ex) {
      out.push(entry.header.name);
      entry.resume();
    }
  })();
  stream.pipe(ex);
  await done;
  return out;
}

/** Archives for real and returns the tar's entry names, what onSkip and onListed reported, and the result. */
async function walk(opts: ArchiveOptions) {
  const skips: SkipReport[] = [];
  const listed: ListedEntry[] = [];
  const a = createArchive({
    ...opts,
    onSkip: (s) => skips.push(s),
    onListed: (e) => listed.push(e),
  });
  const entries = await names(a.stream);
  const result = await a.done;
  return { entries, skips, listed, result };
}

const rel = (top: string) => (abs: string) => abs.slice(1).replace(top.slice(1), "T");

describe("oneFileSystem", { skip: !isRoot && "needs root to mount" }, () => {
  const mounts: string[] = [];
  after(() => {
    for (const m of mounts.reverse()) execFileSync("umount", ["-l", m]);
  });

  it("keeps a tmpfs mount point as an empty directory and does not descend into it; without the option it does", async () => {
    const top = tmpDir("xdev");
    write(path.join(top, "a.txt"), "a");
    const mnt = path.join(top, "mnt");
    fs.mkdirSync(mnt);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt]);
    mounts.push(mnt);
    write(path.join(mnt, "inside", "deep.txt"), "on another device");
    write(path.join(top, "z", "after.txt"), "z"); // the walk goes on after the mount point

    const one = await walk({ paths: [top], oneFileSystem: true });
    const r = rel(top);
    assert.deepEqual(
      one.entries.map((n) => r(`/${n}`)),
      ["T/", "T/a.txt", "T/mnt/", "T/z/", "T/z/after.txt"],
    );
    assert.deepEqual(one.skips, [{ path: mnt, rule: "oneFileSystem" }]);

    const all = await walk({ paths: [top] });
    assert.ok(
      all.entries.some((n) => n.endsWith("mnt/inside/deep.txt")),
      "control: the walk crosses without the option",
    );
  });

  it("a configured path on another device is walked (the device is that of the path the entry is under)", async () => {
    const top = tmpDir("xdev-top");
    const mnt = path.join(top, "m");
    fs.mkdirSync(mnt);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt]);
    mounts.push(mnt);
    write(path.join(mnt, "sub", "f"), "f");
    const { entries } = await walk({ paths: [mnt], oneFileSystem: true });
    assert.deepEqual(
      entries.map((n) => rel(top)(`/${n}`)),
      ["T/m/", "T/m/sub/", "T/m/sub/f"],
    );
  });

  it("a tree with a proc mount inside (as / has /proc) keeps only the mount point", async () => {
    const top = tmpDir("proc");
    fs.mkdirSync(path.join(top, "proc"));
    execFileSync("mount", ["-t", "proc", "proc", path.join(top, "proc")]);
    mounts.push(path.join(top, "proc"));
    write(path.join(top, "etc", "hostname"), "h\n");
    const { entries, result } = await walk({ paths: [top], oneFileSystem: true });
    assert.deepEqual(
      entries.map((n) => rel(top)(`/${n}`)),
      ["T/", "T/etc/", "T/etc/hostname", "T/proc/"],
    );
    assert.equal(result.warnings, 0);
  });
});

describe("excludeIfPresent", () => {
  // Decision (GNU tar --exclude-tag, not restic --exclude-if-present): the
  // directory entry and the marker stay, so a restore shows where something was
  // deliberately left out and keeps the marker for the next backup.
  it("keeps the directory and its marker, drops everything else in it, and reports each dropped entry", async () => {
    const top = tmpDir("marker");
    write(path.join(top, "keep", "a"), "a");
    write(path.join(top, "cache", ".nobackup"), "");
    write(path.join(top, "cache", "big"), randomBytes(1000));
    write(path.join(top, "cache", "sub", "deeper"), "d");
    write(path.join(top, "cache2", "CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55");
    write(path.join(top, "cache2", "x"), "x");
    const { entries, skips } = await walk({
      paths: [top],
      excludeIfPresent: [".nobackup", "CACHEDIR.TAG"],
    });
    const r = rel(top);
    assert.deepEqual(
      entries.map((n) => r(`/${n}`)),
      [
        "T/",
        "T/cache/",
        "T/cache/.nobackup",
        "T/cache2/",
        "T/cache2/CACHEDIR.TAG",
        "T/keep/",
        "T/keep/a",
      ],
    );
    assert.deepEqual(
      skips.map((s) => [r(s.path), s.rule]),
      [
        ["T/cache/big", 'excludeIfPresent ".nobackup"'],
        ["T/cache/sub", 'excludeIfPresent ".nobackup"'],
        ["T/cache2/x", 'excludeIfPresent "CACHEDIR.TAG"'],
      ],
    );
  });

  it("a symlink marker counts, even dangling; a directory of that name does not; an excluded marker is left out too", async () => {
    const top = tmpDir("marker-kinds");
    fs.mkdirSync(path.join(top, "linked"));
    fs.symlinkSync("/nonexistent", path.join(top, "linked", ".nobackup"));
    write(path.join(top, "linked", "data"), "d");
    write(path.join(top, "dirmarker", ".nobackup", "inside"), "i");
    write(path.join(top, "dirmarker", "data"), "d");
    write(path.join(top, "hidden", ".nobackup"), "");
    write(path.join(top, "hidden", "data"), "d");
    const { entries } = await walk({
      paths: [top],
      excludeIfPresent: [".nobackup"],
      exclude: ["/**/hidden/.nobackup"],
    });
    const got = entries.map((n) => rel(top)(`/${n}`));
    assert.deepEqual(got, [
      "T/",
      "T/dirmarker/",
      "T/dirmarker/.nobackup/",
      "T/dirmarker/.nobackup/inside",
      "T/dirmarker/data",
      "T/hidden/",
      "T/linked/",
      "T/linked/.nobackup",
    ]);
  });

  it("a configured path holding a marker keeps only itself and the marker", async () => {
    const top = tmpDir("marker-top");
    write(path.join(top, ".nobackup"), "");
    write(path.join(top, "f"), "f");
    const { entries } = await walk({ paths: [top], excludeIfPresent: [".nobackup"] });
    assert.deepEqual(
      entries.map((n) => rel(top)(`/${n}`)),
      ["T/", "T/.nobackup"],
    );
  });
});

describe("exclude patterns: which one matched, and long lists", () => {
  it("reports the first matching pattern's index, literal and glob patterns alike", () => {
    const which = compileExcludeIndex(["*.log", "cache", "/srv/x", "build/", "/srv/**/*.tmp"]);
    assert.equal(which("/a/b.log", false), 0);
    assert.equal(which("/a/cache", false), 1);
    assert.equal(which("/srv/x", true), 2);
    assert.equal(which("/a/build", false), -1, "dir-only literal skips files");
    assert.equal(which("/a/build", true), 3);
    assert.equal(which("/srv/a/b.tmp", false), 4);
    assert.equal(which("/srv/a/b", false), -1);
    // A glob listed before a literal wins, as the first pattern does.
    const order = compileExcludeIndex(["c*", "cache"]);
    assert.equal(order("/cache", false), 0);
    const order2 = compileExcludeIndex(["cache", "c*"]);
    assert.equal(order2("/cache", false), 0);
    assert.equal(order2("/cx", false), 1);
  });

  it("a literal pattern matches exactly what the glob matcher matched before (escaped names stay globs)", () => {
    const patterns = ["node_modules", "/var/tmp", "a\\*b", ".git/"];
    const m = compileExcludes(patterns);
    assert.equal(m("/x/node_modules", true), true);
    assert.equal(m("/x/node_modulesX", true), false);
    assert.equal(m("/var/tmp", false), true);
    assert.equal(m("/var/tmp/x", false), false);
    assert.equal(m("/x/a*b", false), true);
    assert.equal(m("/x/axb", false), false);
    assert.equal(m("/x/.git", false), false);
    assert.equal(m("/x/.git", true), true);
  });

  it("100,000 literal patterns compile and match 20,000 paths without trying each pattern per path", () => {
    const patterns = Array.from({ length: 100_000 }, (_, i) => `/data/f${i}`);
    patterns.push("*.never");
    const which = compileExcludeIndex(patterns);
    let hits = 0;
    for (let i = 0; i < 20_000; i++) if (which(`/data/f${i * 7}`, false) >= 0) hits++;
    assert.equal(hits, Math.ceil(100_000 / 7)); // i*7 < 100,000
    assert.equal(which("/data/f99999", false), 99_999);
    assert.equal(which("/data/x.never", false), 100_000);
  });
});

const dir = tmpDir("config");
const keyFile = path.join(dir, "master.key");
fs.writeFileSync(keyFile, `${"ab".repeat(32)}\n`, { mode: 0o600 });

function configText(job: string, schedule = '    schedule: "0 3 * * *"\n'): string {
  return `catalog: ${dir}/catalog.db
masterKeyFile: ${keyFile}
host: src
targets:
  offsite:
    endpoint: https://s3.immutd-test.invalid
    bucket: bkt-src
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: web
    target: offsite
${schedule}${job}`;
}

function problem(job: string): string {
  try {
    parseConfig(configText(job), "/x/config.yaml");
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    assert.equal(err.exitCode, 78);
    return err.message;
  }
  assert.fail("config was accepted");
}

describe("config: source options", () => {
  it("reads excludeFrom files (comments, blank lines, CRLF, surrounding blanks) after the job's own excludes", () => {
    const f1 = path.join(dir, "ex1");
    fs.writeFileSync(f1, "# caches\n\n*.tmp\r\n  /srv/cache/**  \n#/not/this\n");
    const f2 = path.join(dir, "ex2");
    fs.writeFileSync(f2, "node_modules\n");
    const { config } = parseConfig(
      configText(`    paths: [/srv]
    exclude: ["*.swp"]
    excludeFrom: [${f1}, ${f2}]
    excludeIfPresent: .nobackup
    oneFileSystem: true
`),
      "/x/config.yaml",
    );
    const job = config.jobs[0];
    assert.ok(job);
    assert.deepEqual(jobExcludes(job), ["*.swp", "*.tmp", "/srv/cache/**", "node_modules"]);
    assert.deepEqual(job.excludeIfPresent, [".nobackup"]);
    assert.equal(job.oneFileSystem, true);
    assert.equal(job.schedule, "0 3 * * *");
    const single = parseConfig(
      configText(`    paths: [/srv]\n    excludeFrom: ${f2}\n    excludeIfPresent: [a, b]\n`),
      "/x/config.yaml",
    ).config.jobs[0];
    assert.deepEqual(single?.excludeFrom, [{ file: f2, patterns: ["node_modules"] }]);
    assert.deepEqual(single?.excludeIfPresent, ["a", "b"]);
    assert.equal(single?.oneFileSystem, false);
  });

  it("a missing, directory, endless (/dev/zero), binary or bad-pattern file is a config error naming the file and the job", () => {
    const missing = problem(`    paths: [/srv]\n    excludeFrom: ${dir}/nope\n`);
    assert.match(missing, /job web: excludeFrom: cannot read .*\/nope: ENOENT/);
    assert.doesNotMatch(missing, /\n/);
    assert.match(
      problem(`    paths: [/srv]\n    excludeFrom: ${dir}\n`),
      /job web: excludeFrom: cannot read .*: EISDIR/,
    );
    assert.match(
      problem(`    paths: [/srv]\n    excludeFrom: /dev/zero\n`),
      /job web: excludeFrom: \/dev\/zero is larger than 16 MiB/,
    );
    const bin = path.join(dir, "bin");
    fs.writeFileSync(bin, Buffer.from([0x2a, 0, 0xff]));
    assert.match(problem(`    paths: [/srv]\n    excludeFrom: ${bin}\n`), /is not UTF-8 text/);
    const bad = path.join(dir, "bad");
    fs.writeFileSync(bad, "ok\n\n!negated\n");
    assert.match(
      problem(`    paths: [/srv]\n    excludeFrom: ${bad}\n`),
      /job web: excludeFrom: .*\/bad line 3: exclude pattern "!negated": negation/,
    );
    assert.match(problem(`    paths: [/srv]\n    excludeFrom: relative.txt\n`), /absolute path/);
  });

  it("an excludeFrom file of 100,000 lines loads (hang detection only, no timing)", {
    timeout: 60_000,
  }, () => {
    const big = path.join(dir, "big");
    const lines: string[] = [];
    for (let i = 0; i < 100_000; i++) lines.push(i % 10 === 0 ? `# c${i}` : `/srv/f${i}`);
    fs.writeFileSync(big, lines.join("\n"));
    const job = parseConfig(configText(`    paths: [/srv]\n    excludeFrom: ${big}\n`), "/x/c.yaml")
      .config.jobs[0];
    assert.equal(job?.excludeFrom[0]?.patterns.length, 90_000);
  });

  it("excludeIfPresent takes file names only", () => {
    assert.match(
      problem(`    paths: [/srv]\n    excludeIfPresent: a/b\n`),
      /excludeIfPresent.*file name/,
    );
    assert.match(problem(`    paths: [/srv]\n    excludeIfPresent: [ok, ".."]\n`), /file name/);
  });

  it("a job without schedule is manual-only: no next run, never missed (so catch-up never starts it)", () => {
    const { config } = parseConfig(configText("    paths: [/srv]\n", ""), "/x/config.yaml");
    const job = config.jobs[0];
    assert.ok(job);
    assert.equal(job.schedule, undefined);
    assert.equal(nextRun(job, new Date()), null);
    assert.equal(missedRun(job, undefined, new Date()), false);
    assert.equal(job.catchUp, true, "the default stays; it just never applies");
  });
});

describe("dry run (walker)", () => {
  it("onListed names an extra file (a spooled command output) by its archive name, not its spool path", async () => {
    const top = tmpDir("extra");
    const spool = path.join(tmpDir("spool"), "out");
    fs.writeFileSync(spool, "dump");
    const { listed, entries } = await walk({
      paths: [top],
      extraFiles: [{ name: "immutd-commands/app.sql", path: spool }],
    });
    assert.deepEqual(listed[0], { path: "/immutd-commands/app.sql", type: "file", size: 4 });
    assert.equal(entries[0], "immutd-commands/app.sql");
  });

  it("lists exactly the entries a real archive holds, with lstat sizes, and writes no tar entry", async () => {
    const top = tmpDir("dry");
    write(path.join(top, "a", "one"), randomBytes(3000));
    write(path.join(top, "a", "big"), randomBytes(600_000));
    write(path.join(top, "a", "x.swp"), "s");
    fs.linkSync(path.join(top, "a", "one"), path.join(top, "hard"));
    fs.symlinkSync("a/one", path.join(top, "sym"));
    write(path.join(top, "c", ".nobackup"), "");
    write(path.join(top, "c", "junk"), "j");
    const opts: ArchiveOptions = {
      paths: [top],
      exclude: ["*.swp"],
      excludeIfPresent: [".nobackup"],
    };
    const real = await walk(opts);
    const dry = await walk({ ...opts, dryRun: true });
    assert.deepEqual(dry.entries, [], "a dry run wrote tar entries");
    assert.deepEqual(dry.listed, real.listed);
    assert.deepEqual(dry.skips, real.skips);
    assert.deepEqual(
      real.listed.map((e) => `${e.path.slice(1)}${e.type === "directory" ? "/" : ""}`),
      real.entries,
    );
    assert.equal(dry.result.bytes, 603_000); // the hard link and the marker add no content
    assert.equal(dry.result.bytes, real.result.bytes);
    assert.equal(dry.result.files, 4); // one, big, hard (link), .nobackup
  });
});

/** A config over `tree` whose target does not exist: nothing here may reach a server. */
function cliSetup(extraJob = "") {
  const d = tmpDir("cli");
  const tree = path.join(d, "tree");
  write(path.join(tree, "keep.txt"), "keep me\n");
  write(path.join(tree, "x.log"), "log");
  write(path.join(tree, "y.log"), "log");
  write(path.join(tree, "cache", ".nobackup"), "");
  write(path.join(tree, "cache", "blob"), randomBytes(2048));
  write(path.join(tree, "sub", "data.bin"), randomBytes(1024));
  fs.writeFileSync(path.join(d, "master.key"), `${"cd".repeat(32)}\n`, { mode: 0o644 });
  fs.writeFileSync(path.join(d, "patterns"), "# logs\n*.log\n");
  const cfg = path.join(d, "config.yaml");
  fs.writeFileSync(
    cfg,
    `catalog: ${d}/catalog.db
masterKeyFile: ${d}/master.key
host: dry
targets:
  offsite:
    endpoint: https://s3.immutd-test.invalid
    bucket: bkt-src
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: files
    target: offsite
    paths: [${tree}]
    excludeFrom: ${d}/patterns
    excludeIfPresent: .nobackup
    hooks: { before: "touch ${d}/hook-ran" }
    commands: [{ name: dump.sql, run: "touch ${d}/command-ran" }]
${extraJob}`,
    { mode: 0o644 },
  );
  return { d, tree, cfg };
}

describe("immutd backup --dry-run (CLI)", () => {
  it("prints entries, bytes and the excludes table; runs no hook or command, opens no catalog, uploads nothing; exit 0", async () => {
    const { d, tree, cfg } = cliSetup();
    const r = await runCli(["--config", cfg, "backup", "--dry-run"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^files: would archive 6 entries \(3 files, 3 directories, 0 symlinks\), 1\.0 KiB before compression$/m,
    );
    assert.match(r.stdout, /commands not run \(their output is not counted\): dump\.sql/);
    assert.match(r.stdout, /LEFT OUT BY\s+ENTRIES/);
    assert.match(r.stdout, /exclude "\*\.log"\s+2$/m);
    assert.match(r.stdout, /excludeIfPresent "\.nobackup"\s+1$/m);
    assert.equal(fs.existsSync(path.join(d, "hook-ran")), false, "the before hook ran");
    assert.equal(fs.existsSync(path.join(d, "command-ran")), false, "a command ran");
    assert.equal(fs.existsSync(path.join(d, "catalog.db")), false, "the catalog was opened");
    assert.doesNotMatch(
      r.stdout,
      new RegExp(tree.replace(/[/.]/g, "\\$&")),
      "paths without --list",
    );

    const listed = await runCli(["--config", cfg, "backup", "--dry-run", "--list", "files"]);
    assert.equal(listed.code, 0, listed.stderr);
    const paths = listed.stdout.split("\n").filter((l) => l.startsWith("/"));
    assert.deepEqual(paths, [
      `${tree}/`,
      `${tree}/cache/`,
      `${tree}/cache/.nobackup`,
      `${tree}/keep.txt`,
      `${tree}/sub/`,
      `${tree}/sub/data.bin`,
    ]);
  });

  it("--list without --dry-run is a usage error; an unknown job exits 2; a missing path exits 3", async () => {
    const { cfg, tree } = cliSetup();
    const usage = await runCli(["--config", cfg, "backup", "--list"]);
    assert.equal(usage.code, 2, usage.stderr);
    assert.match(usage.stderr, /--list needs --dry-run/);
    assert.equal((await runCli(["--config", cfg, "backup", "--dry-run", "nope"])).code, 2);
    fs.rmSync(tree, { recursive: true });
    const gone = await runCli(["--config", cfg, "backup", "--dry-run"]);
    assert.equal(gone.code, 3, gone.stderr);
    assert.match(
      gone.stdout,
      /files: dry run: configured path .* does not exist; a backup would fail/,
    );
  });

  it("an unreadable directory is a warning: exit 5 (run as nobody)", {
    skip: !isRoot && "needs root",
  }, async () => {
    const { d, tree, cfg } = cliSetup();
    for (const p of [d, tree, path.join(tree, "sub"), path.join(tree, "cache")])
      fs.chmodSync(p, 0o755);
    for (const f of ["keep.txt", "x.log", "y.log", "cache/.nobackup", "cache/blob", "sub/data.bin"])
      fs.chmodSync(path.join(tree, f), 0o644);
    fs.chmodSync(path.join(tree, "sub"), 0o700);
    const r = await runCli(["--config", cfg, "--log-format", "json", "backup", "--dry-run"], {
      uid: NOBODY,
      gid: NOBODY,
    });
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stdout, /files: would archive 5 entries .*, 1 warning$/m);
    assert.match(r.stderr, /cannot read directory/);
  });

  it("status shows a job without schedule as manual", async () => {
    const { cfg } = cliSetup("  - name: adhoc\n    target: offsite\n    paths: [/etc]\n");
    const text = fs
      .readFileSync(cfg, "utf8")
      .replace(/(name: files\n\s+target: offsite\n)/, '$1    schedule: "0 3 * * *"\n');
    fs.writeFileSync(cfg, text);
    const r = await runCli(["--config", cfg, "status"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^adhoc\s+never\s+-\s+never\s+manual\s+-$/m);
    assert.doesNotMatch(r.stdout, /^files.*manual$/m);
    const check = await runCli(["--config", cfg, "config", "check"]);
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, /\/patterns \(1 patterns\)/, "config check names the pattern file");
    assert.doesNotMatch(check.stdout, /\*\.log/, "config check dumps the patterns of a file");
  });
});

describe("daemon: a job without schedule", () => {
  it("is neither scheduled nor caught up, says so at start, and still runs when triggered", {
    timeout: 60_000,
  }, async () => {
    const { d, cfg } = cliSetup();
    const records: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString().split("\n").filter(Boolean))
          records.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    });
    // No hooks or commands for this one: only the scheduling is under test.
    fs.writeFileSync(
      cfg,
      fs.readFileSync(cfg, "utf8").replace(/\s+hooks:.*\n\s+commands:.*\n/, "\n"),
    );
    const config = loadConfig(cfg).config;
    assert.equal(config.jobs[0]?.schedule, undefined);
    assert.equal(config.jobs[0]?.catchUp, true);
    const bucket = new MemoryBucket("b");
    const daemon = new Daemon({
      configFile: cfg,
      config,
      log: createLogger({ level: "info", destination }),
      openTarget: () => bucket.target("b"),
    });
    await daemon.start();
    try {
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(
        records.some(
          (r) =>
            r.msg === "job files has no schedule: manual only, run it with immutd backup files",
        ),
        JSON.stringify(records.map((r) => r.msg)),
      );
      assert.equal(
        records.some((r) => r.msg === "catching up on a missed run"),
        false,
      );
      assert.equal(bucket.versions.length, 0, "the daemon ran a manual-only job by itself");
      daemon.trigger("files", "test");
      while (!records.some((r) => r.msg === "backup succeeded"))
        await new Promise((r) => setTimeout(r, 50));
      // the archive and its manifest
      assert.deepEqual(
        bucket.versions.map((v) => /\.manifest\.json\.gz$/.test(v.key)),
        [false, true],
      );
    } finally {
      await daemon.stop("test over");
    }
    assert.ok(fs.existsSync(d));
  });
});
