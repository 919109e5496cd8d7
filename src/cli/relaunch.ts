/**
 * Restores and deep verifies run in a child process whose young generation is
 * small: the executable starts itself again, with `--max-semi-space-size=1`
 * on node's command line, and waits for it.
 *
 * Why: a download makes garbage at the rate it receives and decodes bytes
 * (socket chunks, the decoder's output, the extractor's writes), and with V8's
 * young generation at 8 MiB per semi-space or more (the units' and the
 * image's NODE_OPTIONS, or V8's own growth without them) V8 ran a full
 * collection of the 20 MiB old generation every 35-50 ms for the whole
 * download: 50-60 full GCs for a 300 MB zstd restore. With 1 MiB semi-spaces
 * it ran 3. Measured, 300 MB of large files restored to tmpfs from the local
 * RGW, 3 runs each, interleaved: zstd 3.07 s wall and 3.8 s CPU against
 * 2.09 s and 2.2 s (`aws s3 cp - | zstd -d | tar -x`: 2.05 s, 2.1 s), peak
 * RSS 234 against 161 MiB; uncompressed the same wall and CPU time, peak RSS
 * 185-203 against 141 MiB; `verify --deep` of the zstd backup 3.5 against 2.0-2.5
 * s of CPU. A backup is the other way round (100,000 small files: 4.3 s with
 * 8 MiB, 4.9 s with 1 MiB), so the rest of the commands keep what they were
 * started with.
 *
 * V8 sizes the young generation once, when the process starts: setting the
 * flag at run time (v8.setFlagsFromString), its growth factor, or a forced
 * GC after either changed nothing (measured). Hence the second process; it
 * costs the first one's start-up, about 50 ms, before the child's.
 *
 * The child has the parent's stdin, stdout and stderr (a terminal stays a
 * terminal: progress, prompts, `--stdout` into a pipe), its environment and
 * node's options, the flag last so that it wins over NODE_OPTIONS. The parent
 * passes SIGINT, SIGTERM and SIGHUP on (signals that arrive together are one
 * stop request, src/cli/signals.ts, so a Ctrl-C that reaches both is still
 * one), then exits with the child's exit code, or dies of the signal that
 * killed it. A parent killed without a chance to pass anything on (SIGKILL)
 * leaves the child to notice: it checks once a second whether its parent
 * changed and then stops itself as SIGTERM would (watchParent).
 *
 * `node --max-semi-space-size=N immutd ...` (any size) runs the command in
 * the one process, with that size; so does a failure to start the child.
 */
import { spawn } from "node:child_process";
import { constants } from "node:os";

/** Semi-space size (MiB) of a restore's or deep verify's process. */
export const DOWNLOAD_SEMI_SPACE_MIB = 1;

/** The flag the child is started with. */
export const SEMI_SPACE_FLAG = `--max-semi-space-size=${DOWNLOAD_SEMI_SPACE_MIB}`;

/** Set in the child's environment to the parent's pid (watchParent). */
export const RELAUNCHED_ENV = "IMMUTD_RELAUNCHED_FROM";

/**
 * The root command's options that take a separate value (src/cli/program.ts
 * rootCommand; test/relaunch.test.ts checks the two agree). Kept here so that
 * the parent of a relaunch does not load the command line to find them.
 */
export const VALUED: ReadonlySet<string> = new Set([
  "-c",
  "--config",
  "--log-level",
  "--log-format",
]);

/** What the parent passes on to the child. */
export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** The command a command line runs and the arguments after it, past the root's options. */
export function commandOf(
  args: readonly string[],
): { name: string; rest: readonly string[] } | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === "--") return undefined;
    if (VALUED.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith("-")) continue; // --config=FILE, -cFILE, --version, --help
    return { name: a, rest: args.slice(i + 1) };
  }
  return undefined;
}

/** Whether `args` (argv after the script) runs a command that downloads an archive. */
export function wantsSmallYoungGeneration(
  args: readonly string[],
  execArgv: readonly string[] = process.execArgv,
): boolean {
  // A size given to node itself is the user's choice; it also marks the child.
  if (execArgv.some((a) => a.replaceAll("_", "-").startsWith("--max-semi-space-size"))) {
    return false;
  }
  const cmd = commandOf(args);
  if (cmd === undefined) return false;
  if (cmd.rest.includes("--help") || cmd.rest.includes("-h")) return false;
  if (cmd.name === "restore") return true;
  return cmd.name === "verify" && cmd.rest.includes("--deep");
}

/**
 * Runs `script args` in a child as described above and resolves to the exit
 * code to leave with, or to null when the child could not be started (the
 * caller then runs the command itself). When the child dies of a signal, the
 * parent re-raises it on itself and does not resolve.
 */
export function relaunch(
  script: string,
  args: readonly string[],
  node: string = process.execPath,
): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(node, [...process.execArgv, SEMI_SPACE_FLAG, script, ...args], {
      stdio: "inherit",
      env: { ...process.env, [RELAUNCHED_ENV]: String(process.pid) },
    });
    const pass = (sig: NodeJS.Signals) => {
      child.kill(sig);
    };
    for (const sig of FORWARDED_SIGNALS) process.on(sig, pass);
    const done = () => {
      for (const sig of FORWARDED_SIGNALS) process.off(sig, pass);
    };
    child.on("error", () => {
      // Only a child that never started (no pid) leaves the command to the
      // parent; any later error (a signal not delivered) changes nothing.
      if (child.pid !== undefined) return;
      done();
      resolve(null);
    });
    child.once("exit", (code, signal) => {
      done();
      if (signal === null) {
        resolve(code ?? 1);
        return;
      }
      // The same end as the child's, so that a shell or systemd sees what happened.
      process.kill(process.pid, signal);
      // A signal Node.js handles itself (none of ours is left installed) or ignores: its code.
      setTimeout(() => resolve(128 + (constants.signals[signal] ?? 0)), 100);
    });
  });
}

/**
 * In a relaunched child: once a second, whether the parent that started it is
 * still its parent; when not (the parent was killed), `onOrphaned` runs once.
 * Returns the watch's remover; it never keeps the process alive.
 */
export function watchParent(
  onOrphaned: () => void,
  env: NodeJS.ProcessEnv = process.env,
  ppid: () => number = () => process.ppid,
  everyMs = 1000,
): () => void {
  const parent = Number(env[RELAUNCHED_ENV]);
  if (!Number.isInteger(parent) || parent <= 0) return () => {};
  const timer = setInterval(() => {
    if (ppid() === parent) return;
    clearInterval(timer);
    onOrphaned();
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
