import type { Command } from "commander";
import { UsageError } from "../errors.js";
import { type JobPlan, planJobs } from "../flows/plan.js";
import type { Cli, Context } from "./context.js";
import { writeJson } from "./output.js";
import { formatBytes, formatTable } from "./progress.js";

export const planHelp = `
Shows what each job's keep policy (keep: in the config) will have the server
remove, and when, from the catalog and the config alone (no request to the
bucket, nothing changes):
  - every backup still in the bucket, soonest removal first: its tiers, its
    immutd-keep tag, its lock (LOCKED UNTIL) and REMOVED AFTER, the earliest
    date the bucket's lifecycle rules remove it: its tag's hold (a month
    counts 31 days) plus lifecycleGraceDays plus one day, never before its
    lock ends. "kept (newest)": the newest backup of a job is not removed
    while keepLatestLocked keeps it locked. "never (no tag)": made before the
    policy, or tagging failed (verify tags it).
  - the steady state: how many backups (and about how many bytes, at the
    mean size of the job's last ten backups) the policy keeps once it has run
    longer than its longest hold, simulated from the job's schedule (one run
    a day for a job without one).
Removal happens only if \`immutd init\` wrote the tier rules and the provider
filters lifecycle rules by tag (not Backblaze B2, Hetzner, Cloudflare R2);
\`immutd verify\` and \`immutd doctor\` check that.

--json prints an array of objects, one per job: job, target, policy, noExpiry
(why nothing is removed, or null), backups (backupId, key, versionId,
createdAt, size, tiers, tag, lockedUntil, removedAfter, note), steadyState
(backups, bytes, byTag, schedule; null without a policy).

Examples:
  immutd plan
  immutd plan --job etc --json
`;

export function planCommand(ctx: Context, opts: { job?: string; json?: boolean }): void {
  if (opts.job !== undefined && !ctx.config.jobs.some((j) => j.name === opts.job)) {
    throw new UsageError(
      `unknown job ${opts.job}; configured jobs: ${ctx.config.jobs.map((j) => j.name).join(", ")}`,
    );
  }
  const plans = planJobs(ctx.config, ctx.catalog(), opts.job);
  if (opts.json) {
    writeJson(plans);
    return;
  }
  process.stdout.write(plans.map(render).join("\n") || "no jobs configured\n");
}

function render(p: JobPlan): string {
  const lines: string[] = [];
  const policy = p.policy
    ? Object.entries(p.policy)
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")
    : "none";
  lines.push(`job ${p.job} (target ${p.target}): keep ${policy}`);
  if (p.noExpiry) lines.push(`  ${p.noExpiry}`);
  if (p.steadyState) {
    const s = p.steadyState;
    lines.push(
      `  steady state: ${s.backups} backups${s.bytes !== null ? `, about ${formatBytes(s.bytes)}` : ""} (${Object.entries(
        s.byTag,
      )
        .map(([t, n]) => `${n} ${t}`)
        .join(", ")}; schedule ${s.schedule})`,
    );
  }
  if (p.backups.length) {
    const rows = p.backups.map((b) => [
      String(b.backupId),
      b.createdAt.slice(0, 19).replace("T", " "),
      formatBytes(b.size),
      b.tiers.join(",") || "-",
      b.tag ?? "-",
      b.lockedUntil?.slice(0, 10) ?? "-",
      b.removedAfter?.slice(0, 10) ??
        (b.note === "newest" ? "kept (newest)" : b.note === "untagged" ? "never (no tag)" : "-"),
    ]);
    lines.push(
      formatTable(
        ["ID", "CREATED (UTC)", "SIZE", "TIERS", "TAG", "LOCKED UNTIL", "REMOVED AFTER"],
        rows,
      )
        .split("\n")
        .map((l) => (l ? `  ${l}` : l))
        .join("\n")
        .trimEnd(),
    );
  } else {
    lines.push("  no backups yet");
  }
  return `${lines.join("\n")}\n`;
}

export function registerPlan(p: Command, cli: Cli): void {
  p.command("plan")
    .description(
      "show what the keep policies will have the server remove when, and the steady state",
    )
    .option("--job <name>", "only this job")
    .option("--json", "machine-readable output")
    .addHelpText("after", planHelp)
    .action((opts: { job?: string; json?: boolean }) =>
      cli.withContext((ctx) => planCommand(ctx, opts)),
    );
}
