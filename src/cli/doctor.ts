import type { Command } from "commander";
import { VerifyFindingsError } from "../errors.js";
import { type Check, type DoctorReport, runDoctor } from "../flows/doctor.js";
import type { Cli, Context } from "./context.js";
import { plural, writeJson, writeResult } from "./output.js";
import { openTargets, selectTargets } from "./targets.js";

export const doctorHelp = `
The preflight to run first: checks each target (or only TARGET) and prints
one line per check, OK, WARN or FAIL, with what to do:
  endpoint            reachable over TLS with a verified certificate
  clock               skew against the server's Date header (FAIL over 15 min)
  object lock, default retention, lifecycle
                      the bucket settings, as verify checks them
  keep policy         with a keep policy on a job: WARN where the provider
                      cannot expire by tag (Backblaze B2, Hetzner) or the tier
                      rules \`immutd init\` writes are missing or weakened
  writer upload, sse-c, checksum
                      the writer uploads a canary with SSE-C (AWS blocks SSE-C
                      on new buckets since April 2026) and the configured
                      checksum; an upload with a wrong checksum is refused
  canary lock         the canary is locked in COMPLIANCE mode
  reader read         the reader can read it back; writer read: the writer cannot
  reader write        the reader cannot write
  lock extension      the writer can set and extend a version's lock (each
                      backup sets its own when the bucket default gives less
                      than configured; keepLatestLocked extends)
  keep tagging        with a keep policy: the writer tags the canary as each
                      backup is tagged, and the tag reads back (WARN if not:
                      backups stay locked for their tiers but are never removed)
  lock config         the writer and reader cannot change the bucket's default
                      retention (written back unchanged to find out)
  delete (role)       no credential can delete the locked canary
  delete marker (writer)
                      whether the writer can put a delete marker on a key
                      (Object Lock allows it): WARN if it can, since a stolen
                      key could hide backups' latest versions (they stay locked
                      and restorable; verify warns about such markers)

The canary is a tiny SSE-C object <prefix><host>/.immutd-doctor/canary-<time>-<hex>,
locked in COMPLIANCE mode for 1 day (the shortest), that stays until then;
restore and verify ignore it. It is the one object immutd writes that is not
a backup. Only where the server fails a check can one more appear: an upload
with a wrong checksum that it accepted (…-checksum), or one the reader was
allowed to make (…-reader). The lock config check writes the bucket's current
default retention back unchanged. Where the writer may put a delete marker, one
is left on the canary, which lets immutd's lifecycle rule remove the canary
once its lock has passed; otherwise it stays, like a backup.

Each check is one line of the report on stdout (and not logged as well);
--json prints the reports as one JSON document, an array of {target,
bucket, checks: [{target, name, status, message, fix?}], canary?}
(README "JSON output").

Exit codes: 0 no FAIL (WARNs allowed), 4 any FAIL, 2 unknown target, 78
configuration error.

Examples:
  immutd doctor
  immutd doctor offsite --json
`;

export async function doctorCommand(
  ctx: Context,
  name: string | undefined,
  opts: { json?: boolean },
): Promise<void> {
  const list = selectTargets(ctx.config, name);
  const open = openTargets(list);
  const reports: DoctorReport[] = [];
  try {
    for (const tc of list) {
      const report = await runDoctor({
        config: ctx.config,
        targetConfig: tc,
        target: open.targets[tc.name] as NonNullable<(typeof open.targets)[string]>,
        log: ctx.log,
        reportShown: true,
      });
      reports.push(report);
      if (!opts.json) writeResult(render(report));
    }
  } finally {
    open.close();
  }
  if (opts.json) writeJson(reports);
  const fails = reports.flatMap((r) => r.checks).filter((c) => c.status === "FAIL");
  if (fails.length) {
    throw new VerifyFindingsError(
      `doctor: ${plural(fails.length, "check")} failed: ${fails.map((c) => `${c.target}/${c.name}`).join(", ")}`,
    );
  }
}

function render(r: DoctorReport): string {
  const width = Math.max(...r.checks.map((c) => c.name.length));
  const line = (c: Check) =>
    `  ${c.status.padEnd(4)}  ${c.name.padEnd(width)}  ${c.message}${c.fix ? ` → ${c.fix}` : ""}`;
  const count = (s: Check["status"]) => r.checks.filter((c) => c.status === s).length;
  const out = [`target ${r.target} (bucket ${r.bucket})`, ...r.checks.map(line)];
  if (r.canary) {
    out.push(
      `  canary s3://${r.bucket}/${r.canary.key} (version ${r.canary.versionId}) stays locked until ${r.canary.retainUntil}`,
    );
  }
  out.push(
    `  ${count("OK")} OK, ${count("WARN")} WARN, ${count("FAIL")} FAIL${count("SKIP") ? `, ${count("SKIP")} skipped` : ""}`,
  );
  return `${out.join("\n")}\n`;
}

export function registerDoctor(p: Command, cli: Cli): void {
  p.command("doctor")
    .description("check endpoint, clock, bucket and credentials with a canary; exit 4 on FAIL")
    .argument("[target]", "target name (default: every target)")
    .option("--json", "machine-readable report")
    .addHelpText("after", doctorHelp)
    .action((target: string | undefined, opts: { json?: boolean }) =>
      cli.withContext((ctx) => doctorCommand(ctx, target, opts)),
    );
}
