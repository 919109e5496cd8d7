/**
 * The immutd command line. Each subcommand lives in src/commands/; this file
 * wires them to commander and maps every error to its exit code in one place
 * (errors.ts decides the codes). src/cli.ts is the executable: it checks the
 * Node.js version before this module (and the SDK) is loaded.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { backupCommand, backupHelp } from "./commands/backup.js";
import {
  catalogRebuildCommand,
  catalogRebuildHelp,
  type RebuildOptions,
} from "./commands/catalog.js";
import { configCheckCommand, configCheckHelp } from "./commands/config.js";
import { type Context, type GlobalOptions, openContext } from "./commands/context.js";
import { doctorCommand, doctorHelp } from "./commands/doctor.js";
import { dryRunCommand } from "./commands/dry-run.js";
import { initCommand, initHelp } from "./commands/init.js";
import {
  type ListFromBucketOptions,
  listCommand,
  listFromBucketCommand,
  listHelp,
} from "./commands/list.js";
import { type RestoreCliOptions, restoreCommand, restoreHelp } from "./commands/restore.js";
import { runCommand, runHelp } from "./commands/run.js";
import { statusCommand, statusHelp } from "./commands/status.js";
import { verifyCommand, verifyHelp } from "./commands/verify.js";
import { describeError, ExitCode, exitCodeFor, ImmutdError, UsageError } from "./errors.js";
import { generateMasterKeyFile } from "./keys.js";
import { serializeError } from "./log.js";

const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
  version: string;
};

const EXIT_CODES = `
Exit codes:
  0   success
  1   an error outside a backup job (S3 failed or refused a request, a safety
      check refused, a restore was cancelled); "unexpected error" is a bug
  2   usage error (unknown command, option or job)
  3   one or more jobs failed, or a restore failed or is incomplete
  4   verify found problems, doctor has a FAIL, or init left something it cannot fix
  5   backup: every job succeeded, but some with warnings (files left out)
  75  another immutd holds the lock (a daemon on this catalog, or the job is running)
  78  configuration error (the message names the file, line and key), a
      catalog that cannot be used (a directory, damaged, read-only for a
      command that records, a full disk), or a Node.js older than immutd supports
  130 a second SIGINT/SIGTERM more than 1 s after the first: exited at once,
      without cleaning up (the next backup, verify or daemon start reconciles)

Configuration: --config FILE, else $IMMUTD_CONFIG, else /etc/immutd/config.yaml.
A fully commented example is config.example.yaml in the package.
`;

function program(): Command {
  const p = new Command("immutd")
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
    .exitOverride();

  const globals = () => p.opts<GlobalOptions>();
  const withContext = async (fn: (ctx: Context) => Promise<void> | void) => {
    const ctx = openContext(globals());
    try {
      await fn(ctx);
    } finally {
      ctx.close();
    }
  };

  p.command("backup")
    .description("run backup jobs now")
    .argument("[jobs...]", "job names (default: all jobs)")
    .option(
      "--dry-run",
      "walk the jobs' paths as a backup would and print what it would archive; nothing is run, uploaded or recorded",
    )
    .option("--list", "with --dry-run: print every path that would be archived")
    .addHelpText("after", backupHelp)
    .action((jobs: string[], opts: { dryRun?: boolean; list?: boolean }) =>
      withContext((ctx) => {
        if (opts.list && !opts.dryRun) throw new UsageError("--list needs --dry-run");
        return opts.dryRun ? dryRunCommand(ctx, jobs, opts) : backupCommand(ctx, jobs);
      }),
    );

  p.command("run")
    .description("run the scheduling daemon (what systemd and containers start)")
    .addHelpText("after", runHelp)
    .action(() => runCommand(globals()));

  p.command("status")
    .description("each job's last run, last success and next run")
    .option("--json", "machine-readable output")
    .addHelpText("after", statusHelp)
    .action((opts: { json?: boolean }) => withContext((ctx) => statusCommand(ctx, opts)));

  p.command("list")
    .description("list the backups recorded in the catalog (or, with --from-bucket, in the bucket)")
    .option("--job <name>", "only this job")
    .option("--json", "machine-readable output")
    .option(
      "--from-bucket",
      "without the catalog: list the backups the bucket's manifests describe",
    )
    .option("--host <name>", "with --from-bucket: the host name the backups were made under")
    .option("--all-hosts", "with --from-bucket: every host under each target's prefix")
    .addHelpText("after", listHelp)
    .action((opts: ListFromBucketOptions & { fromBucket?: boolean }) =>
      withContext((ctx) => {
        if (opts.fromBucket) return listFromBucketCommand(ctx, opts);
        if (opts.host !== undefined || opts.allHosts)
          throw new UsageError("--host and --all-hosts go with --from-bucket");
        return listCommand(ctx, opts);
      }),
    );

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
    .addHelpText("after", restoreHelp)
    .action((job: string, opts: RestoreCliOptions) =>
      withContext((ctx) => restoreCommand(ctx, job, opts)),
    );

  // Immutability assurance: init, verify, doctor (src/init.ts, src/verify.ts, src/doctor.ts).
  p.command("init")
    .description("create or tighten a target's bucket: Object Lock, default retention, lifecycle")
    .argument("[target]", "target name (default: every target)")
    .option("--dry-run", "show what would change, change nothing")
    .addHelpText("after", initHelp)
    .action((target: string | undefined, opts: { dryRun?: boolean }) =>
      withContext((ctx) => initCommand(ctx, target, opts)),
    );

  p.command("verify")
    .description("prove that every backup is still there, locked and readable; exit 4 on findings")
    .option("--job <name>", "only this job's backups")
    .option("--deep", "also download the newest backup of each job and check its SHA-256")
    .option("--json", "machine-readable report")
    .addHelpText("after", verifyHelp)
    .action((opts: { job?: string; deep?: boolean; json?: boolean }) =>
      withContext((ctx) => verifyCommand(ctx, opts)),
    );

  p.command("doctor")
    .description("check endpoint, clock, bucket and credentials with a canary; exit 4 on FAIL")
    .argument("[target]", "target name (default: every target)")
    .option("--json", "machine-readable report")
    .addHelpText("after", doctorHelp)
    .action((target: string | undefined, opts: { json?: boolean }) =>
      withContext((ctx) => doctorCommand(ctx, target, opts)),
    );

  const catalog = p.command("catalog").description("catalog tools");
  catalog
    .command("rebuild")
    .description(
      "rebuild the catalog's backups from the manifests in the bucket (reader credential, master key)",
    )
    .option(
      "--host <name>",
      "the host name the backups were made under (default: this config's host)",
    )
    .option("--target <name>", "only this target (default: every target)")
    .option("--merge", "add to a catalog that is not empty; its rows stay as they are")
    .option("--json", "machine-readable report")
    .addHelpText("after", catalogRebuildHelp)
    .action((opts: RebuildOptions) => withContext((ctx) => catalogRebuildCommand(ctx, opts)));

  const config = p.command("config").description("configuration tools");
  config
    .command("check")
    .description("validate the configuration and print it resolved, with secrets redacted")
    .addHelpText("after", configCheckHelp)
    .action(() => configCheckCommand(globals()));

  const key = p.command("key").description("master key tools");
  key
    .command("generate")
    .description("write a new random master key (64 hex characters, mode 0600) to FILE")
    .argument("<file>", "where to write it; an existing file is never overwritten")
    .addHelpText(
      "after",
      "\nEvery backup's SSE-C key is derived from the master key. Keep a copy offline:\nwithout it (and without the catalog) backups cannot be decrypted.\n",
    )
    .action((file: string) => {
      generateMasterKeyFile(file);
      process.stderr.write(
        `wrote a new master key to ${file} (mode 0600); keep a copy somewhere safe and offline\n`,
      );
    });

  return p;
}

export async function main(argv: string[]): Promise<number> {
  process.umask(0o077); // everything immutd creates (catalog, keys) is private to its user
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
      return ExitCode.usage; // commander already printed the message
    }
    const code = exitCodeFor(err);
    if (err instanceof ImmutdError) {
      process.stderr.write(`immutd: ${err.message}\n`);
    } else {
      process.stderr.write(`immutd: unexpected error: ${describeError(err)}\n`);
      process.stderr.write(`${JSON.stringify(serializeError(err))}\n`);
    }
    return code;
  }
}
