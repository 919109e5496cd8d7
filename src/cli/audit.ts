/** `immutd audit`: judges every host's backups under a target's prefix from the bucket alone (src/flows/audit.ts). */

import type { Command } from "commander";
import { CancelledError, VerifyFindingsError } from "../errors.js";
import { type AuditReport, auditTargets } from "../flows/audit.js";
import type { Cli, Context } from "./context.js";
import { plural, writeJson, writeResult } from "./output.js";
import { cancelOnStopSignals } from "./signals.js";
import { selectTargets } from "./targets.js";

export const auditHelp = `
Audits every host and job under a target's prefix from the bucket alone, with
the READER credential and the master key only: meant for a machine of its own,
so that a host an attacker owns (its catalog, its own \`verify\`) cannot make
it lie. It needs no jobs and no writer credential; it reads no catalog.

For each manifest (a finding of the kind named):
  - it decodes with the key derived from the master key and names the archive,
    host and job its key says (manifest-invalid); a later version at its key
    (manifest-forged) or a delete marker on it (manifest-hidden) is tampering
  - its archive version exists (missing), has the manifest's size
    (size-mismatch), opens with its SSE-C key (unreadable), and is locked in
    the target's mode until created + the target's retention days
    (not-locked, mode-weak, retention-short); a reader without
    s3:GetObjectRetention gets one lock-unreadable per job
  - per host and job, the newest backup whose archive checks out is not too
    old (too-old): past the SECOND scheduled time after it (the schedule its
    manifest records) plus audit.slackMinutes (default 60), or past
    audit.overrides / audit.maxAgeHours; see README "Auditing many hosts"
Backups past their configured period are not checked (lifecycle may remove
them). A request that still fails after retries is check-failed: never "ok".

Exit codes: 0 no findings, 4 any finding, 2 unknown target, 78 configuration
error. --json prints the report (jobs, findings, notes).

Examples:
  immutd audit
  immutd audit --target offsite --json | jq '.findings[]'
`;

export async function auditCommand(
  ctx: Context,
  opts: { target?: string; json?: boolean },
): Promise<void> {
  const controller = new AbortController();
  const removeSignals = cancelOnStopSignals(
    controller,
    ctx.log,
    "cancelling",
    (sig) => new Error(`received ${sig}`),
  );
  let reports: AuditReport[];
  try {
    reports = await auditTargets(ctx.config, selectTargets(ctx.config, opts.target), {
      signal: controller.signal,
    });
  } catch (err) {
    if (controller.signal.aborted) throw new CancelledError("audit cancelled");
    throw err;
  } finally {
    removeSignals();
  }
  if (opts.json) writeJson(reports.length === 1 ? reports[0] : reports);
  else writeResult(render(reports));
  const n = reports.reduce((s, r) => s + r.findings.length, 0);
  if (n > 0) throw new VerifyFindingsError(`audit found ${plural(n, "problem")}`);
}

function render(reports: readonly AuditReport[]): string {
  const lines: string[] = [];
  for (const r of reports) {
    lines.push(`target ${r.target}  s3://${r.bucket}/${r.prefix}`);
    for (const j of r.jobs) {
      const state = j.findings ? plural(j.findings, "finding") : "ok";
      lines.push(
        `  ${j.host}/${j.job}  ${plural(j.backups, "backup")}  newest ${j.newest ?? "none"}  due by ${j.dueBy ?? "-"}  ${state}`,
      );
    }
    for (const f of r.findings) {
      lines.push(`FINDING  ${f.kind}  ${f.key ?? "-"}  ${f.versionId ?? "-"}\n  ${f.message}`);
    }
    for (const n of r.notes) lines.push(`NOTE  ${n}`);
  }
  return `${lines.join("\n")}\n`;
}

export function registerAudit(p: Command, cli: Cli): void {
  p.command("audit")
    .description(
      "audit every host's backups under a target from the bucket alone; exit 4 on findings",
    )
    .option("--target <name>", "only this target (default: every target)")
    .option("--json", "machine-readable report")
    .addHelpText("after", auditHelp)
    .action((opts: { target?: string; json?: boolean }) =>
      cli.withContext((ctx) => auditCommand(ctx, opts)),
    );
}
