#!/usr/bin/env -S node --max-semi-space-size=8
import { nodeSupport } from "./cli/node-version.js";
/**
 * The immutd executable. Its shebang caps V8's young generation at 2 x 8 MiB
 * (it can only be set when the process starts): left to itself on a machine
 * with much memory, V8 grows it to 2 x 64 MiB while a backup allocates a
 * buffer per file, and peak RSS rises by about 100 MiB with no gain in speed
 * (README "Where the time and memory go"). It checks the Node.js version before anything else
 * is loaded, so that an old Node.js gets one clear sentence (and exit 78,
 * which systemd's RestartPreventExitStatus= does not retry) instead of a
 * crash inside a dependency; then it runs the command line (program.ts).
 */
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

const { main } = await import("./cli/program.js");
process.exitCode = await main(process.argv);
