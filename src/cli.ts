#!/usr/bin/env node
/**
 * The immutd executable. It checks the Node.js version before anything else
 * is loaded, so that an old Node.js gets one clear sentence (and exit 78,
 * which systemd's RestartPreventExitStatus= does not retry) instead of a
 * crash inside a dependency; then it runs the command line (program.ts).
 */
import { setFlagsFromString } from "node:v8";
import { nodeSupport } from "./cli/node-version.js";
import { ExitCode } from "./errors.js";

/** The old generation grows by 1 + this / 100 between full collections (see below). */
const HEAP_GROWING_PERCENT = 20;

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

// V8 grows its old generation by a factor it picks itself (up to 4x the live
// heap between full collections). A backup's live heap is small (about 28
// MiB: the SDK, the modules, the entries in flight), but it creates garbage
// per file and per chunk, and each collection it skips keeps more of it and
// of the buffers it owns. A fixed factor of 1.2 lowered the peak RSS of a
// backup of 100,000 small files from 334 to 252 MiB and of 300 MB of large
// files from 257 to 220 MiB, for about 15% more CPU time and 5% more wall
// time (README: "Where the time and memory go"). This flag, unlike the
// young generation's size, still takes effect after V8 has started, and an
// explicit `node --heap-growing-percent=N` wins (NODE_OPTIONS refuses the flag).
if (!process.execArgv.some((a) => a.startsWith("--heap-growing-percent"))) {
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}

const { main } = await import("./cli/program.js");
process.exitCode = await main(process.argv);
