/**
 * Which Node.js versions immutd runs on: the ranges in package.json's
 * "engines", one `^X.Y.Z` per release line (README "Node.js support" says
 * why these). src/cli.ts asks before anything else is loaded: an older
 * Node.js is refused (better-sqlite3 needs Node-API 10, the AWS SDK drops
 * Node 20, zlib zstd before 24.20 and 26.6 does not notice a cut-off stream), a newer line that CI has not run is a warning. scripts/node.sh
 * runs this file as a script to decide whether to fetch a supported Node.js.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PACKAGE_JSON } from "../paths.js";

export type Version = readonly [major: number, minor: number, patch: number];

export interface NodeSupport {
  /** supported: in a range; too-old: below every range; untested: neither (a newer or odd line). */
  verdict: "supported" | "too-old" | "untested";
  /** The supported versions in words, e.g. "24.20 or a newer 24.x or 26.6 or a newer 26.x". */
  supported: string;
}

/** The lowest version of each allowed release line, from `^X.Y.Z || ^X.Y.Z …`. */
export function parseEngines(engines: string): Version[] {
  return engines.split("||").map((part) => {
    const m = /^\^(\d+)\.(\d+)\.(\d+)$/.exec(part.trim());
    if (!m) throw new Error(`engines.node: "${part.trim()}" is not a ^X.Y.Z range`);
    return [Number(m[1]), Number(m[2]), Number(m[3])] as const;
  });
}

function parseVersion(version: string): Version {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version);
  if (!m) throw new Error(`not a Node.js version: ${version}`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

const atLeast = (v: Version, min: Version) =>
  v[0] !== min[0] ? v[0] > min[0] : v[1] !== min[1] ? v[1] > min[1] : v[2] >= min[2];

export function nodeSupport(version: string, engines: string = packageEngines()): NodeSupport {
  const ranges = parseEngines(engines);
  const v = parseVersion(version);
  const lines = ranges.map(([M, m, p]) =>
    m === 0 && p === 0 ? `${M}` : `${M}.${m}${p ? `.${p}` : ""} or a newer ${M}.x`,
  );
  const supported =
    lines.length > 1 ? `${lines.slice(0, -1).join(", ")} or ${lines.at(-1)}` : (lines[0] ?? "");
  if (ranges.some((r) => r[0] === v[0] && atLeast(v, r)))
    return { verdict: "supported", supported };
  if (ranges.every((r) => !atLeast(v, r))) return { verdict: "too-old", supported };
  return { verdict: "untested", supported };
}

export function packageEngines(): string {
  const pkg = JSON.parse(readFileSync(PACKAGE_JSON, "utf8")) as {
    engines?: { node?: string };
  };
  if (!pkg.engines?.node) throw new Error("package.json has no engines.node");
  return pkg.engines.node;
}

// `node dist/src/cli/node-version.js`: exit 0 if this Node.js is supported, else 1 with the reason.
// The name check matters in the bundle (dist/src/immutd.js), where import.meta.url
// is the bundle's own and this module is only a part of it.
const script = process.argv[1];
if (script?.endsWith("node-version.js") && fileURLToPath(import.meta.url) === script) {
  const s = nodeSupport(process.versions.node);
  if (s.verdict !== "supported") {
    const why = s.verdict === "too-old" ? "too old" : "not a version CI tests";
    process.stderr.write(`Node.js ${process.version} is ${why}; immutd runs on ${s.supported}\n`);
    process.exitCode = 1;
  }
}
