#!/usr/bin/env node
/**
 * The immutd executable. A restore or deep verify first starts itself again
 * with a small young generation and waits for that child (relaunch.ts). It
 * checks the Node.js version before anything else is loaded, so that an old
 * Node.js gets one clear sentence (and exit 78, which systemd's
 * RestartPreventExitStatus= does not retry) instead of a crash inside a
 * dependency; then it runs the command line (program.ts).
 */
import { growHeapSlowly } from "./cli/heap.js";
import { nodeSupport } from "./cli/node-version.js";
import {
  RELAUNCHED_ENV,
  relaunch,
  wantsSmallYoungGeneration,
  watchParent,
} from "./cli/relaunch.js";
import { ExitCode } from "./errors.js";

const args = process.argv.slice(2);
if (wantsSmallYoungGeneration(args)) {
  const code = await relaunch(process.argv[1] as string, args);
  if (code !== null) process.exit(code);
  // The child could not be started: the command runs here, as it is.
}
if (process.env[RELAUNCHED_ENV] !== undefined) {
  // A relaunched child stops, as for SIGTERM, once its parent is gone.
  watchParent(() => process.kill(process.pid, "SIGTERM"));
  delete process.env[RELAUNCHED_ENV];
}

const node = nodeSupport(process.versions.node);
if (node.verdict === "too-old") {
  const message = `Node.js ${process.version} is too old: immutd runs on Node.js ${node.supported} (README: "Node.js support")`;
  process.stderr.write(`immutd: ${message}\n`);
  // --json callers get the error document all failures print (src/cli/output.ts).
  if (process.argv.includes("--json")) {
    const error = { type: "ConfigError", message, exitCode: ExitCode.config };
    process.stdout.write(`${JSON.stringify({ error }, null, 2)}\n`);
  }
  process.exit(ExitCode.config);
}
if (node.verdict === "untested") {
  process.stderr.write(
    `immutd: warning: Node.js ${process.version} is not a version immutd is tested on (${node.supported})\n`,
  );
}

// V8's old generation grows by 1.2x between full collections (heap.ts).
growHeapSlowly();

const { main } = await import("./cli/program.js");
process.exitCode = await main(process.argv);
