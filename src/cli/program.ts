/**
 * The immutd command line. Each subcommand lives in its own file in src/cli/; this file
 * wires them to commander and maps every error to its exit code in one place
 * (errors.ts decides the codes). src/cli.ts is the executable: it checks the
 * Node.js version before this module (and the SDK) is loaded.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { ExitCode, ImmutdError } from "../errors.js";
import { serializeError } from "../log.js";
import { PACKAGE_JSON } from "../paths.js";
import { registerAudit } from "./audit.js";
import { registerBackup } from "./backup.js";
import { registerFind, registerLs } from "./browse.js";
import { registerCatalog } from "./catalog.js";
import { registerCompletion } from "./completion.js";
import { registerConfig } from "./config.js";
import { type Cli, type GlobalOptions, openContext } from "./context.js";
import { registerDoctor } from "./doctor.js";
import { leaveHeapToV8 } from "./heap.js";
import { registerInit } from "./init.js";
import { registerKey } from "./key.js";
import { registerList } from "./list.js";
import { registerMan } from "./manpage.js";
import {
  handleStdoutErrors,
  jsonMode,
  reportFailure,
  reportUsageError,
  setJsonMode,
} from "./output.js";
import { registerPlan } from "./plan.js";
import { type RestoreCliOptions, restoreCommand, restoreHelp } from "./restore.js";
import { registerRun } from "./run.js";
import { registerStatus } from "./status.js";
import { registerVerify } from "./verify.js";

const pkg = JSON.parse(readFileSync(PACKAGE_JSON, "utf8")) as {
  version: string;
};

const EXIT_CODES = `
Exit codes:
  0   success
  1   an error outside a backup job (S3 failed or refused a request, a safety
      check refused, a restore was cancelled); "unexpected error" is a bug
  2   usage error (unknown command, option or job)
  3   one or more jobs failed, or a restore failed or is incomplete
  4   verify or audit found problems, doctor has a FAIL, or init left something it cannot fix
  5   backup: every job succeeded, but some with warnings (files left out)
  75  another immutd holds the lock (a daemon on this catalog, or the job is running)
  78  configuration error (the message names the file, line and key), a
      catalog that cannot be used (a directory, damaged, read-only for a
      command that records, a full disk), or a Node.js older than immutd supports
  130 a second SIGINT/SIGTERM more than 1 s after the first: exited at once,
      without cleaning up (the next backup, verify or daemon start reconciles)

Output: results (tables, reports, summaries) on stdout; logs, the progress
line (at a terminal only) and the closing "immutd: ..." message on stderr.
With --json a command prints exactly one JSON document on stdout; a failure
before it has a result prints {"error": {"type", "message", "exitCode"}}
instead, with the same exit code (README: "JSON output").

Configuration: --config FILE, else $IMMUTD_CONFIG, else /etc/immutd/config.yaml.
A fully commented example is config.example.yaml in the package.
`;

/**
 * Every command, in the order --help lists them. A command module exports its
 * registration (options, help, action); adding a command is one import and
 * one line here.
 */
const COMMANDS: readonly ((p: Command, cli: Cli) => void)[] = [
  registerBackup,
  registerRun,
  registerStatus,
  registerList,
  registerPlan,
  registerRestore,
  registerLs,
  registerFind,
  // Immutability assurance: init, verify, audit, doctor (src/flows/init.ts, verify.ts, audit.ts, doctor.ts).
  registerInit,
  registerVerify,
  registerAudit,
  registerDoctor,
  registerCatalog,
  registerConfig,
  registerKey,
  // Generated from the commands above: shell completion and the man page.
  registerCompletion,
  registerMan,
];

function program(): Command {
  const p = rootCommand();
  const cli: Cli = {
    globals: () => p.opts<GlobalOptions>(),
    withContext: async (fn) => {
      const ctx = openContext(p.opts<GlobalOptions>());
      try {
        await fn(ctx);
      } finally {
        ctx.close();
      }
    },
  };
  for (const register of COMMANDS) register(p, cli);
  return p;
}

/**
 * `immutd` itself: its description, global options and the exit codes in
 * --help. Before each action, --json decides where a failure is reported
 * (src/cli/output.ts).
 */
export function rootCommand(): Command {
  return new Command("immutd")
    .description(
      "Immutable backups to S3: tar streams, SSE-C encryption and COMPLIANCE Object Lock, recorded in a local catalog.",
    )
    .version(pkg.version, "-V, --version")
    .option(
      "-c, --config <file>",
      "configuration file (default: $IMMUTD_CONFIG or /etc/immutd/config.yaml)",
    )
    .addOption(
      new Option(
        "--log-level <level>",
        "log level (default: $IMMUTD_LOG_LEVEL, else warn at a terminal and info otherwise)",
      ).choices(["trace", "debug", "info", "warn", "error", "fatal", "silent"]),
    )
    .addOption(
      new Option(
        "--log-format <format>",
        "log format (default: pretty on a terminal, json otherwise)",
      ).choices(["json", "pretty"]),
    )
    .addHelpText("after", EXIT_CODES)
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .hook("preAction", (_root, action) => setJsonMode(action.opts().json === true));
}

/**
 * restore's registration stays here while src/cli/restore.ts is being
 * split (issue 11); it moves there as registerRestore.
 */
function registerRestore(p: Command, cli: Cli): void {
  p.command("restore")
    .description("restore a backup of JOB into a directory, to stdout, or list it")
    .argument("<job>", "the job whose backup to restore")
    .option("--to <dir>", "extract into DIR")
    .option("--stdout", "write the decrypted archive (as stored) to stdout")
    .option("--list", "list the archive's entries")
    .option(
      "--at <time>",
      "newest backup created at or before TIME (ISO-8601, UTC unless it has an offset)",
    )
    .option("--id <n>", "the backup with this catalog id")
    .option("--version-id <v>", "the backup with this S3 version ID")
    .option(
      "--include <pattern>",
      "only paths matching PATTERN (repeatable; a directory includes its contents)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option("--overwrite", "allow a non-empty DIR and replace files in it")
    .option("--devices", "create device nodes and FIFOs (root only)")
    .option(
      "--from-bucket",
      "without the catalog: find versions in the bucket, derive keys from the master key",
    )
    .option("--host <name>", "with --from-bucket: the host name the backups were made under")
    .option(
      "--whole-archive",
      "with --include: read and verify the whole archive, not only the entries' byte ranges",
    )
    .option("--json", "with --to or --list: print the result as one JSON document on stdout")
    .option("--identity <file>", "age identity file for an age-encrypted backup")
    .addHelpText("after", restoreHelp)
    .action((job: string, opts: RestoreCliOptions) =>
      cli.withContext((ctx) => {
        leaveHeapToV8();
        return restoreCommand(ctx, job, opts);
      }),
    );
}

export async function main(argv: string[]): Promise<number> {
  process.umask(0o077); // everything immutd creates (catalog, keys) is private to its user
  handleStdoutErrors();
  try {
    await program().parseAsync(argv);
    return ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === "commander.helpDisplayed" ||
        err.code === "commander.version" ||
        err.exitCode === 0
      ) {
        return ExitCode.ok;
      }
      // Commander already printed the message on stderr; a --json caller gets its document too.
      if (argv.includes("--json")) setJsonMode(true);
      return reportUsageError(err.message.replace(/^error: /, ""));
    }
    const code = reportFailure(err);
    if (!(err instanceof ImmutdError) && !jsonMode()) {
      process.stderr.write(`${JSON.stringify(serializeError(err))}\n`); // for a bug report
    }
    return code;
  }
}
