/**
 * `immutd completion bash|zsh|fish`: a completion script for the shell,
 * generated from the command definitions (command-tree.ts), so it offers
 * exactly the commands and options `--help` lists. Job and target names are
 * looked up while completing with the hidden `immutd __complete jobs|targets`,
 * which reads only the names from the config: it never reads a secret, and it
 * prints nothing at all for a config it cannot read or parse (a completion must
 * not fill the terminal with errors).
 */
import { readFileSync, statSync } from "node:fs";
import { Argument, type Command } from "commander";
import { parse } from "yaml";
import { configPath } from "../config/config.js";
import { LIMITS } from "../config/problems.js";
import {
  allCommands,
  type CommandSpec,
  commandTree,
  type OptionSpec,
  type ValueKind,
} from "./command-tree.js";
import type { Cli } from "./context.js";

const SHELLS = ["bash", "zsh", "fish"] as const;
type Shell = (typeof SHELLS)[number];

export function registerCompletion(p: Command, cli: Cli): void {
  const c = p
    .command("completion")
    .description("print the shell completion script for SHELL (bash, zsh or fish)")
    .addArgument(new Argument("<shell>", "bash, zsh or fish").choices(SHELLS));
  c.addHelpText(
    "after",
    `
The package ships the three scripts in dist/completion/ and the image has them
where bash-completion, zsh and fish look (README: "Shell completion and man
page"). To load one by hand:
  bash: source <(immutd completion bash)
  zsh:  immutd completion zsh > "\${fpath[1]}/_immutd"
  fish: immutd completion fish > ~/.config/fish/completions/immutd.fish
`,
  ).action((shell: Shell) => {
    process.stdout.write(completionScript(shell, p));
  });

  p.command("__complete", { hidden: true })
    .argument("<what>", "jobs or targets")
    .action((what: string) => {
      const names = what === "jobs" || what === "targets" ? configuredNames(cli, what) : [];
      if (names.length > 0) process.stdout.write(`${names.join("\n")}\n`);
    });
}

export function completionScript(shell: Shell, root: Command): string {
  const tree = commandTree(root);
  switch (shell) {
    case "bash":
      return bashScript(tree);
    case "zsh":
      return zshScript(tree);
    case "fish":
      return fishScript(tree);
  }
}

/** A job name or target name as the config schema allows it: nothing a shell could expand. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * The job or target names of the config, read without resolving anything
 * (no secret file, no ${VAR}); [] whatever goes wrong.
 */
function configuredNames(cli: Cli, what: "jobs" | "targets"): string[] {
  try {
    const file = configPath(cli.globals().config);
    const st = statSync(file);
    if (!st.isFile() || st.size > LIMITS.configBytes) return [];
    const raw: unknown = parse(readFileSync(file, "utf8"), {
      maxAliasCount: LIMITS.aliasNodes,
      prettyErrors: false,
    });
    if (typeof raw !== "object" || raw === null) return [];
    const section = (raw as Record<string, unknown>)[what];
    const names =
      what === "jobs"
        ? (Array.isArray(section) ? section : []).map((j: unknown) =>
            typeof j === "object" && j !== null ? (j as Record<string, unknown>).name : undefined,
          )
        : typeof section === "object" && section !== null
          ? Object.keys(section)
          : [];
    return names.filter((n): n is string => typeof n === "string" && NAME.test(n));
  } catch {
    return [];
  }
}

/** The global options a subcommand accepts too (all but --help and --version). */
function globalOptions(tree: CommandSpec): OptionSpec[] {
  return tree.options.filter((o) => o.long !== "--help" && o.long !== "--version");
}

function optionNames(o: OptionSpec): string[] {
  return [o.short, o.long].filter((n): n is string => n !== undefined);
}

/** A kind as one word for the scripts: "jobs", "file", "choices a b c". */
function kindWord(v: ValueKind): string {
  return v.kind === "choices" ? `choices ${v.choices.join(" ")}` : v.kind;
}

/** The config option of immutd itself, whose value the name look-ups pass on. */
function configOption(tree: CommandSpec): string[] {
  const o = tree.options.find((o) => o.long === "--config");
  return o ? optionNames(o) : [];
}

/** Single-quoted for sh-like shells. */
function sq(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

const key = (c: CommandSpec) => ["immutd", ...c.path].join(" ");

/**
 * The tables the bash and zsh scripts look things up in, keyed by command
 * ("immutd catalog rebuild"): subcommands, options (with the global ones),
 * the value kind of each option that takes one ("KEY|--job"), and of each
 * positional argument ("KEY|0", "KEY|rest" for a variadic one).
 */
function tables(
  tree: CommandSpec,
  sub: (s: CommandSpec) => string,
  option: (o: OptionSpec, name: string) => string,
  join: string,
): Record<"subs" | "opts" | "value" | "args", [string, string][]> {
  const t: Record<"subs" | "opts" | "value" | "args", [string, string][]> = {
    subs: [],
    opts: [],
    value: [],
    args: [],
  };
  for (const c of allCommands(tree)) {
    const k = key(c);
    const opts = [...c.options, ...(c.path.length > 0 ? globalOptions(tree) : [])];
    t.subs.push([k, c.subcommands.map(sub).join(join)]);
    t.opts.push([k, opts.flatMap((o) => optionNames(o).map((n) => option(o, n))).join(join)]);
    for (const o of c.options) {
      const v = o.value;
      if (v)
        t.value.push(...optionNames(o).map((n): [string, string] => [`${k}|${n}`, kindWord(v)]));
    }
    c.arguments.forEach((a, i) => {
      t.args.push([`${k}|${i}`, kindWord(a.value)]);
      if (a.variadic) t.args.push([`${k}|rest`, kindWord(a.value)]);
    });
  }
  return t;
}

function bashScript(tree: CommandSpec): string {
  const t = tables(
    tree,
    (s) => s.path.at(-1) ?? "",
    (_, n) => n,
    " ",
  );
  const data = Object.entries(t).map(
    ([name, rows]) =>
      `declare -gA _immutd_${name}=(\n${rows.map(([k, v]) => `  [${sq(k)}]=${sq(v)}`).join("\n")}\n)`,
  );
  const config = configOption(tree);
  return `# bash completion for immutd, generated by \`immutd completion bash\` from the
# same command definitions as --help. Job and target names come from
# \`immutd __complete jobs|targets\` (names only, silent on a broken config).
${data.join("\n")}

# The kind of value option $2 of command $1 takes (its own, else a global one).
_immutd_value_kind() {
  local k="\${_immutd_value[$1|$2]:-\${_immutd_value[immutd|$2]}}"
  [[ -n $k ]] && printf '%s' "$k"
}

_immutd_complete_value() {
  local kind=$1 cur=$2
  case $kind in
    jobs | targets)
      local names
      names=$("\${COMP_WORDS[0]}" \${config:+--config "$config"} __complete "$kind" 2>/dev/null)
      mapfile -t COMPREPLY < <(compgen -W "$names" -- "$cur") ;;
    file) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    dir) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    choices\\ *) mapfile -t COMPREPLY < <(compgen -W "\${kind#choices }" -- "$cur") ;;
    *) COMPREPLY=() ;;
  esac
}

_immutd() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" cmd=immutd word kind value="" config="" n=0 i=1
  COMPREPLY=()
  while ((i < COMP_CWORD)); do
    word="\${COMP_WORDS[i]}"
    case $word in
${config.map((n) => `      ${n}) config="\${COMP_WORDS[i + 1]}"; [[ $config == = ]] && config="\${COMP_WORDS[i + 2]}" ;;`).join("\n")}
${config
  .filter((n) => n.startsWith("--"))
  .map((n) => `      ${n}=*) config="\${word#*=}" ;;`)
  .join("\n")}
    esac
    if [[ $word == -* ]]; then
      if [[ $word != *=* ]] && kind=$(_immutd_value_kind "$cmd" "$word"); then
        # readline splits --opt=value into "--opt" "=" "value" (COMP_WORDBREAKS)
        ((i++))
        [[ \${COMP_WORDS[i]} == = ]] && ((i < COMP_CWORD)) && ((i++))
        ((i == COMP_CWORD)) && value=$kind
      fi
    elif [[ " \${_immutd_subs[$cmd]} " == *" $word "* ]]; then
      cmd="$cmd $word"
      n=0
    else
      ((n++))
    fi
    ((i++))
  done
  if [[ -n $value ]]; then
    [[ $cur == = ]] && cur=""
    _immutd_complete_value "$value" "$cur"
  elif [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "\${_immutd_opts[$cmd]}" -- "$cur")
  elif [[ -n \${_immutd_subs[$cmd]} ]]; then
    mapfile -t COMPREPLY < <(compgen -W "\${_immutd_subs[$cmd]}" -- "$cur")
  else
    kind="\${_immutd_args[$cmd|$n]:-\${_immutd_args[$cmd|rest]}}"
    [[ -n $kind ]] && _immutd_complete_value "$kind" "$cur"
  fi
  return 0
}
complete -F _immutd immutd
`;
}

/** "name:description" for zsh's _describe (a colon in the name escaped). */
function described(name: string, description: string): string {
  return `${name.replaceAll(":", "\\:")}:${description.replaceAll("\n", " ")}`;
}

function zshScript(tree: CommandSpec): string {
  const t = tables(
    tree,
    (s) => described(s.path.at(-1) ?? "", s.description),
    (o, n) => described(n, o.description),
    "\n",
  );
  // zsh keeps quotes in a subscript of an assignment (a['k']=v), so each table is one list
  const data = Object.entries(t).map(
    ([name, rows]) =>
      `typeset -gA _immutd_${name}\n_immutd_${name}=(\n${rows.map(([k, v]) => `  ${sq(k)} ${sq(v)}`).join("\n")}\n)`,
  );
  const config = configOption(tree);
  return `#compdef immutd
# zsh completion for immutd, generated by \`immutd completion zsh\` from the
# same command definitions as --help. Job and target names come from
# \`immutd __complete jobs|targets\` (names only, silent on a broken config).
${data.join("\n")}

_immutd_complete_value() {
  local kind=$1
  case $kind in
    jobs|targets) compadd -- \${(f)"$($words[1] \${config:+--config} \${config:+$config} __complete $kind 2>/dev/null)"} ;;
    file) _files ;;
    dir) _files -/ ;;
    choices\\ *) compadd -- \${=kind#choices } ;;
  esac
}

_immutd() {
  local cmd=immutd word kind value="" config="" n=0 i=2
  local -a items
  while (( i < CURRENT )); do
    word=$words[i]
    case $word in
${config.map((n) => `      ${n}) config=$words[i+1] ;;`).join("\n")}
${config
  .filter((n) => n.startsWith("--"))
  .map((n) => `      ${n}=*) config=\${word#*=} ;;`)
  .join("\n")}
    esac
    if [[ $word == -* ]]; then
      kind=\${_immutd_value[$cmd|$word]:-\${_immutd_value[immutd|$word]}}
      if [[ $word != *=* && -n $kind ]]; then
        (( i++ ))
        (( i == CURRENT )) && value=$kind
      fi
    elif (( \${\${(f)_immutd_subs[$cmd]}[(I)$word:*]} )); then
      cmd="$cmd $word"
      n=0
    else
      (( n++ ))
    fi
    (( i++ ))
  done
  if [[ -n $value ]]; then
    _immutd_complete_value $value
  elif [[ $PREFIX == -* ]]; then
    items=(\${(f)_immutd_opts[$cmd]})
    _describe -t options option items
  elif [[ -n $_immutd_subs[$cmd] ]]; then
    items=(\${(f)_immutd_subs[$cmd]})
    _describe -t commands command items
  else
    kind=\${_immutd_args[$cmd|$n]:-\${_immutd_args[$cmd|rest]}}
    [[ -n $kind ]] && _immutd_complete_value $kind
  fi
}

if [[ $funcstack[1] == _immutd ]]; then
  _immutd "$@"
else
  compdef _immutd immutd
fi
`;
}

/** Single-quoted for fish (backslash and quote escaped). */
function fq(s: string): string {
  return `'${s.replaceAll("\\", "\\\\").replaceAll("'", "\\'").replaceAll("\n", " ")}'`;
}

function fishValue(v: ValueKind): string {
  switch (v.kind) {
    case "choices":
      return `-x -a ${fq(v.choices.join(" "))}`;
    case "jobs":
    case "targets":
      return `-x -a ${fq(`(__immutd_names ${v.kind})`)}`;
    case "file":
      return "-r -F";
    case "dir":
      return `-x -a ${fq("(__fish_complete_directories)")}`;
    case "text":
      return "-x";
  }
}

function fishOption(o: OptionSpec, condition: string | undefined): string {
  const parts = ["complete -c immutd"];
  if (condition) parts.push(`-n ${fq(condition)}`);
  if (o.short) parts.push(`-s ${o.short.slice(1)}`);
  if (o.long) parts.push(`-l ${o.long.slice(2)}`);
  if (o.value) parts.push(fishValue(o.value));
  parts.push(`-d ${fq(o.description)}`);
  return parts.join(" ");
}

function fishScript(tree: CommandSpec): string {
  const commands = allCommands(tree);
  const valued = commands.flatMap((c) =>
    c.options.filter((o) => o.value).flatMap((o) => optionNames(o).map((n) => `${key(c)}|${n}`)),
  );
  const lines: string[] = ["complete -c immutd -f"];
  for (const o of globalOptions(tree)) lines.push(fishOption(o, undefined));
  for (const c of commands) {
    const is = `__immutd_is ${fq(key(c))}`;
    for (const s of c.subcommands) {
      lines.push(`complete -c immutd -n ${fq(is)} -a ${s.path.at(-1)} -d ${fq(s.description)}`);
    }
    const own =
      c.path.length === 0 ? c.options.filter((o) => !globalOptions(tree).includes(o)) : c.options;
    for (const o of own) lines.push(fishOption(o, is));
    for (const a of c.arguments) {
      const v = a.value;
      const what =
        v.kind === "file"
          ? "-F"
          : v.kind === "dir"
            ? `-a ${fq("(__fish_complete_directories)")}`
            : v.kind === "text"
              ? ""
              : `-a ${fq(v.kind === "choices" ? v.choices.join(" ") : `(__immutd_names ${v.kind})`)}`;
      if (what) lines.push(`complete -c immutd -n ${fq(is)} ${what} -d ${fq(a.description)}`);
    }
  }
  const config = configOption(tree);
  return `# fish completion for immutd, generated by \`immutd completion fish\` from the
# same command definitions as --help. Job and target names come from
# \`immutd __complete jobs|targets\` (names only, silent on a broken config).
set -g __immutd_commands ${commands.map((c) => fq(key(c))).join(" ")}
set -g __immutd_valued ${valued.map(fq).join(" ")}

# The command being typed ("immutd catalog rebuild"), skipping option values.
function __immutd_path
    set -l cmd immutd
    set -l skip 0
    for w in (commandline -opc)[2..-1]
        if test $skip = 1
            set skip 0
        else if string match -q -- '-*' $w
            if contains -- "$cmd|$w" $__immutd_valued; or contains -- "immutd|$w" $__immutd_valued
                set skip 1
            end
        else if contains -- "$cmd $w" $__immutd_commands
            set cmd "$cmd $w"
        end
    end
    echo $cmd
end

function __immutd_is
    test (__immutd_path) = $argv[1]
end

# Job or target names of the config given on the line (else the default one).
function __immutd_names
    set -l words (commandline -opc)
    set -l config
    for i in (seq (count $words))
        switch $words[$i]
            case ${config.map(fq).join(" ")}
                set config --config $words[(math $i + 1)]
            case '--config=*'
                set config $words[$i]
        end
    end
    command $words[1] $config __complete $argv[1] 2>/dev/null
end

${lines.join("\n")}
`;
}
