/**
 * The Node.js version check: the engines ranges, the verdict for versions at
 * and around their edges, and the executable's refusal (exit 78) on an older
 * Node.js when the machine has one.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { nodeSupport, packageEngines, parseEngines } from "../src/cli/node-version.js";
import { CLI } from "./support/cli.js";

const ENGINES = "^24.20.0 || ^26.6.0";

describe("node-version", () => {
  it("parses engines as one ^X.Y.Z range per release line, and rejects anything else", () => {
    assert.deepEqual(parseEngines(ENGINES), [
      [24, 20, 0],
      [26, 6, 0],
    ]);
    assert.throws(() => parseEngines(">=22"), /">=22" is not a \^X\.Y\.Z range/);
    assert.throws(() => parseEngines("^22.14.0 | ^24.0.0"), /not a \^X\.Y\.Z range/);
    // package.json's own engines has that form
    assert.ok(parseEngines(packageEngines()).length >= 2);
  });

  it("supports the ranges, refuses what is older, and calls the rest untested", () => {
    const verdict = (v: string) => nodeSupport(v, ENGINES).verdict;
    for (const v of ["24.20.0", "v24.21.0", "26.6.0", "26.10.0"]) {
      assert.equal(verdict(v), "supported", v);
    }
    for (const v of [
      "v24.19.0",
      "v24.0.0",
      "v22.23.3",
      "22.0.0",
      "20.20.2",
      "18.19.0",
      "v0.10.48",
    ]) {
      assert.equal(verdict(v), "too-old", v);
    }
    for (const v of ["25.0.0", "27.0.0", "28.1.0"]) assert.equal(verdict(v), "untested", v);
    assert.equal(
      nodeSupport("24.21.0", ENGINES).supported,
      "24.20 or a newer 24.x or 26.6 or a newer 26.x",
    );
    assert.throws(() => nodeSupport("lts", ENGINES), /not a Node\.js version: lts/);
  });

  it("package.json refuses every Node.js whose zstd decoder does not notice a cut-off stream (22.x, 24 before 24.20)", () => {
    for (const v of ["22.23.3", "22.15.0", "24.0.0", "24.19.0", "20.19.0"])
      assert.equal(nodeSupport(v).verdict, "too-old", v);
    assert.equal(nodeSupport("24.20.0").verdict, "supported");
  });

  it("the Node.js running the tests is supported", () => {
    assert.equal(nodeSupport(process.versions.node).verdict, "supported", process.version);
  });

  it("on a Node.js without zlib zstd (an untested 23.0-23.7), compression: zstd is a config error naming the version, not a crash in zlib", () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-nozstd-"));
    // Takes zstd out of node:zlib before immutd loads, as on Node.js 23.7.
    const preload = join(dir, "no-zstd.cjs");
    writeFileSync(
      preload,
      'const z = require("node:zlib"); delete z.createZstdCompress; delete z.createZstdDecompress; require("node:module").syncBuiltinESMExports();\n',
    );
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKey: "${"ab".repeat(32)}"
targets:
  t:
    endpoint: https://s3.example.com
    bucket: backups
    credentials:
      writer: { accessKeyId: w, secretAccessKey: w }
      reader: { accessKeyId: r, secretAccessKey: r }
jobs:
  - name: j
    target: t
    paths: [/etc]
    compression: zstd
`,
    );
    const run = (compression: string) => {
      writeFileSync(cfg, readFileSync(cfg, "utf8").replace(/compression: \w+/, compression));
      return spawnSync(process.execPath, ["-r", preload, CLI, "--config", cfg, "config", "check"], {
        encoding: "utf8",
        env: { ...process.env, IMMUTD_CONFIG: "" },
      });
    };
    const r = run("compression: zstd");
    assert.equal(r.status, 78, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `jobs\\[0\\] \\(j\\)\\.compression: zstd needs Node\\.js 24\\.20 or 26\\.6 or newer, this is ${process.version.replace(/\./g, "\\.")}; use compression: gzip`,
      ),
    );
    assert.equal(run("compression: gzip").status, 0, "gzip still runs there");
    rmSync(dir, { recursive: true, force: true });
  });

  it("immutd refuses an older Node.js with exit 78 and one clear line", (t) => {
    // An older Node.js is on this machine when Debian's nodejs (18 or 20) is installed.
    const older = ["/usr/bin/node", "/usr/local/bin/node"].find(
      (p) => existsSync(p) && realpathSync(p) !== realpathSync(process.execPath),
    );
    const version = older
      ? spawnSync(older, ["--version"], { encoding: "utf8" }).stdout.trim()
      : "";
    if (!older || nodeSupport(version).verdict !== "too-old") {
      t.skip(
        `no Node.js older than immutd supports on this machine (${older ?? "none"} ${version})`,
      );
      return;
    }
    const r = spawnSync(older, [CLI, "--version"], { encoding: "utf8" });
    assert.equal(r.status, 78, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(
      r.stderr,
      `immutd: Node.js ${version} is too old: immutd runs on Node.js ${nodeSupport(version).supported} (README: "Node.js support")\n`,
    );
  });
});
