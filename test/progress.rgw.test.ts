/**
 * The progress display as an operator sees it, in a real terminal: the CLI
 * runs under script(1), which gives it a pty for stdin, stdout and stderr,
 * against the real Ceph RGW. The upload is held (test/support/hold-s3.ts) on
 * its first part until the test lets it go, so the run lasts long enough for
 * a time left to be shown whatever the machine's speed; nothing is timed.
 *
 * Checked: the last frame before the line is cleared shows the percent of a
 * known total, the ETA and the current file (a hostile name escaped, never
 * sent raw to the terminal); a run without a terminal writes
 * no progress at all (no carriage return, nothing on stdout); Ctrl-C at the
 * terminal says each fact once.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CLI, runCli } from "./support/cli.js";
import { HOLD_MARK, holdEnv } from "./support/hold-s3.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const MiB = 1024 * 1024;
/** Clears the screen and sets the window title if a terminal is sent it raw. */
const EVIL = "large\x1b[2J\x1b]0;pwned\x07.bin";

/**
 * A CLI run inside a pty (script -q: no banner; -e: its exit code; -f: flushed at once).
 * script runs the command through $SHELL -c; `exec` replaces that shell with immutd, so the
 * exit code is immutd's own whatever the shell. Without it, dash (Debian's /bin/sh, which
 * script uses where SHELL is unset) stays as immutd's parent, takes the Ctrl-C as well and
 * reports 130 after immutd exited 3.
 */
class TerminalRun {
  readonly child: ChildProcess;
  screen = "";
  readonly exited: Promise<number | null>;
  constructor(args: string[], env: NodeJS.ProcessEnv) {
    const cmd = [process.execPath, CLI, ...args].map((a) => `'${a.replaceAll("'", "'\\''")}'`);
    this.child = spawn("script", ["-qfec", `exec ${cmd.join(" ")}`, "/dev/null"], {
      env: { ...process.env, SHELL: "/bin/sh", IMMUTD_CONFIG: "", TERM: "xterm", ...env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child.stdout?.on("data", (d: Buffer) => {
      this.screen += d.toString();
    });
    this.exited = new Promise((resolve) => this.child.on("close", (code) => resolve(code)));
  }
  /** Resolves once `text` has appeared on the terminal (fails after a minute). */
  async waitFor(text: string): Promise<void> {
    for (let i = 0; i < 600 && !this.screen.includes(text); i++) await sleep(100);
    assert.ok(this.screen.includes(text), `never saw ${text}:\n${this.screen}`);
  }
  /** Types at the terminal (Ctrl-C is "\x03": the pty sends SIGINT to the command). */
  type(keys: string): void {
    this.child.stdin?.write(keys);
  }
}

/**
 * The progress frames drawn, in order: each starts with "\r\x1b[2K" and ends
 * where the next begins, without a newline (what follows the last clear, a
 * summary or a log line, ends in one and is no frame). The hold's own mark
 * (test/support/hold-s3.ts writes it straight to stderr, where it lands after
 * whatever frame is on the line) is taken out first: it is the test's, not
 * immutd's, and would otherwise hide the frame it followed.
 */
function frames(screen: string): string[] {
  return screen
    .replace(new RegExp(`${HOLD_MARK}[^\n]*\r?\n`, "g"), "")
    .split("\r\x1b[2K")
    .slice(1)
    .filter((f) => f !== "" && !f.includes("\n"));
}

describe("progress at a terminal (pty, Ceph RGW)", () => {
  let env: S3Env;
  let dir: string;
  let cfg: string;

  before(async () => {
    env = s3env();
    const bucket = uniqueBucket("progress");
    await createLockedBucket(env, bucket, 1);
    dir = mkdtempSync(join(tmpdir(), "immutd-progress-"));
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(data);
    // Large against one 5 MiB part in flight: most of it is read after the hold.
    // Named with terminal control sequences (a hostile file name): the line must
    // show them escaped, never send them to the terminal.
    writeFileSync(join(data, EVIL), randomBytes(40 * MiB));
    writeFileSync(join(data, "small.txt"), "small\n");
    cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/state/catalog.db
masterKeyFile: ${dir}/master.key
host: progress-test
targets:
${targetYaml(env, { bucket, extra: ["partSizeMiB: 5", "queueSize: 1"] })}jobs:
  - name: data
    target: local
    compression: none
    paths: [${data}]
`,
    );
  });

  /** Holds the backup's first part until the returned release is called. */
  function held(label: string) {
    const gate = join(dir, `go-${label}`);
    return {
      env: holdEnv([{ command: "UploadPartCommand", when: "before", gate }]),
      release: () => writeFileSync(gate, ""),
    };
  }

  it("backup: the last frame shows percent of the walked total, ETA and the current file; then one summary", async () => {
    const h = held("tty");
    const t = new TerminalRun(["--config", cfg, "backup", "data"], h.env);
    await t.waitFor(`${HOLD_MARK} UploadPartCommand before`);
    // Past a second of run time, so the time left is shown (it waits for a rate).
    await sleep(1200);
    h.release();
    const code = await t.exited;
    assert.equal(code, 0, t.screen);
    const shown = frames(t.screen);
    assert.ok(shown.length >= 2, t.screen);
    const last = shown.at(-1) ?? "";
    // The walk's total is exact (no "~"): the file's 40 MiB plus 6 bytes.
    assert.match(
      last,
      /^data: \d{1,2}% [\d.]+ MiB of 40\.0 MiB {2}[\d.]+ (KiB|MiB|GiB)\/s {2}\d of 2 files {2}ETA \d+s/,
    );
    // The current file ends the line, escaped as tar -t shows it, shortened from the left to 80
    // columns. The big file is current while the upload is held; once released, a last frame may
    // already show small.txt (the walk's next file), so the big file's frame is looked for, not the last.
    const big = shown.filter((f) => /pwned\\a\.bin$/.test(f));
    assert.ok(big.length > 0, t.screen);
    for (const f of shown) assert.ok(f.length <= 80, f);
    assert.ok(
      !t.screen.includes("\x1b[2J") && !t.screen.includes("\x07"),
      "raw control sequences reached the terminal",
    );
    // One summary, after the line was cleared, naming the job once.
    const summary = t.screen.slice(t.screen.lastIndexOf("\r\x1b[2K") + 5);
    assert.match(summary, /data: backup succeeded: [\d.]+ MiB, 2 files, 0 warnings in /);
    assert.equal((t.screen.match(/backup succeeded/g) ?? []).length, 1, t.screen);
  });

  it("backup without a terminal: no progress at all, nothing on stdout, log lines on stderr", async () => {
    const h = held("pipe");
    const run = runCli(["--config", cfg, "backup", "data"], { env: h.env });
    // The hold's mark goes to stderr, which the pipe collects; release at once.
    h.release();
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "", "no summary without a terminal: the log line is the record");
    assert.ok(!r.stderr.includes("\r"), "no progress line without a terminal");
    assert.doesNotMatch(r.stderr, /ETA|MiB\/s/);
    for (const line of r.stderr.split("\n").filter((l) => l && !l.startsWith(HOLD_MARK))) {
      assert.equal(typeof (JSON.parse(line) as { level?: unknown }).level, "string", line);
    }
  });

  it("restore and verify --deep: percent of the archive's size at a terminal", async () => {
    const out = join(dir, "restored");
    const rt = new TerminalRun(["--config", cfg, "restore", "data", "--to", out], {});
    assert.equal(await rt.exited, 0, rt.screen);
    const restoreFrames = frames(rt.screen);
    assert.ok(restoreFrames.length >= 1, rt.screen);
    assert.ok(
      restoreFrames.every((f) => /^restore data: \d{1,2}% [\d.]+ (B|KiB|MiB) of 40\.0 MiB/.test(f)),
      restoreFrames.join("\n"),
    );
    assert.match(
      rt.screen,
      /restored data from .*: 2 files, \d+ dirs?, 0 symlinks, 40\.0 MiB into /,
    );

    const v = new TerminalRun(["--config", cfg, "verify", "--deep"], {});
    assert.equal(await v.exited, 0, v.screen);
    const deep = frames(v.screen).filter((f) => f.startsWith("verify --deep: "));
    assert.ok(deep.length >= 1, v.screen);
    assert.match(deep[0] ?? "", /^verify --deep: 0% 0 B of 40\.0 MiB .* 0 of 1 backup .*\.tar$/);
    assert.match(v.screen, /1 downloaded/);
  });

  it("Ctrl-C at a terminal: one line that it stops, one summary, no repeated exit message", async () => {
    const h = held("ctrl-c");
    const t = new TerminalRun(["--config", cfg, "backup", "data"], h.env);
    await t.waitFor(`${HOLD_MARK} UploadPartCommand before`);
    t.type("\x03");
    await t.waitFor("SIGINT received");
    h.release();
    const code = await t.exited;
    assert.equal(code, 3, t.screen);
    const text = t.screen.replaceAll("\r\x1b[2K", "\n");
    assert.equal((text.match(/SIGINT received/g) ?? []).length, 1, text);
    assert.equal((text.match(/backup interrupted/g) ?? []).length, 1, text);
    assert.doesNotMatch(
      text,
      /did not succeed/,
      "the summary said it; the exit code says the rest",
    );
    assert.doesNotMatch(text, /ERROR/);
  });
});
