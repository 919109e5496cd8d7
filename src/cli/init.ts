import type { Command } from "commander";
import { VerifyFindingsError } from "../errors.js";
import { policiesOn } from "../flows/doctor-keep.js";
import { type InitResult, runInit } from "../flows/init.js";
import type { Cli, Context } from "./context.js";
import { plural, writeJson, writeResult } from "./output.js";
import { openTargets, selectTargets } from "./targets.js";

export const initHelp = `
Creates each target's bucket (or only TARGET's) with the admin credential, as
the tutorial does by hand, and sets:
  - Object Lock, and with it versioning (only possible when a bucket is created)
  - the default retention of the target's retention (mode and days)
  - lifecycle rules, limited to the target's prefix: noncurrent versions expire
    retention + lifecycleGraceDays days after they became noncurrent (never
    while locked), delete markers with nothing behind them are removed, and
    incomplete multipart uploads are aborted after 1 day
  - with a keep policy on any of the target's jobs: one rule per hold the
    policies can give (tag immutd-keep=weekly-8 and so on), expiring a backup
    that hold (a month counts 31 days) + lifecycleGraceDays after it was made
    and removing it a day later, never while locked; not on providers whose
    rules cannot filter by tag (Backblaze B2, Hetzner): see README, Retention

On an existing bucket it shows what differs and changes only what makes the
bucket stricter: a longer default retention, GOVERNANCE to COMPLIANCE, missing
rules, a longer noncurrent-version expiry. It never shortens a retention,
disables or removes anything, and leaves lifecycle rules it did not write
alone. Running it again changes nothing. Each line shows what was found and
done (ok, create, set, add, update, kept, cannot-fix).

Needs targets.<name>.credentials.admin (the bucket owner; the tutorial's main
user). The writer and reader cannot and should not do this.

--json prints one JSON document on stdout instead of the lines: {"dryRun",
"targets": [{"target", "bucket", "endpoint", "changed", "steps": [{"action",
"setting", "detail"}], "problems": [{"kind", "message", "fix"}]}]} (README
"JSON output").

Exit codes: 0 the bucket is as configured (or stricter), 4 something is still
wrong that init cannot or will not fix (e.g. an existing bucket without Object
Lock, or someone else's lifecycle rule that expires backups inside their
retention), 2 unknown target, 78 configuration error (e.g. no admin credential).

Examples:
  immutd init                 # every target
  immutd init offsite --dry-run
  immutd init --json | jq '.targets[].problems'
`;

export async function initCommand(
  ctx: Context,
  name: string | undefined,
  opts: { dryRun?: boolean; json?: boolean },
): Promise<void> {
  const list = selectTargets(ctx.config, name);
  const open = openTargets(list);
  const problems: string[] = [];
  const docs: InitTargetDocument[] = [];
  try {
    for (const tc of list) {
      const result = await runInit({
        target: open.targets[tc.name] as NonNullable<(typeof open.targets)[string]>,
        targetConfig: tc,
        policies: policiesOn(ctx.config, tc),
        log: ctx.log,
        ...(opts.dryRun ? { dryRun: true } : {}),
      });
      if (opts.json) docs.push(targetDocument(result, tc.endpoint));
      else writeResult(render(result, tc.endpoint, opts.dryRun === true));
      problems.push(...result.problems.map((p) => p.message));
    }
  } finally {
    open.close();
  }
  if (opts.json) writeJson({ dryRun: opts.dryRun === true, targets: docs });
  if (problems.length) {
    // Each problem is on stdout already (a PROBLEM line, or in the document): the exit message counts them.
    throw new VerifyFindingsError(
      `${plural(problems.length, "problem")} ${problems.length === 1 ? "remains" : "remain"} that init does not fix (see above)`,
    );
  }
}

/** One target of `init --json` (README "JSON output"). */
export interface InitTargetDocument {
  target: string;
  bucket: string;
  endpoint: string;
  changed: boolean;
  steps: { action: string; setting: string; detail: string }[];
  problems: { kind: string; message: string; fix: string }[];
}

function targetDocument(r: InitResult, endpoint: string): InitTargetDocument {
  return {
    target: r.target,
    bucket: r.bucket,
    endpoint,
    changed: r.changed,
    steps: r.plan.steps.map((s) => ({ action: s.action, setting: s.setting, detail: s.detail })),
    problems: r.problems.map((p) => ({ kind: p.kind, message: p.message, fix: p.fix })),
  };
}

function render(r: InitResult, endpoint: string, dryRun: boolean): string {
  const lines = [
    `target ${r.target}: bucket ${r.bucket} at ${endpoint}${dryRun ? " (dry run: nothing changed)" : ""}`,
  ];
  const width = Math.max(...r.plan.steps.map((s) => s.setting.length));
  for (const s of r.plan.steps) {
    lines.push(`  ${s.action.padEnd(10)} ${s.setting.padEnd(width)}  ${s.detail}`);
  }
  for (const p of r.problems) lines.push(`  PROBLEM    ${p.message}; ${p.fix}`);
  const summary = dryRun
    ? "  (run without --dry-run to apply)"
    : r.changed
      ? "  done: the bucket now enforces the target's settings"
      : "  nothing to change";
  lines.push(summary);
  return `${lines.join("\n")}\n`;
}

export function registerInit(p: Command, cli: Cli): void {
  p.command("init")
    .description("create or tighten a target's bucket: Object Lock, default retention, lifecycle")
    .argument("[target]", "target name (default: every target)")
    .option("--dry-run", "show what would change, change nothing")
    .option("--json", "print the result as one JSON document (README: JSON output)")
    .addHelpText("after", initHelp)
    .action((target: string | undefined, opts: { dryRun?: boolean; json?: boolean }) =>
      cli.withContext((ctx) => initCommand(ctx, target, opts)),
    );
}
