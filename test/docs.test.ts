/**
 * README is the user's manual: every `immutd …` command line it shows must
 * exist, with the options it uses, per `immutd --help`; every command
 * `immutd --help` lists is in README's command table; the configs it shows for
 * the container validate; and the Node.js versions it names match package.json,
 * the Dockerfile and what CI tests. (config.example.yaml is validated by
 * test/config.test.ts and, as installed from the package, test/package.test.ts.)
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import { parseEngines } from "../src/cli/node-version.js";
import { parseConfig } from "../src/config/config.js";
import { runCli } from "./support/cli.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const read = (f: string) => readFileSync(join(REPO, f), "utf8");
const readme = read("README.md");

/** Lines of code in README: fenced blocks and inline `code` spans. */
function codeLines(md: string): string[] {
  const out: string[] = [];
  let fenced = false;
  for (const line of md.split("\n")) {
    if (line.startsWith("```")) {
      fenced = !fenced;
      continue;
    }
    if (fenced) out.push(line);
    else for (const m of line.matchAll(/`([^`]+)`/g)) out.push(m[1] ?? "");
  }
  return out;
}

/** Fenced blocks of one language, with the heading they appear under. */
function blocks(md: string, lang: string): { heading: string; text: string }[] {
  const out: { heading: string; text: string }[] = [];
  let heading = "";
  let current: string[] | undefined;
  for (const line of md.split("\n")) {
    if (current) {
      if (line.startsWith("```")) {
        out.push({ heading, text: current.join("\n") });
        current = undefined;
      } else current.push(line);
    } else if (line.startsWith("#")) heading = line.replace(/^#+\s*/, "");
    else if (line === `\`\`\`${lang}`) current = [];
  }
  return out;
}

/** `immutd <command> …` invocations: the command words and the --options on the rest of the line. */
function invocations(lines: string[]): { words: string[]; options: string[]; line: string }[] {
  const out: { words: string[]; options: string[]; line: string }[] = [];
  for (const line of lines) {
    // "immutd" as a program name (also an image name with a tag), not part of a path or a unit name
    const re = /(?<=^|[\s`($;&|])immutd(?::[\w.-]+)?[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?/g;
    for (const m of line.matchAll(re)) {
      const [first = "", second] = [m[1], m[2]];
      if (first === "immutd") continue; // `sudo -u immutd immutd list`: the next match is the command
      const rest = line.slice((m.index ?? 0) + m[0].length).split(/[#|><;`)]|&&/)[0] ?? "";
      const options = [...rest.matchAll(/(?<=^|[\s[])(--[a-z][a-z-]*)/g)].map((o) => o[1] ?? "");
      out.push({ words: second ? [first, second] : [first], options, line });
    }
  }
  return out;
}

/** Commands and options from commander's help text. */
function helpOf(text: string): { commands: string[]; options: string[] } {
  const section = (name: string) => {
    const start = text.indexOf(`\n${name}:\n`);
    if (start < 0) return [];
    const body = text.slice(start + name.length + 3).split(/\n\n|\n\S/)[0] ?? "";
    return body.split("\n").filter((l) => /^ {2}\S/.test(l));
  };
  return {
    commands: section("Commands").map((l) => l.trim().split(/\s+/)[0] ?? ""),
    options: section("Options").flatMap((l) => [...l.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0])),
  };
}

describe("README's commands", () => {
  const help = new Map<string, { commands: string[]; options: string[] }>();
  const helpFor = async (words: string[]) => {
    const key = words.join(" ");
    let h = help.get(key);
    if (!h) {
      const r = await runCli([...words, "--help"]);
      assert.equal(r.code, 0, `immutd ${key} --help: ${r.stderr}`);
      h = helpOf(r.stdout);
      help.set(key, h);
    }
    return h;
  };
  let top: { commands: string[]; options: string[] };
  before(async () => {
    top = await helpFor([]);
    assert.ok(top.commands.includes("backup"), "parsed `immutd --help`");
  });

  it("exist, with every option README uses, per --help", async () => {
    const found = invocations(codeLines(readme));
    assert.ok(found.length > 20, `README shows immutd commands (found ${found.length})`);
    for (const { words, options, line } of found) {
      const [cmd = ""] = words;
      assert.ok(top.commands.includes(cmd), `README: \`${line.trim()}\`: no command "${cmd}"`);
      const path = [cmd];
      const sub = await helpFor(path);
      if (sub.commands.length > 0) {
        assert.ok(
          words[1] && sub.commands.includes(words[1]),
          `README: \`${line.trim()}\`: "immutd ${cmd}" has the subcommands ${sub.commands.join(", ")}`,
        );
        path.push(words[1] ?? "");
      }
      const own = await helpFor(path);
      for (const o of options) {
        assert.ok(
          own.options.includes(o) || top.options.includes(o),
          `README: \`${line.trim()}\`: immutd ${path.join(" ")} has no option ${o}`,
        );
      }
    }
  });

  it("has every command of `immutd --help` in its command table", async () => {
    const table = readme.split("\n").filter((l) => l.startsWith("| `immutd "));
    const missing: string[] = [];
    for (const cmd of top.commands.filter((c) => c !== "help")) {
      const sub = await helpFor([cmd]);
      const names = sub.commands.length > 0 ? sub.commands.map((s) => `${cmd} ${s}`) : [cmd];
      for (const name of names.filter((n) => !n.endsWith(" help"))) {
        if (!table.some((l) => l.startsWith(`| \`immutd ${name}`))) missing.push(`immutd ${name}`);
      }
    }
    assert.deepEqual(missing, [], `README's "## Commands" table lacks: ${missing.join(", ")}`);
  });
});

describe("README's container section", () => {
  it("shows a config that validates", () => {
    const configs = blocks(readme, "yaml").filter((b) =>
      b.text.includes("masterKeyFile: /run/secrets/"),
    );
    assert.equal(configs.length, 1, "one container config (masterKeyFile from /run/secrets)");
    const files: string[] = [];
    const { config } = parseConfig(configs[0]?.text ?? "", "README.md", {
      env: { IMMUTD_WRITER_ACCESS_KEY_ID: "AKW", IMMUTD_READER_ACCESS_KEY_ID: "AKR" },
      readSecretFile: (p) => {
        files.push(p);
        return Buffer.from(/master[._]key$/.test(p) ? `${"ef".repeat(32)}\n` : "secret\n");
      },
    });
    assert.ok(
      files.length >= 3 && files.every((f) => f.startsWith("/run/secrets/")),
      String(files),
    );
    assert.equal(config.catalog, "/var/lib/immutd/catalog.db");
    assert.ok(config.http, "the HEALTHCHECK needs http.listen");
    assert.ok(config.verify.schedule, "keepLatestLocked only runs when the daemon verifies");
    assert.match(read("Dockerfile"), new RegExp(`http://${config.http.listen}/healthz`));
    // a container's hostname changes with every new container: object keys need a fixed host
    assert.match(configs[0]?.text ?? "", /^host: \S+/m);
  });

  it("shows a compose file: a read-only sidecar with the data read-only and the catalog on a volume", () => {
    const composes = blocks(readme, "yaml").filter((b) => /^services:/m.test(b.text));
    assert.equal(composes.length, 1, "one compose file");
    const compose = parseYaml(composes[0]?.text ?? "") as {
      services: Record<string, Record<string, unknown>>;
      volumes?: Record<string, unknown>;
    };
    const immutd = compose.services.immutd;
    assert.ok(immutd, "a service named immutd");
    assert.equal(immutd.read_only, true);
    assert.deepEqual(immutd.cap_drop, ["ALL"]);
    const volumes = (immutd.volumes ?? []) as string[];
    assert.ok(
      volumes.some((v) => /:\/etc\/immutd\/config\.yaml:ro$/.test(v)),
      String(volumes),
    );
    assert.ok(
      volumes.some((v) => /^[\w-]+:\/var\/lib\/immutd$/.test(v)),
      String(volumes),
    );
    const data = volumes.filter((v) => v.startsWith("app-data:"));
    assert.ok(data.length === 1 && data[0]?.endsWith(":ro"), "the app's volume, read-only");
    const app = Object.entries(compose.services).find(([name]) => name !== "immutd")?.[1];
    assert.ok(((app?.volumes ?? []) as string[]).some((v) => v.startsWith("app-data:")));
  });
});

describe("Node.js versions", () => {
  const engines = (JSON.parse(read("package.json")) as { engines: { node: string } }).engines.node;
  const ranges = parseEngines(engines);
  const majors = ranges.map((r) => r[0]);
  const oldest = ranges[0] ?? ([0, 0, 0] as const);
  const imageMajor = Number(/^ARG NODE_VERSION=(\d+)$/m.exec(read("Dockerfile"))?.[1]);

  it("CI tests every allowed release line, the oldest at its lowest allowed version", () => {
    const line = /^NODE_VERSIONS=\(([^)]*)\)$/m.exec(read(".ci/run"))?.[1];
    assert.ok(line, ".ci/run sets NODE_VERSIONS");
    assert.deepEqual(line.split(/\s+/), [oldest.join("."), ...majors.slice(1).map(String)]);
    assert.deepEqual(
      [...majors].sort((a, b) => a - b),
      majors,
      "engines lists the release lines oldest first",
    );
    assert.ok(majors.includes(imageMajor), `the image's Node ${imageMajor} is in engines`);
    assert.match(read("Dockerfile"), /^FROM node:\$\{NODE_VERSION\}-[a-z]+-slim AS build$/m);
    const fetched = /want=\$\{IMMUTD_NODE:-(\d+)\}/.exec(read("scripts/node.sh"))?.[1];
    assert.equal(Number(fetched), imageMajor, "scripts/node.sh fetches the image's Node.js");
  });

  it("README's Node.js section names the supported versions", () => {
    const section = /^## Node\.js support\n([\s\S]*?)(?=^## )/m.exec(readme)?.[1] ?? "";
    assert.match(section, new RegExp(`\\b${oldest[0]}\\.${oldest[1]}\\b`));
    for (const m of majors) assert.match(section, new RegExp(`\\b${m}\\b`), `mentions Node ${m}`);
  });
});

describe("README's links", () => {
  it("every #anchor names a heading (GitHub's slugs), every relative link a file", () => {
    const slug = (h: string) =>
      h
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, "")
        .trim()
        .replace(/\s/g, "-");
    const headings = new Set(
      readme
        .split("\n")
        .filter((l) => /^#{1,6} /.test(l))
        .map((l) => slug(l.replace(/^#+ /, ""))),
    );
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1] ?? "");
    const anchors = links.filter((l) => l.startsWith("#"));
    assert.ok(anchors.length >= 15, `README links its sections (${anchors.length})`);
    for (const a of anchors) assert.ok(headings.has(a.slice(1)), `README: no heading for ${a}`);
    for (const l of links.filter((l) => !/^(#|https?:)/.test(l))) {
      assert.ok(existsSync(join(REPO, l.split("#")[0] ?? "")), `README links ${l}: no such file`);
    }
  });
});
