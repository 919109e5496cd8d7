#!/usr/bin/env node
/**
 * The immutd executable. It checks the Node.js version before anything else
 * is loaded, so that an old Node.js gets one clear sentence (and exit 78,
 * which systemd's RestartPreventExitStatus= does not retry) instead of a
 * crash inside a dependency; then it runs the command line (program.ts).
 */
import { growHeapSlowly } from "./cli/heap.js";
import { nodeSupport } from "./cli/node-version.js";
import { ExitCode } from "./errors.js";

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
