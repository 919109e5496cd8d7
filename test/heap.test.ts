/**
 * The heap-growth choice: the executable sets 1.2x for every command, restores
 * and deep verifies give V8 its own factor back, and a factor the user gave
 * node on its command line is left alone by both. Its effect on peak RSS and
 * CPU is measured by the benchmark (scripts/bench.sh), not by a timed test.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { growHeapSlowly, HEAP_GROWING_PERCENT, leaveHeapToV8 } from "../src/cli/heap.js";
import { CLI } from "./support/cli.js";

describe("heap growth", () => {
  it("sets the factor unless node was given one", () => {
    assert.equal(HEAP_GROWING_PERCENT, 20);
    assert.equal(growHeapSlowly([]), true);
    assert.equal(leaveHeapToV8(["--max-semi-space-size=8"]), true);
    assert.equal(growHeapSlowly(["--heap-growing-percent=0"]), false);
    assert.equal(leaveHeapToV8(["--heap-growing-percent=50"]), false);
    assert.equal(growHeapSlowly(["--heap_growing_percent=0"]), false, "V8's underscore spelling");
  });

  it("the executable runs with a factor given on node's command line", () => {
    const ok = spawnSync(process.execPath, ["--heap-growing-percent=0", CLI, "--version"], {
      encoding: "utf8",
    });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /\d+\.\d+\.\d+/);
  });
});
