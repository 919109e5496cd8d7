/**
 * README's "Project layout" promises a direction of imports: nothing outside
 * src/cli/ imports the CLI, and nothing outside src/cli/ and src/daemon/
 * imports a flow. This reads every source file's relative imports and holds
 * the code to it.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const SRC = fileURLToPath(new URL("../../src/", import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sources(join(dir, e.name))
      : e.name.endsWith(".ts")
        ? [join(dir, e.name)]
        : [],
  );
}

/** The top directory under src/ a file is in ("" for src/ itself). */
function area(file: string): string {
  const parts = relative(SRC, file).split("/");
  return parts.length > 1 ? (parts[0] ?? "") : "";
}

describe("project layout", () => {
  it("imports go the way README says: only the CLI imports the CLI; only the CLI and the daemon import flows", () => {
    const files = sources(SRC);
    assert.ok(files.length > 50, `found only ${files.length} source files under ${SRC}`);
    const wrong: string[] = [];
    for (const file of files) {
      const from = area(file);
      for (const [, spec] of readFileSync(file, "utf8").matchAll(/from "(\.{1,2}\/[^"]+)"/g)) {
        const to = area(normalize(join(dirname(file), spec as string)));
        const allowed =
          to === "cli"
            ? from === "cli" || from === ""
            : to === "flows"
              ? ["cli", "daemon", "flows"].includes(from)
              : true;
        if (!allowed) wrong.push(`${relative(SRC, file)} imports ${spec}`);
      }
    }
    assert.deepEqual(wrong, []);
  });
});
