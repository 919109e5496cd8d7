// Bundles the command line (dist/src/cli/program.js and everything it
// imports, the npm packages included) into one ES module, dist/src/immutd.js,
// after tsc has compiled the tree. Why: every command used to start by
// resolving, reading and compiling about 1,000 modules (most of them the AWS
// SDK's): `immutd --version` took 0.38 s of CPU and 100-104 MiB of RSS, with
// the bundle 0.27 s and 95 MiB (README "Start-up in one file").
//
// What stays out of it:
// - better-sqlite3: a native addon, found next to its .node file at run time;
// - the worker scripts (dist/src/pipeline/**-worker.js): each thread loads its
//   own small import graph from the tsc tree (src/paths.ts names them);
// - dist/src/cli.js itself, which checks the Node.js version first and then
//   imports this bundle.
// No source map: stack traces name the bundle's lines, and the tsc tree beside
// it (same code, same names) is what a developer reads.
import { build } from "esbuild";

await build({
  entryPoints: ["dist/src/cli/program.js"],
  outfile: "dist/src/immutd.js",
  bundle: true,
  format: "esm",
  platform: "node",
  target: "node24",
  external: ["better-sqlite3"],
  // CommonJS packages in an ES module bundle call require() for Node's own
  // modules; give them one.
  banner: {
    js: 'import { createRequire as __immutdCreateRequire } from "node:module"; const require = __immutdCreateRequire(import.meta.url);',
  },
  legalComments: "eof",
  logLevel: "warning",
});
