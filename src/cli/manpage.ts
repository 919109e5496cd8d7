/**
 * `immutd man`: the manual page immutd(1) in roff, generated from the command
 * definitions (command-tree.ts): every command with its arguments, options and
 * the text its --help adds, and EXIT STATUS from the exit-code list --help
 * prints. The build writes it to dist/man/immutd.1 (package.json), which the
 * package and the image install.
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { DEFAULT_CONFIG_PATH, DEFAULTS } from "../config/config.js";
import { PACKAGE_JSON } from "../paths.js";
import { allCommands, type CommandSpec, commandTree } from "./command-tree.js";

export function registerMan(p: Command): void {
  p.command("man")
    .description("print the manual page immutd(1) in roff (installed with the package)")
    .addHelpText("after", "\nRead it without installing: immutd man | man -l -\n")
    .action(() => {
      process.stdout.write(manPage(p));
    });
}

const pkg = JSON.parse(readFileSync(PACKAGE_JSON, "utf8")) as {
  version: string;
};

/**
 * Text for roff: backslashes escaped, other than ASCII as named code points
 * (troff reads bytes), a line that would start a request protected.
 */
function esc(s: string): string {
  return s
    .replaceAll("\\", "\\e")
    .replace(
      /[^ -~\n\t]/gu,
      (c) => `\\[u${(c.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, "0")}]`,
    )
    .split("\n")
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join("\n");
}

/** Option and command words: hyphens as real minus signs, so they can be copied. */
function word(s: string): string {
  return esc(s).replaceAll("-", "\\-");
}

/** "-c, --config <file>" as bold flags and an italic placeholder. */
function flags(s: string): string {
  return s
    .split(/(\s*[<[][^>\]]*[>\]])/)
    .map((part) =>
      /[<[]/.test(part) ? `\\fI${word(part)}\\fR` : part ? `\\fB${word(part)}\\fR` : "",
    )
    .join("");
}

/** Text as --help prints it (already laid out), kept as it is. */
function preformatted(text: string): string[] {
  const body = text.replace(/^\n+|\n+$/g, "");
  return body
    ? [
        ".PP",
        ".nf",
        ...esc(body)
          .split("\n")
          .map((l) => l || ".sp"),
        ".fi",
      ]
    : [];
}

export interface ExitCodeEntry {
  code: string;
  text: string;
}

/** The "Exit codes:" list of a help text: each code with its (joined) explanation. */
export function exitCodes(helpText: string): ExitCodeEntry[] {
  const entries: ExitCodeEntry[] = [];
  let inList = false;
  for (const line of helpText.split("\n")) {
    if (/^Exit codes:\s*$/.test(line)) {
      inList = true;
      continue;
    }
    if (!inList) continue;
    const start = /^ {2}(\d+)\s+(.*)$/.exec(line);
    const more = /^ {4,}(\S.*)$/.exec(line);
    if (start) entries.push({ code: start[1] ?? "", text: start[2] ?? "" });
    else if (more && entries.length > 0) {
      const last = entries.at(-1);
      if (last) last.text += ` ${more[1]}`;
    } else break;
  }
  return entries;
}

/** The root's help text with its exit-code list taken out (that becomes EXIT STATUS). */
function withoutExitCodes(helpText: string): string {
  return helpText.replace(/\nExit codes:\n(?: {2}.*\n)+/, "\n");
}

function commandSection(c: CommandSpec): string[] {
  const out = [`.SS ${flags(["immutd", ...c.path].join(" "))} ${esc(c.usage)}`, esc(c.description)];
  for (const a of c.arguments) {
    out.push(".TP", `\\fI${word(a.name)}\\fR${a.variadic ? "..." : ""}`, esc(a.description));
  }
  for (const o of c.options) out.push(".TP", flags(o.flags), esc(o.description));
  out.push(...preformatted(c.helpAfter));
  return out;
}

/** The date on the page: $SOURCE_DATE_EPOCH (reproducible builds), else today. */
function pageDate(env: NodeJS.ProcessEnv): string {
  const epoch = Number(env.SOURCE_DATE_EPOCH);
  return new Date(Number.isFinite(epoch) && epoch > 0 ? epoch * 1000 : Date.now())
    .toISOString()
    .slice(0, 10);
}

export function manPage(root: Command, env: NodeJS.ProcessEnv = process.env): string {
  const tree = commandTree(root);
  const commands = allCommands(tree).slice(1);
  // The environment variables the options' help names ("default: $IMMUTD_CONFIG ...").
  const variables = tree.options.flatMap((o) =>
    [...o.description.matchAll(/\$(IMMUTD_\w+)/g)].map((m) => ({ name: m[1] ?? "", option: o })),
  );
  const lines = [
    `.TH IMMUTD 1 ${pageDate(env)} "immutd ${esc(pkg.version)}" "User Commands"`,
    // no hyphenation, ragged right: option names and paths stay whole
    ".nh",
    ".ad l",
    ".SH NAME",
    `immutd \\- ${esc(tree.description)}`,
    ".SH SYNOPSIS",
    `.B immutd`,
    "[\\fIglobal options\\fR] \\fIcommand\\fR [\\fIoptions\\fR] [\\fIarguments\\fR]",
    ".SH DESCRIPTION",
    esc(tree.description),
    ".PP",
    "Global options, accepted before or after the command:",
    ...tree.options.flatMap((o) => [".TP", flags(o.flags), esc(o.description)]),
    ...preformatted(withoutExitCodes(tree.helpAfter)),
    ".SH COMMANDS",
    ...commands.flatMap(commandSection),
    ".SH EXIT STATUS",
    ...exitCodes(tree.helpAfter).flatMap((e) => [".TP", `.B ${e.code}`, esc(e.text)]),
    ".SH FILES",
    ".TP",
    `.I ${esc(DEFAULT_CONFIG_PATH)}`,
    "the configuration file, unless \\fB\\-\\-config\\fR or \\fBIMMUTD_CONFIG\\fR names another; config.example.yaml in the package is a commented example",
    ".TP",
    `.I ${esc(DEFAULTS.catalog)}`,
    "the catalog (SQLite) when the configuration sets no \\fBcatalog\\fR; \\fBimmutd catalog rebuild\\fR recreates it from the bucket",
    ".SH ENVIRONMENT",
    ...variables.flatMap((v) => [
      ".TP",
      `.B ${esc(v.name)}`,
      `the default for ${flags(v.option.flags)}: ${esc(v.option.description)}`,
    ]),
    ".PP",
    "The configuration can refer to variables as $\\&{NAME}; secrets can be given that way or as files.",
    ".SH SEE ALSO",
    "README.md in the package: configuration, the daemon and systemd units, monitoring, recovery.",
  ];
  return `${fill(lines).join("\n")}\n`;
}

/**
 * Filled text broken into lines of at most 80 characters (man-page style;
 * the formatter refills them), requests and no-fill blocks left as they are.
 */
function fill(lines: string[]): string[] {
  const out: string[] = [];
  let noFill = false;
  for (const line of lines) {
    if (line === ".nf") noFill = true;
    if (line === ".fi") noFill = false;
    if (noFill || line.startsWith(".") || line.length <= 80) {
      out.push(line);
      continue;
    }
    // a line that now starts with a word such as ".nobackup" must not read as a request
    const push = (l: string) => out.push(/^[.']/.test(l) ? `\\&${l}` : l);
    let current = "";
    for (const w of line.split(" ")) {
      if (current && current.length + 1 + w.length > 80) {
        push(current);
        current = w;
      } else current = current ? `${current} ${w}` : w;
    }
    push(current);
  }
  return out;
}
