#!/usr/bin/env node
/**
 * The immutd executable. A restore or deep verify first starts itself again
 * with a small young generation and waits for that child (relaunch.ts). It
 * checks the Node.js version before anything else is loaded, so that an old
 * Node.js gets one clear sentence (and exit 78, which systemd's
 * RestartPreventExitStatus= does not retry) instead of a crash inside a
 * dependency; then it runs the command line: program.ts and all it imports,
 * bundled into dist/src/immutd.js by `npm run build`.
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
import { moduleUrl } from "./paths.js";

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

// The command line itself is one file (scripts/bundle.mjs): Node.js resolves,
// reads and compiles 1 file instead of about 1,000, which is most of the start-up
// time of every command. The checks above stay separate modules so that an old
// Node.js is refused before the bundle is parsed.
const { main } = (await import(moduleUrl("immutd.js").href)) as typeof import("./cli/program.js");
process.exitCode = await main(process.argv);
