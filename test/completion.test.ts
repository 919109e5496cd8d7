/**
 * Shell completion and the man page, as a user meets them: the scripts
 * `immutd completion bash|zsh|fish` print are run in the real shells (bash's
 * COMP_WORDS/COMPREPLY protocol, fish's `complete -C`, zsh with its
 * completion builtins stood in for), the page `immutd man` prints goes through
 * mandoc's and groff's checkers, and every command and option that each
 * command's own `--help` lists (parsed from that text, not from the code) is
 * offered by every shell and described in the page, so neither can drift from
 * --help. The job and target names come from the config through the hidden
 * `__complete`: names only, never a secret, nothing at all for a broken
 * config, and no name a shell would expand.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Command } from "commander";
import { manPage } from "../src/cli/manpage.js";
import { CLI, runCli } from "./support/cli.js";

const work = mkdtempSync(join(tmpdir(), "immutd-completion-"));
after(() => rmSync(work, { recursive: true, force: true }));

/** `immutd` on PATH as an installed package puts it there (the scripts call it by name). */
const bin = join(work, "bin");
mkdirSync(bin);
writeFileSync(join(bin, "immutd"), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
chmodSync(join(bin, "immutd"), 0o755);
const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, IMMUTD_CONFIG: "" };

function sh(cmd: string, args: string[], input?: string) {
  const r = spawnSync(cmd, args, { env, encoding: "utf8", input, timeout: 60_000, cwd: work });
  assert.equal(r.error, undefined, `${cmd} must be installed (Debian: apt-get install ${cmd})`);
  return r;
}

async function immutd(args: string[]): Promise<string> {
  const r = await runCli(args);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

interface HelpCommand {
  path: string[];
  subcommands: string[];
  options: string[];
}

/** A help section ("Options:", "Commands:"): the first word group of each entry line. */
function section(help: string, title: string): string[] {
  const lines = help.split("\n");
  const start = lines.indexOf(`${title}:`);
  if (start < 0) return [];
  const out: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line === "" || !line.startsWith(" ")) break;
    const m = /^ {2}(\S.*?)(?: {2,}|$)/.exec(line);
    if (m?.[1]) out.push(m[1]);
  }
  return out;
}

/** Every command as its own --help describes it, walking the "Commands:" lists. */
async function helpTree(path: string[] = []): Promise<HelpCommand[]> {
  const help = await immutd([...path, "--help"]);
  const subcommands = section(help, "Commands").map((e) => e.split(" ")[0] ?? "");
  const options = section(help, "Options").flatMap((e) =>
    [...e.matchAll(/(?:^|[ ,])(--?[A-Za-z][\w-]*)/g)].map((m) => m[1] ?? ""),
  );
  const here = { path, subcommands, options };
  const below = await Promise.all(
    subcommands.filter((s) => s !== "help").map((s) => helpTree([...path, s])),
  );
  return [here, ...below.flat()];
}

/** What bash's completion offers for the words typed, the last one being completed. */
function bashComplete(script: string, words: string[]): string[] {
  const r = sh("bash", [
    "-c",
    `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((\${#COMP_WORDS[@]} - 1)); _immutd; printf '%s\\n' "\${COMPREPLY[@]}"`,
    "bash",
    script,
    ...words,
  ]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "", "completion prints nothing on stderr");
  return r.stdout.split("\n").filter((l) => l !== "");
}

/** What fish offers for a command line (its own `complete -C`), candidates only. */
function fishComplete(script: string, line: string): string[] {
  const r = sh("fish", [
    "--no-config",
    "-c",
    `source $argv[1]; complete -C $argv[2]`,
    script,
    line,
  ]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => l.split("\t")[0] ?? "");
}

/**
 * What zsh's completion function offers: words/CURRENT/PREFIX set as zsh's
 * completion system sets them, and compadd/_describe/_files recording what
 * they are given (they only work inside a completion widget).
 */
function zshComplete(script: string, words: string[]): string[] {
  const r = sh("zsh", [
    "-f",
    "-c",
    `compdef() { :; }
compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }
_describe() { local -a got; got=("\${(@P)4}"); print -l -- "\${got[@]%%:*}"; }
_files() { print -- "<files $*>"; }
source "$1"; shift
words=("$@"); CURRENT=$#words; PREFIX=$words[CURRENT]
_immutd | while read -r w; do [[ $w == "$PREFIX"* || $w == "<files"* ]] && print -r -- "$w"; done`,
    "zsh",
    script,
    ...words,
  ]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split("\n").filter((l) => l !== "");
}

const CONFIG = `targets:
  main:
    endpoint: https://s3.example.net
    bucket: backups
    writer: { accessKeyId: AKW, secretAccessKey: "writer-S3CRET" }
  offsite: { endpoint: https://s3.example.org, bucket: b }
masterKey: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
jobs:
  - { name: etc, target: main, paths: [/etc] }
  - { name: home.daily, target: main, paths: [/home] }
  - { name: "$(touch ${join(work, "pwned")})", target: main, paths: [/x] }
  - { name: "a b", target: main, paths: [/x] }
`;

describe("shell completion and man page", () => {
  let commands: HelpCommand[] = [];
  const scripts: Record<"bash" | "zsh" | "fish", string> = { bash: "", zsh: "", fish: "" };
  let page = "";
  const config = join(work, "config.yaml");
  writeFileSync(config, CONFIG);

  before(async () => {
    commands = await helpTree();
    for (const shell of ["bash", "zsh", "fish"] as const) {
      scripts[shell] = join(work, `immutd.${shell}`);
      writeFileSync(scripts[shell], await immutd(["completion", shell]));
    }
    page = await immutd(["man"]);
    writeFileSync(join(work, "immutd.1"), page);
  });

  it("bash completes subcommands, nested ones, options, choices and paths", () => {
    const s = scripts.bash;
    assert.deepEqual(bashComplete(s, ["immutd", "res"]), ["restore"]);
    assert.deepEqual(bashComplete(s, ["immutd", "catalog", ""]).sort(), ["help", "rebuild"]);
    assert.deepEqual(bashComplete(s, ["immutd", "config", "ch"]), ["check"]);
    assert.deepEqual(bashComplete(s, ["immutd", "key", "g"]), ["generate"]);
    assert.deepEqual(bashComplete(s, ["immutd", "catalog", "rebuild", "--m"]), ["--merge"]);
    assert.deepEqual(bashComplete(s, ["immutd", "--log-format", ""]), ["json", "pretty"]);
    assert.deepEqual(bashComplete(s, ["immutd", "list", "--log-level", "w"]), ["warn"]);
    assert.deepEqual(bashComplete(s, ["immutd", "completion", "z"]), ["zsh"]);
    // as readline splits --opt=value: "--opt" "=" "value"
    assert.deepEqual(bashComplete(s, ["immutd", "--log-format", "=", "p"]), ["pretty"]);
    assert.deepEqual(bashComplete(s, ["immutd", "--log-format", "="]), ["json", "pretty"]);
    assert.deepEqual(bashComplete(s, ["immutd", "--log-format", "=", "json", "ca"]), ["catalog"]);
    // a file argument and --config complete paths; an option's value is not taken for a command
    assert.deepEqual(bashComplete(s, ["immutd", "key", "generate", join(work, "config.y")]), [
      config,
    ]);
    assert.deepEqual(bashComplete(s, ["immutd", "--config", join(work, "config.y")]), [config]);
    assert.deepEqual(
      bashComplete(s, ["immutd", "--config", "catalog", "re"]),
      ["restore"],
      "catalog is the value of --config",
    );
  });

  it("every shell offers the job and target names of the config given on the line, and only safe ones", () => {
    const jobs = ["etc", "home.daily"];
    const targets = ["main", "offsite"];
    const b = scripts.bash;
    assert.deepEqual(bashComplete(b, ["immutd", "-c", config, "restore", ""]), jobs);
    assert.deepEqual(bashComplete(b, ["immutd", `--config=${config}`, "backup", "etc", ""]), jobs);
    assert.deepEqual(bashComplete(b, ["immutd", "--config", "=", config, "restore", ""]), jobs);
    assert.deepEqual(bashComplete(b, ["immutd", "list", "--config", config, "--job", "h"]), [
      "home.daily",
    ]);
    assert.deepEqual(
      bashComplete(b, ["immutd", "-c", config, "catalog", "rebuild", "--target", ""]),
      targets,
    );
    assert.deepEqual(bashComplete(b, ["immutd", "-c", config, "doctor", "o"]), ["offsite"]);
    assert.deepEqual(fishComplete(scripts.fish, `immutd -c ${config} restore `), jobs);
    assert.deepEqual(fishComplete(scripts.fish, `immutd --config ${config} verify --job `), jobs);
    assert.deepEqual(zshComplete(scripts.zsh, ["immutd", "-c", config, "restore", ""]), jobs);
    assert.deepEqual(zshComplete(scripts.zsh, ["immutd", "-c", config, "init", ""]), targets);
    // the hostile job name was neither offered nor run by any shell
    assert.ok(!existsSync(join(work, "pwned")), "a job name was expanded by a shell");
  });

  it("__complete prints names only: no secret, nothing for a broken, huge or endless config", async () => {
    const ok = await runCli(["--config", config, "__complete", "jobs"]);
    assert.deepEqual([ok.code, ok.stdout, ok.stderr], [0, "etc\nhome.daily\n", ""]);
    const t = await runCli(["--config", config, "__complete", "targets"]);
    assert.equal(t.stdout, "main\noffsite\n");
    assert.ok(!t.stdout.includes("S3CRET") && !ok.stdout.includes("aaaa"));
    const broken = join(work, "broken.yaml");
    writeFileSync(broken, "jobs: [\n  - name: etc\n  target: : :\n");
    const bomb = join(work, "bomb.yaml");
    writeFileSync(
      bomb,
      `a: &a [x,x,x,x,x,x,x,x,x,x]\n${Array.from({ length: 9 }, (_, i) => `${"bcdefghij"[i]}: &${"bcdefghij"[i]} [${Array(10).fill(`*${"abcdefghi"[i]}`).join(",")}]`).join("\n")}\njobs: [{ name: etc }]\n`,
    );
    const huge = join(work, "huge.yaml");
    writeFileSync(huge, `jobs: [{ name: etc }]\n${"#".repeat(2 * 1024 * 1024)}\n`);
    for (const file of [broken, bomb, huge, "/dev/zero", join(work, "absent.yaml"), work]) {
      for (const what of ["jobs", "targets", "secrets"]) {
        const r = await runCli(["--config", file, "__complete", what]);
        assert.deepEqual([r.code, r.stdout, r.stderr], [0, "", ""], `${file} ${what}`);
      }
    }
    // through the shell too: a broken config gives no candidates and no noise
    const r = sh("bash", [
      "-c",
      `source "$1"; COMP_WORDS=(immutd -c "$2" restore ""); COMP_CWORD=4; _immutd; echo "n=\${#COMPREPLY[@]}"`,
      "bash",
      scripts.bash,
      broken,
    ]);
    assert.deepEqual([r.stdout, r.stderr], ["n=0\n", ""]);
  });

  it("every command and option each --help lists is offered by bash, zsh and fish", () => {
    assert.ok(commands.length >= 20, `commands found in --help: ${commands.length}`);
    const nested = commands.filter((c) => c.path.length === 2).map((c) => c.path.join(" "));
    assert.deepEqual(nested.sort(), ["catalog rebuild", "config check", "key generate"]);
    const globals =
      commands[0]?.options.filter((o) => !["-V", "--version", "-h", "--help"].includes(o)) ?? [];
    for (const c of commands) {
      const words = ["immutd", ...c.path];
      const line = words.join(" ");
      for (const [shell, got] of [
        ["bash", bashComplete(scripts.bash, [...words, "-"])],
        ["zsh", zshComplete(scripts.zsh, [...words, "-"])],
        ["fish", fishComplete(scripts.fish, `${line} -`)],
      ] as const) {
        for (const o of [...c.options, ...(c.path.length > 0 ? globals : [])]) {
          assert.ok(
            got.includes(o),
            `${shell}: \`${line} -<TAB>\` offers ${o} (got ${got.join(" ")})`,
          );
        }
      }
      if (c.subcommands.length === 0) continue;
      for (const [shell, got] of [
        ["bash", bashComplete(scripts.bash, [...words, ""])],
        ["zsh", zshComplete(scripts.zsh, [...words, ""])],
        ["fish", fishComplete(scripts.fish, `${line} `)],
      ] as const) {
        assert.deepEqual([...got].sort(), [...c.subcommands].sort(), `${shell}: \`${line} <TAB>\``);
      }
    }
  });

  it("zsh and fish parse their scripts", () => {
    const z = sh("zsh", ["-n", scripts.zsh]);
    assert.deepEqual([z.status, z.stderr], [0, ""]);
    const f = sh("fish", ["--no-config", "-n", scripts.fish]);
    assert.deepEqual([f.status, f.stderr], [0, ""]);
  });

  it("the man page renders without a warning from mandoc or groff", () => {
    const file = join(work, "immutd.1");
    const lint = sh("mandoc", ["-Tlint", "-W", "style", file]);
    assert.deepEqual([lint.status, lint.stdout, lint.stderr], [0, "", ""]);
    const groff = sh("groff", ["-man", "-Tutf8", "-ww", "-z", file]);
    assert.deepEqual([groff.status, groff.stderr], [0, ""]);
    for (const s of [
      "NAME",
      "SYNOPSIS",
      "DESCRIPTION",
      "COMMANDS",
      "EXIT STATUS",
      "FILES",
      "ENVIRONMENT",
    ]) {
      assert.match(page, new RegExp(`^\\.SH "?${s}"?$`, "m"), `section ${s}`);
    }
  });

  it("the man page describes every command and option of --help, and --help's exit codes", async () => {
    const typed = sh("mandoc", ["-Tascii", "-O", "width=200", join(work, "immutd.1")]).stdout;
    // mandoc's overstrike (c BACKSPACE c for bold) back to plain text
    const text = typed
      .split("\b")
      .map((piece, i, all) => (i < all.length - 1 ? piece.slice(0, -1) : piece))
      .join("");
    for (const c of commands.slice(1)) {
      const heading = new RegExp(`^ {3}immutd ${c.path.join(" ")}( |$)`, "m");
      assert.match(text, heading, `a section for immutd ${c.path.join(" ")}`);
      const body = text.slice(text.search(heading)).split(/\n {3}immutd /)[0] ?? "";
      for (const o of c.options) {
        assert.match(
          body,
          new RegExp(`(^|[ ,])${o}([ ,]|$)`, "m"),
          `immutd ${c.path.join(" ")}: ${o}`,
        );
      }
    }
    const help = await immutd(["--help"]);
    const codes = [...help.slice(help.indexOf("Exit codes:")).matchAll(/^ {2}(\d+) /gm)].map(
      (m) => m[1],
    );
    assert.ok(codes.length >= 8);
    const status = text.slice(text.indexOf("EXIT STATUS"), text.indexOf("\nFILES"));
    assert.deepEqual(
      [...status.matchAll(/^ {7}(\d+) /gm)].map((m) => m[1]),
      codes,
    );
  });

  it("help text that looks like roff stays text in the page", () => {
    const p = new Command("immutd").description("a\\b");
    p.command("evil")
      .description(".so /etc/passwd")
      .option("--x <file>", "'bl 1000\nsecond line \\fB")
      .addHelpText("after", "\n.ex\n'ab\n");
    const roff = manPage(p);
    assert.ok(!/^[.'](so|bl|ex|ab)\b/m.test(roff), roff);
    assert.match(roff, /^\\&\.so \/etc\/passwd$/m);
    assert.match(roff, /\\efB/);
  });
});
