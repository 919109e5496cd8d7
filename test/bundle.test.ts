/**
 * The command line as one file (scripts/bundle.mjs → dist/src/immutd.js) and
 * the separate tree of modules beside it (tsc's), which the worker threads
 * load. What would break quietly if it went wrong:
 * - a package left out of the bundle is loaded from node_modules after all
 *   (slow again, or missing where only the bundle is installed);
 * - a path built from import.meta.url outside src/paths.ts points elsewhere
 *   once its code is inside the bundle (a worker script not found at the first
 *   backup, not at build time);
 * - a worker script's imports grow until it loads the schema, the SDK or the
 *   logger at every start of a thread.
 * All of it is read off the built files, so it checks what ships.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { SRC_ROOT } from "../src/paths.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const DIST_SRC = fileURLToPath(SRC_ROOT);
const BUNDLE = join(DIST_SRC, "immutd.js");
const CLI = join(DIST_SRC, "cli.js");

/** Module specifiers of a JavaScript file: static imports and re-exports, dynamic import() with a string, require() with a string. */
function specifiers(code: string): { static: string[]; dynamic: string[] } {
  const stat = [...code.matchAll(/^\s*(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/gms)].map(
    (m) => m[1] as string,
  );
  const bare = [...code.matchAll(/^\s*import\s*["']([^"']+)["']/gm)].map((m) => m[1] as string);
  const dynamic = [...code.matchAll(/\b(?:import|require)\(\s*["']([^"']+)["']\s*\)/g)].map(
    (m) => m[1] as string,
  );
  return { static: [...stat, ...bare], dynamic };
}

const packageOf = (spec: string) =>
  spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : (spec.split("/")[0] as string);

/** The packages (and node: builtins) a compiled module reaches through static imports, following relative ones. */
function staticGraph(entry: string): { files: Set<string>; packages: Set<string> } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const todo = [entry];
  while (todo.length) {
    const file = todo.pop() as string;
    if (files.has(file)) continue;
    files.add(file);
    for (const s of specifiers(readFileSync(file, "utf8")).static) {
      if (s.startsWith(".")) todo.push(resolve(dirname(file), s));
      else if (!s.startsWith("node:")) packages.add(packageOf(s));
    }
  }
  return { files, packages };
}

function jsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((d) => d.isFile() && d.name.endsWith(".js"))
    .map((d) => join(d.parentPath, d.name));
}

describe("the command-line bundle", () => {
  it("holds every package but the native SQLite addon: it imports only Node.js's own modules and better-sqlite3", () => {
    const code = readFileSync(BUNDLE, "utf8");
    const { static: stat, dynamic } = specifiers(code);
    const outside = [...stat, ...dynamic].filter(
      (s) => !s.startsWith("node:") && packageOf(s) !== "better-sqlite3",
    );
    // esbuild keeps Node's own modules named without the prefix as they were written
    // (require("fs") inside CommonJS packages); those are builtins too.
    const builtins = new Set(
      (
        execFileSync(process.execPath, ["-p", "require('node:module').builtinModules.join(' ')"], {
          encoding: "utf8",
        }) as string
      )
        .trim()
        .split(" "),
    );
    // Not imports: the SDK's error messages for SigV4a (multi-region access points)
    // advise `require("@aws-sdk/signature-v4-crt")`, which this scan also reads.
    const optional = new Set(["@aws-sdk/signature-v4-crt", "@aws-sdk/signature-v4a"]);
    const packages = outside.filter(
      (s) => !builtins.has(s) && !builtins.has(packageOf(s)) && !optional.has(packageOf(s)),
    );
    assert.deepEqual([...new Set(packages)], [], "packages loaded from node_modules by the bundle");
    assert.ok(
      stat.some((s) => s === "better-sqlite3") || dynamic.some((s) => s === "better-sqlite3"),
      "better-sqlite3 stays an import (its .node binary is found from its own package)",
    );
    assert.ok(code.length > 1024 * 1024, "the bundle contains the SDK, not a re-export");
  });

  it("imports no module of its own tree by a relative path (they would resolve from dist/src, not from where they were written)", () => {
    const { static: stat, dynamic } = specifiers(readFileSync(BUNDLE, "utf8"));
    assert.deepEqual(
      [...stat, ...dynamic].filter((s) => s.startsWith(".")),
      [],
    );
  });

  it("is started by dist/src/cli.js, which itself loads no package before the Node.js check", () => {
    const { packages, files } = staticGraph(CLI);
    assert.deepEqual([...packages], [], "packages in cli.js's static imports");
    assert.ok(files.size < 10, `cli.js loads ${files.size} modules before the bundle`);
    assert.equal(dirname(BUNDLE), dirname(CLI), "the bundle sits at SRC_ROOT, beside cli.js");
    assert.ok(
      readFileSync(CLI, "utf8").includes('moduleUrl("immutd.js")'),
      "cli.js imports the bundle",
    );
  });

  it("prints the package's version from the bundle", () => {
    const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
    const out = execFileSync(process.execPath, [CLI, "--version"], { encoding: "utf8" });
    assert.equal(out.trim(), pkg.version);
  });

  it("starts without loading undici, Node.js's fetch (an ES import of node:http would load it: src/node-http.ts)", () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-bundle-"));
    try {
      const probe = join(dir, "probe.cjs");
      writeFileSync(
        probe,
        `process.on("exit", () => process.stderr.write("undici loaded: " + process.moduleLoadList.some((m) => m.includes("undici")) + "\\n"));`,
      );
      for (const args of [["--version"], ["--help"]]) {
        const r = spawnSync(process.execPath, ["--require", probe, CLI, ...args], {
          encoding: "utf8",
        });
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stderr, /undici loaded: false/, `immutd ${args.join(" ")}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("finds every file src/paths.ts is asked for, and no module builds a path from its own import.meta.url", () => {
    const asked = new Set<string>();
    for (const file of jsFiles(DIST_SRC)) {
      const code = readFileSync(file, "utf8");
      for (const m of code.matchAll(/moduleUrl\(\s*["']([^"']+)["']\s*\)/g))
        asked.add(m[1] as string);
      if (file === BUNDLE || relative(DIST_SRC, file) === "paths.js") continue;
      assert.doesNotMatch(
        code,
        /new URL\([^)]*import\.meta\.url\)/,
        `${relative(REPO, file)} builds a path from import.meta.url: use src/paths.ts`,
      );
    }
    assert.ok(asked.size >= 5, `moduleUrl targets: ${[...asked].join(", ")}`);
    for (const p of asked) assert.ok(existsSync(join(DIST_SRC, p)), `dist/src/${p} exists`);
  });

  it("keeps each worker thread's imports off the schema, the SDK, the logger and the catalog", () => {
    const workers = jsFiles(DIST_SRC).filter((f) => /-worker\.js$/.test(f));
    assert.ok(workers.length >= 4, `worker scripts: ${workers.join(", ")}`);
    const heavy = ["zod", "yaml", "commander", "pino", "better-sqlite3", "prom-client"];
    for (const w of workers) {
      const { packages, files } = staticGraph(w);
      const bad = [...packages].filter(
        (p) => heavy.includes(p) || p.startsWith("@aws-sdk/") || p.startsWith("@smithy/"),
      );
      assert.deepEqual(bad, [], `${relative(DIST_SRC, w)} loads ${bad.join(", ")}`);
      assert.ok(files.size < 60, `${relative(DIST_SRC, w)} loads ${files.size} modules of its own`);
    }
  });
});
