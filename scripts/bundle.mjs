// Bundles the command line (dist/src/cli/program.js and everything it
// imports, the npm packages included) into one ES module, dist/src/immutd.js,
// after tsc has compiled the tree. Why: every command used to start by
// resolving, reading and compiling about 1,000 modules (most of them the AWS
// SDK's), 0.2 s of CPU and ~10 MiB of RSS before it did anything; one file
// is resolved once and compiled lazily.
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

const result = await build({
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
  metafile: true,
});
const inputs = Object.keys(result.metafile.inputs).length;
const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
if (process.env.IMMUTD_BUNDLE_VERBOSE)
  console.error(`bundle: ${inputs} modules, ${(bytes / 1024).toFixed(0)} KiB`);
