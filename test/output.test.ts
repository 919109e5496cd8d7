/**
 * The output helpers every command shares (src/cli/output.ts) and the
 * progress line's text (src/cli/progress.ts progressText), without I/O:
 * plurals, the --json error document, where a failure is reported, and what
 * a progress frame says with and without a total; and, through the CLI, what
 * a stdout closed by its reader or on a full disk does.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { EventEmitter } from "node:events";
import { openSync } from "node:fs";
import { afterEach, describe, it } from "node:test";
import {
  errorDocument,
  handleStdoutErrors,
  markShown,
  plural,
  reportFailure,
  resetOutput,
  setJsonMode,
  writeJson,
} from "../src/cli/output.js";
import { ProgressLine, progressText } from "../src/cli/progress.js";
import { ConfigError, JobsFailedError, UsageError } from "../src/errors.js";
import { CLI } from "./support/cli.js";

function capture() {
  const out = { stdout: "", stderr: "" };
  return {
    out,
    write: {
      stdout: (s: string) => {
        out.stdout += s;
        return true;
      },
      stderr: (s: string) => {
        out.stderr += s;
        return true;
      },
    },
  };
}

describe("plural", () => {
  it("says 1 file, 0 files, 2 files and 1,204 entries", () => {
    assert.equal(plural(1, "file"), "1 file");
    assert.equal(plural(0, "file"), "0 files");
    assert.equal(plural(2, "file"), "2 files");
    assert.equal(plural(1204, "entry", "entries"), "1,204 entries");
    assert.equal(plural(1, "entry", "entries"), "1 entry");
  });
});

describe("failures and --json", () => {
  afterEach(() => resetOutput());

  it("without --json: the message on stderr, nothing on stdout, the kind's exit code", () => {
    const c = capture();
    assert.equal(reportFailure(new UsageError("unknown job x"), c.write), 2);
    assert.equal(c.out.stdout, "");
    assert.equal(c.out.stderr, "immutd: unknown job x\n");
  });

  it("with --json: one error document on stdout and nothing on stderr", () => {
    setJsonMode(true);
    const c = capture();
    assert.equal(reportFailure(new ConfigError("bad key jobs.0.pathz"), c.write), 78);
    assert.deepEqual(JSON.parse(c.out.stdout), {
      error: { type: "ConfigError", message: "bad key jobs.0.pathz", exitCode: 78 },
    });
    assert.equal(c.out.stderr, "");
  });

  it("with --json after the command wrote its document: no second document", () => {
    setJsonMode(true);
    const doc = capture();
    writeJson({ findings: [1] }, { write: (s: string) => doc.write.stdout(s) } as never);
    const c = capture();
    assert.equal(reportFailure(new JobsFailedError("1 of 1 job did not succeed"), c.write), 3);
    assert.equal(c.out.stdout, "");
    assert.deepEqual(JSON.parse(doc.out.stdout), { findings: [1] });
  });

  it("an unexpected error is a document too, marked as such", () => {
    const d = errorDocument(new TypeError("x is undefined"));
    assert.equal(d.error.type, "TypeError");
    assert.equal(d.error.exitCode, 1);
    assert.match(d.error.message, /^unexpected error: /);
  });

  it("a failure the command already showed in full is not repeated", () => {
    const c = capture();
    assert.equal(reportFailure(markShown(new JobsFailedError("shown")), c.write), 3);
    assert.equal(c.out.stderr, "");
  });
});

describe("progressText", () => {
  const MiB = 1024 * 1024;

  it("with a total: percent, bytes of the total, rate, files of the total, ETA, the current file", () => {
    const t = progressText(
      "etc",
      { bytes: 25 * MiB, files: 10, current: "/etc/ssl/certs/ca.pem" },
      { bytes: 100 * MiB, files: 40 },
      5000,
      200,
    );
    assert.equal(
      t,
      "etc: 25% 25.0 MiB of 100.0 MiB  5.0 MiB/s  10 of 40 files  ETA 15s  /etc/ssl/certs/ca.pem",
    );
  });

  it("an estimate is marked ~, percent follows files when only they are known", () => {
    const t = progressText("etc", { bytes: MiB, files: 1 }, { files: 4, estimate: true }, 2000);
    assert.match(t, /^etc: ~25% 1\.0 MiB {2}512\.0 KiB\/s {2}1 of ~4 files {2}ETA 6s$/);
  });

  it("never 100% before the end, even past an estimate; counts beyond it raise the total shown", () => {
    const t = progressText(
      "x",
      { bytes: 12, files: 5 },
      { bytes: 10, files: 4, estimate: true },
      3000,
    );
    assert.match(t, /^x: ~99% 12 B of ~12 B .* 5 of ~5 files/);
  });

  it("without a total: no percent and no ETA, the time so far; 1 file in the singular", () => {
    const t = progressText("x", { bytes: 0, files: 1 }, {}, 1500);
    assert.equal(t, "x: 0 B  0 B/s  1 file  1.5s");
  });

  it("no ETA in the first second (no rate yet)", () => {
    const t = progressText("x", { bytes: 10 }, { bytes: 100 }, 500);
    assert.doesNotMatch(t, /ETA/);
    assert.match(t, /^x: 10% /);
  });

  it("counts of another noun (verify's backups), without bytes", () => {
    const t = progressText("verify", { files: 1 }, { files: 1, noun: ["backup", "backups"] }, 100);
    assert.match(t, /^verify: 99% {2}1 of 1 backup {2}0\.1s$/);
  });

  it("fits the terminal: the current file is shortened from the left", () => {
    const long = `/srv/${"deep/".repeat(30)}name.txt`;
    const t = progressText("j", { bytes: 1, files: 0, current: long }, {}, 100, 60);
    assert.ok(t.length <= 59, t);
    assert.match(t, /…[^ ]*name\.txt$/);
  });

  it("a ProgressLine that is not at a terminal writes nothing", () => {
    let written = "";
    const out = {
      isTTY: false,
      write: (s: string) => (written += s),
    } as unknown as NodeJS.WriteStream;
    const p = new ProgressLine("x", out);
    p.setTotal({ bytes: 10 });
    p.update({ bytes: 5 }, true);
    p.clear();
    assert.equal(written, "");
    assert.equal(p.enabled, false);
  });

  it("at a terminal it redraws the line in place and clears it", () => {
    let written = "";
    let now = 0;
    const out = { isTTY: true, columns: 100, write: (s: string) => (written += s) };
    const p = new ProgressLine("x", out as unknown as NodeJS.WriteStream, true, () => now);
    p.setTotal({ bytes: 100 });
    now = 2000;
    p.update({ bytes: 50 });
    now = 2100;
    p.update({ bytes: 60 }); // within 250 ms: not drawn
    p.clear();
    assert.equal(written, "\r\x1b[2Kx: 50% 50 B of 100 B  25 B/s  ETA 2s\r\x1b[2K");
  });
});

describe("write errors on stdout", () => {
  /** A stdout stand-in: an emitter with the given number of other 'error' listeners. */
  function stdoutWith(others: number) {
    const out = new EventEmitter();
    for (let i = 0; i < others; i++) out.on("error", () => {});
    const exits: number[] = [];
    const said: string[] = [];
    handleStdoutErrors(
      out,
      (c) => exits.push(c),
      (l) => said.push(l),
    );
    const fail = (code: string) =>
      out.emit("error", Object.assign(new Error(`${code}: failed, write`), { code }));
    return { fail, exits, said };
  }

  it("takes EPIPE quietly, and any other error as one line and exit 1", () => {
    const closed = stdoutWith(0);
    closed.fail("EPIPE");
    assert.deepEqual([closed.exits, closed.said], [[], []]);
    const full = stdoutWith(0);
    full.fail("ENOSPC");
    assert.deepEqual(full.exits, [1]);
    assert.deepEqual(full.said, ["immutd: cannot write to stdout: ENOSPC: failed, write\n"]);
  });

  it("stays out when a stage writing to stdout handles its own errors", () => {
    const restore = stdoutWith(1);
    restore.fail("ENOSPC");
    restore.fail("EPIPE");
    assert.deepEqual([restore.exits, restore.said], [[], []]);
  });

  it("the CLI: --help into a pipe already closed exits 0 without a stack trace; man into a full disk exits 1", () => {
    // `true` exits at once, closing the pipe before immutd (300 ms to start) writes to it.
    const closed = spawnSync(
      "bash",
      ["-c", `"$0" "$1" --help | true; echo "\${PIPESTATUS[0]}"`, process.execPath, CLI],
      { encoding: "utf8" },
    );
    assert.equal(closed.stdout.trim(), "0", closed.stderr);
    assert.equal(closed.stderr, "");
    const full = spawnSync(process.execPath, [CLI, "man"], {
      encoding: "utf8",
      stdio: ["ignore", openSync("/dev/full", "w"), "pipe"],
    });
    assert.equal(full.status, 1, full.stderr);
    assert.match(full.stderr, /^immutd: cannot write to stdout: ENOSPC/m);
  });
});
