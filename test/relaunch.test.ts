/**
 * Restores and deep verifies run in a relaunched child with a small young
 * generation (src/cli/relaunch.ts). Checked here: which command lines are
 * relaunched; that the child has the flag and the parent's pid; that exit
 * codes, messages and deaths by signal come out of the parent as they would
 * out of the one process; that signals sent to the parent reach the child;
 * and that a child whose parent was killed stops by itself. What the smaller
 * young generation saves is measured by the benchmark, not by a timed test.
 *
 * The processes are seen through a probe that NODE_OPTIONS loads into both:
 * it records each one's pid, parent pid and node options as it starts. The
 * endpoint is a TCP listener that accepts and never answers, so a restore
 * from the bucket waits in its first request for as long as a test needs.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { rootCommand } from "../src/cli/program.js";
import {
  commandOf,
  FORWARDED_SIGNALS,
  RELAUNCHED_ENV,
  relaunch,
  SEMI_SPACE_FLAG,
  VALUED,
  wantsSmallYoungGeneration,
  watchParent,
} from "../src/cli/relaunch.js";
import { CLI } from "./support/cli.js";

describe("which command lines are relaunched", () => {
  it("knows every root option that takes a value, as the command line defines them", () => {
    // A root option with a value missing here would make its value (say
    // "restore") read as the command.
    const valued = rootCommand()
      .options.filter((o) => o.required || o.optional)
      .flatMap((o) => [o.short, o.long].filter((f): f is string => f !== undefined));
    assert.deepEqual([...VALUED].sort(), valued.sort());
  });

  it("finds the command past the root's options and their values", () => {
    assert.deepEqual(commandOf(["restore", "web"]), { name: "restore", rest: ["web"] });
    assert.equal(
      commandOf(["-c", "restore", "backup"])?.name,
      "backup",
      "a config file named restore",
    );
    assert.equal(
      commandOf(["--config", "x.yaml", "--log-level", "debug", "restore"])?.name,
      "restore",
    );
    assert.equal(commandOf(["--config=x.yaml", "--log-format", "json", "verify"])?.name, "verify");
    assert.equal(commandOf(["--version"]), undefined);
    assert.equal(commandOf([]), undefined);
  });

  it("relaunches restore and verify --deep only, never with --help or a size given to node", () => {
    const yes = [
      ["restore", "web", "--to", "/srv"],
      ["--config", "/etc/immutd/config.yaml", "restore", "web", "--stdout"],
      ["verify", "--deep"],
      ["-c", "c.yaml", "verify", "--job", "web", "--deep"],
    ];
    for (const args of yes) assert.equal(wantsSmallYoungGeneration(args, []), true, args.join(" "));
    const no = [
      ["backup"],
      ["verify"],
      ["restore", "--help"],
      ["verify", "--deep", "-h"],
      ["--config", "restore", "list"],
      ["run"],
      [],
    ];
    for (const args of no) assert.equal(wantsSmallYoungGeneration(args, []), false, args.join(" "));
    assert.equal(
      wantsSmallYoungGeneration(["restore", "web"], ["--max-semi-space-size=16"]),
      false,
    );
    assert.equal(wantsSmallYoungGeneration(["restore", "web"], ["--max_semi_space_size=4"]), false);
    assert.equal(wantsSmallYoungGeneration(["restore", "web"], ["--heap-growing-percent=0"]), true);
  });
});

describe("relaunch when the child cannot start", () => {
  it("resolves to null, for the parent to run the command itself, and leaves no signal handler", {
    timeout: 10_000,
  }, async () => {
    const before = FORWARDED_SIGNALS.map((sig) => process.listenerCount(sig));
    assert.equal(await relaunch(CLI, ["restore", "web"], "/nonexistent/node"), null);
    assert.deepEqual(
      FORWARDED_SIGNALS.map((sig) => process.listenerCount(sig)),
      before,
    );
  });
});

describe("watchParent", () => {
  it("calls back once when the parent changes, never without the parent's pid", async () => {
    let ppid = 4242;
    let orphaned = 0;
    const stop = watchParent(
      () => orphaned++,
      { [RELAUNCHED_ENV]: "4242" },
      () => ppid,
      10,
    );
    await sleep(50);
    assert.equal(orphaned, 0, "the parent is still there");
    ppid = 1;
    await sleep(50);
    ppid = 7;
    await sleep(50);
    assert.equal(orphaned, 1);
    stop();
    let never = 0;
    watchParent(
      () => never++,
      {},
      () => 1,
      10,
    )();
    const stop2 = watchParent(
      () => never++,
      { [RELAUNCHED_ENV]: "junk" },
      () => 1,
      10,
    );
    await sleep(50);
    stop2();
    assert.equal(never, 0);
  });
});

interface Started {
  pid: number;
  ppid: number;
  execArgv: string[];
}

describe("the relaunched child, as a user runs it", { timeout: 120_000 }, () => {
  let dir = "";
  let probe = "";
  let cfg = "";
  let server: Server;
  const sockets = new Set<Socket>();
  let connections = 0;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "immutd-relaunch-"));
    probe = join(dir, "probe.cjs");
    writeFileSync(
      probe,
      `const out = process.env.PROBE_OUT;
if (out) require("node:fs").appendFileSync(out, JSON.stringify({ pid: process.pid, ppid: process.ppid, execArgv: process.execArgv }) + "\\n");
`,
    );
    server = createServer((s) => {
      connections++;
      sockets.add(s);
      s.on("error", () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as { port: number }).port;
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: relaunch
targets:
  silent:
    endpoint: https://127.0.0.1:${port}
    bucket: never-answers
    forcePathStyle: true
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: W, secretAccessKey: writer-secret }
      reader: { accessKeyId: R, secretAccessKey: reader-secret }
jobs:
  - { name: data, target: silent, schedule: "@daily", paths: [${dir}] }
`,
    );
  });

  /** Every run's probe records, so that after() can end what a failed test left running. */
  const runs: (() => Started[])[] = [];

  after(() => {
    for (const started of runs) {
      for (const p of started()) if (alive(p.pid)) process.kill(p.pid, "SIGKILL");
    }
    for (const s of sockets) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts the CLI with the probe; `nodeArgs` go to node itself. */
  function start(args: string[], nodeArgs: string[] = []) {
    const out = join(dir, `probe-${randomBytes(4).toString("hex")}.ndjson`);
    const child = spawn(process.execPath, [...nodeArgs, CLI, "--config", cfg, ...args], {
      env: {
        ...process.env,
        IMMUTD_CONFIG: "",
        NODE_OPTIONS: `--require=${probe}`,
        PROBE_OUT: out,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    // 'exit', not 'close': an orphaned child would hold the stderr pipe open.
    const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on("exit", (code, signal) => resolve({ code, signal })),
    );
    const closed = new Promise<void>((resolve) => child.on("close", () => resolve()));
    const started = (): Started[] =>
      existsSync(out)
        ? readFileSync(out, "utf8")
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Started)
        : [];
    runs.push(started);
    return { child, ended, closed, started, stderr: () => stderr };
  }

  async function until(what: string, ok: () => boolean): Promise<void> {
    for (let i = 0; i < 300 && !ok(); i++) await sleep(50);
    assert.ok(ok(), `timed out waiting for ${what}`);
  }

  /** The run's processes once the child has reached the silent endpoint: [parent, child]. */
  async function waiting(run: ReturnType<typeof start>): Promise<[Started, Started]> {
    const before = connections;
    await until("the first request", () => connections > before);
    const [parent, child] = run.started();
    assert.ok(parent && child, JSON.stringify(run.started()));
    return [parent, child];
  }

  it("a restore runs in a child with the flag, whose exit code and message are the command's", async () => {
    const run = start(["restore", "nosuch", "--to", join(dir, "out")]);
    const { code } = await run.ended;
    await run.closed;
    assert.equal(code, 2, run.stderr());
    assert.equal((run.stderr().match(/unknown job nosuch/g) ?? []).length, 1, run.stderr());
    const [parent, child, ...more] = run.started();
    assert.equal(more.length, 0);
    assert.ok(parent && child);
    assert.ok(!parent.execArgv.includes(SEMI_SPACE_FLAG), "the parent has no flag");
    assert.equal(child.ppid, parent.pid);
    assert.equal(child.execArgv.at(-1), SEMI_SPACE_FLAG, "last: it wins over NODE_OPTIONS");
  });

  it("other commands, --help and a size given to node run in one process", async () => {
    for (const [args, nodeArgs] of [
      [["verify", "--job", "nosuch"], []],
      [["restore", "--help"], []],
      [["restore", "nosuch", "--to", join(dir, "out")], ["--max-semi-space-size=4"]],
    ] as [string[], string[]][]) {
      const run = start(args, nodeArgs);
      await run.ended;
      assert.equal(run.started().length, 1, `${args.join(" ")}: ${JSON.stringify(run.started())}`);
    }
  });

  it("SIGTERM to the parent ends the child and the parent as it ends the one process", async () => {
    const ends: { code: number | null; signal: NodeJS.Signals | null }[] = [];
    for (const nodeArgs of [[], [SEMI_SPACE_FLAG]]) {
      const run = start(["restore", "data", "--from-bucket", "--to", join(dir, "out")], nodeArgs);
      const before = connections;
      await until("the first request", () => connections > before);
      assert.equal(run.started().length, nodeArgs.length === 0 ? 2 : 1, "relaunched or not");
      run.child.kill("SIGTERM");
      ends.push(await run.ended);
      // Passed on, not left to the child's watch: the parent ends after its child.
      for (const p of run.started())
        assert.ok(!alive(p.pid), `process ${p.pid} outlived the parent`);
    }
    assert.deepEqual(ends[0], ends[1], "relaunched and one process end alike");
    assert.equal(ends[0]?.signal, "SIGTERM");
  });

  it("a child killed by a signal: the parent dies of the same signal", async () => {
    const run = start(["restore", "data", "--from-bucket", "--to", join(dir, "out")]);
    const [, child] = await waiting(run);
    process.kill(child.pid, "SIGKILL");
    assert.deepEqual(await run.ended, { code: null, signal: "SIGKILL" });
  });

  it("a parent killed by SIGKILL: the child stops by itself within seconds", async () => {
    const run = start(["restore", "data", "--from-bucket", "--to", join(dir, "out")]);
    const [, child] = await waiting(run);
    run.child.kill("SIGKILL");
    await run.ended;
    await until(`child ${child.pid} to end`, () => !alive(child.pid));
  });
});

/** Whether `pid` runs (a zombie waiting for its new parent to reap it has ended). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}
