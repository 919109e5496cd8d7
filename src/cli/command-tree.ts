/**
 * The command line as data, read from commander's Command tree: the one
 * source that `--help`, the shell completions (completion.ts) and the man page
 * (manpage.ts) share, so none of them is a hand-kept copy of the options. It
 * shows what `--help` shows (commander's own visibility rules, so hidden
 * commands such as `__complete` stay out) plus the text each command adds
 * after its help.
 */
import type { Argument, Command, Option } from "commander";

/**
 * What a value is, for completion: one of fixed choices, a job or target name
 * of the config (looked up when completing), a path, or free text.
 */
export type ValueKind =
  | { kind: "choices"; choices: string[] }
  | { kind: "jobs" }
  | { kind: "targets" }
  | { kind: "file" }
  | { kind: "dir" }
  | { kind: "text" };

export interface OptionSpec {
  /** As --help shows it: "-c, --config <file>". */
  flags: string;
  long: string | undefined;
  short: string | undefined;
  description: string;
  /** undefined for a flag without a value. */
  value: ValueKind | undefined;
}

export interface ArgumentSpec {
  name: string;
  required: boolean;
  variadic: boolean;
  description: string;
  value: ValueKind;
}

export interface CommandSpec {
  /** The words after `immutd`: [] for immutd itself, ["catalog", "rebuild"]. */
  path: string[];
  description: string;
  /** commander's usage line: "[options] [jobs...]". */
  usage: string;
  options: OptionSpec[];
  arguments: ArgumentSpec[];
  subcommands: CommandSpec[];
  /** Text the command adds after its help (addHelpText "after"), as --help prints it. */
  helpAfter: string;
}

export function commandTree(root: Command): CommandSpec {
  return describe(root, []);
}

/** Every command of the tree, depth first, the root first. */
export function allCommands(spec: CommandSpec): CommandSpec[] {
  return [spec, ...spec.subcommands.flatMap(allCommands)];
}

function describe(cmd: Command, path: string[]): CommandSpec {
  const help = cmd.createHelp();
  return {
    path,
    description: cmd.description(),
    usage: cmd.usage(),
    options: help.visibleOptions(cmd).map(optionSpec),
    arguments: help.visibleArguments(cmd).map(argumentSpec),
    // includes commander's implicit `help [command]`, which --help lists too
    subcommands: help.visibleCommands(cmd).map((c) => describe(c, [...path, c.name()])),
    helpAfter: helpAfter(cmd),
  };
}

function optionSpec(o: Option): OptionSpec {
  const placeholder = /[<[]([^>\]]+)[>\]]/.exec(o.flags)?.[1];
  return {
    flags: o.flags,
    long: o.long,
    short: o.short,
    description: o.description,
    value:
      o.required || o.optional
        ? valueKind(o.attributeName(), placeholder ?? "", o.argChoices)
        : undefined,
  };
}

function argumentSpec(a: Argument): ArgumentSpec {
  return {
    name: a.name(),
    required: a.required,
    variadic: a.variadic,
    description: a.description,
    value: valueKind(a.name(), a.name(), a.argChoices),
  };
}

/**
 * The kind of a value, from the names the command definitions already use:
 * `--job <name>`, `<job>`, `[jobs...]` are jobs; `--target <name>` a target;
 * `<file>` and `<dir>` paths.
 */
function valueKind(name: string, placeholder: string, choices: string[] | undefined): ValueKind {
  if (choices) return { kind: "choices", choices };
  if (name === "job" || name === "jobs") return { kind: "jobs" };
  if (name === "target" || name === "targets") return { kind: "targets" };
  if (placeholder === "file") return { kind: "file" };
  if (placeholder === "dir") return { kind: "dir" };
  return { kind: "text" };
}

/**
 * The text added after the command's help: commander prints it from help
 * events, so it is captured by printing the help into a buffer and taking what
 * follows the generated part.
 */
function helpAfter(cmd: Command): string {
  let out = "";
  const saved = cmd.configureOutput();
  cmd.configureOutput({
    writeOut: (s) => {
      out += s;
    },
    getOutHasColors: () => false,
    getOutHelpWidth: () => 80,
  });
  try {
    cmd.outputHelp();
    const generated = cmd.helpInformation();
    const at = out.indexOf(generated);
    return at < 0 ? "" : out.slice(at + generated.length);
  } finally {
    cmd.configureOutput(saved);
  }
}
