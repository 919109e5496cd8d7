import type { Command } from "commander";
import { reconcile } from "../daemon/recovery.js";
import {
  CancelledError,
  CatalogError,
  describeError,
  UsageError,
  VerifyFindingsError,
} from "../errors.js";
import { runVerify, type VerifyReport } from "../flows/verify.js";
import { readIdentityFile } from "../repo/age-keys.js";
import type { Target } from "../store/store.js";
import { selectJobs } from "./backup.js";
import type { Cli, Context } from "./context.js";
import { leaveHeapToV8 } from "./heap.js";
import { plural, writeJson, writeResult } from "./output.js";
import { formatDuration, ProgressLine } from "./progress.js";
import { cancelOnStopSignals } from "./signals.js";
import { openTargets } from "./targets.js";

export const verifyHelp = `
Proves that the backups in the catalog are still protected, with the reader
credentials:
  - each bucket: Object Lock and versioning on, a default retention of at least
    the configured mode and days, no lifecycle rule that expires current
    versions inside the retention (read with the reader, else admin; Ceph RGW
    subusers cannot read lifecycle rules, which is then noted, not a finding)
  - every backup whose retain-until is in the future or whose configured
    period (created + retention days) has not ended, whatever newer backups
    exist: its recorded version still exists, has the recorded size, opens
    with its SSE-C key, is locked in COMPLIANCE mode (or what was
    recorded/configured, if stricter), and its retain-until is not earlier
    than recorded nor than its configured period (verify.concurrency at a time)
  - --deep: also downloads the newest backup of each job (verify.deep.sample
    of them, default 1), checks its SHA-256 against the catalog and that the
    archive reads to its end; and every "unverified" backup (found by crash
    recovery, SHA-256 unknown): it must be encrypted with the key immutd
    derives, have its recorded size and read to its end, then it is ok (its
    SHA-256 recorded), else corrupt. Without --deep each is a finding.
    An age-encrypted backup is read to its end only with --identity FILE;
    without one its stored bytes are still checked against the recorded
    size and SHA-256 (the host that backs up holds no identity).
  - each backup's manifest (its archive key + .manifest.json.gz): a finding
    "manifest" if it was never written, its recorded version is gone, it does
    not decode, names another archive version, size or SHA-256, or cannot be
    locked as long as its archive (verify extends it with the archive). Backups
    made before manifests have none and are not findings.
Crash recovery runs first, as in immutd backup (see there).
Backups past their retain-until are marked expired. A missing version is
marked missing (and reported on every run until its retain-until passes); a
deep-check mismatch marks the backup corrupt. A backup not locked as
configured (not-locked, mode-weak, retention-short) is marked unlocked and
locked for its configured period with the writer (PutObjectRetention, extend
only); the finding says whether that worked, and the backup is ok again once
it did.

A delete marker on top of a backup's key is a WARNING, not a finding (exit
code unchanged): someone with write access hid the latest version; the
recorded version is still locked and restorable by its version ID. So is a
newer version at a manifest's key (manifest-replaced): the recorded one counts.

With keepLatestLocked (the default), each job's newest good backup is then
kept locked at least the retention period ahead of now: when it is less, it
is extended to the retention period plus one day (so at most once a day),
with the writer credential (it needs s3:PutObjectRetention). Extending only:
never shorter, and the version's mode is kept. A newest backup whose lock ran
out while immutd was stopped is locked again if it still exists. Each
extension is recorded in the catalog.

With a keep policy (README, Retention that ends), each backup's lock is
checked against its tiers (retention-short), its immutd-keep tag against its
hold (keep-tag: missing or re-tagged shorter; verify tags it again; the
bucket's tag is read back only with --deep, or where the catalog recorded
none, since the catalog keeps the tag immutd set), and the bucket's rules against the policy (lifecycle-tier-rule). A backup that should
stand for a tier it was not given (a missed tier, a longer policy) is
promoted first: its lock and tag are extended (PROMOTED lines, "promoted" in
--json); nothing is ever shortened.

Each finding is one line naming the job, object key, version and what is
wrong; --json prints the whole report (findings, warnings, notes, extensions,
promoted) as one JSON document (README "JSON output"). The report on stdout is the
result: its findings, warnings and notes are not logged on stderr as well,
nor the info lines it repeats (at the default level; --log-level debug shows
them). At a terminal a progress line on stderr shows the backups checked of
those due and, with --deep, the bytes downloaded of the total, the percent,
the time left and the object being read.

Exit codes: 0 no findings, 4 any finding, 2 unknown job, 78 configuration
error. Ctrl-C cancels.

Examples:
  immutd verify
  immutd verify --job etc --deep
  immutd verify --job etc --deep --identity /root/immutd-recovery.age.txt
  immutd verify --json | jq '.findings[]'
`;

export async function verifyCommand(
  ctx: Context,
  opts: { job?: string; deep?: boolean; json?: boolean; identity?: string },
): Promise<void> {
  if (opts.job !== undefined) selectJobs(ctx.config.jobs, [opts.job]);
  if (opts.identity !== undefined && !opts.deep)
    throw new UsageError("--identity goes with --deep: only a deep check reads archives");
  const catalog = ctx.catalog();
  if (catalog.readOnly !== undefined) {
    // Refused before any request: verify records statuses, findings and the locks
    // it sets, and a lock set on the server but not recorded would be invisible here.
    throw new CatalogError(
      `catalog ${catalog.path} is read-only (${catalog.readOnly}): verify records what it finds and the locks it extends, so it runs only where the catalog can be written`,
    );
  }
  const open = openTargets(Object.values(ctx.config.targets), ctx.config.verify.concurrency);
  const controller = new AbortController();
  const removeSignals = cancelOnStopSignals(
    controller,
    ctx.log,
    "cancelling",
    (sig) => new Error(`received ${sig}`),
  );
  let report: VerifyReport;
  // One line per phase: the deep downloads' rate and time left count from their start.
  let progress = new ProgressLine("verify");
  try {
    // Without a daemon (cron), this is where a crashed run is recovered; verify then checks what it found.
    await reconcile({
      config: ctx.config,
      catalog: ctx.catalog(),
      log: ctx.log,
      target: (name) => open.targets[name] as Target,
      ...(opts.job !== undefined ? { jobs: [opts.job] } : {}),
      signal: controller.signal,
    }).catch((err: unknown) => {
      if (!controller.signal.aborted) ctx.log.warn(`crash recovery failed: ${describeError(err)}`);
    });
    report = await runVerify({
      config: ctx.config,
      catalog: ctx.catalog(),
      targets: open.targets,
      log: reportLogger(ctx),
      signal: controller.signal,
      reportShown: true,
      onProgress: (p) => {
        if (p.phase === "backups") {
          progress.setTotal({ files: p.total, noun: ["backup", "backups"] });
          progress.update({ files: p.done, ...(p.key ? { current: p.key } : {}) }, p.done === 0);
        } else {
          if (p.done === 0 && p.bytes === 0) {
            progress.clear();
            progress = new ProgressLine("verify --deep");
          }
          progress.setTotal({ bytes: p.totalBytes, files: p.total, noun: ["backup", "backups"] });
          const at = { bytes: p.bytes, files: p.done, ...(p.key ? { current: p.key } : {}) };
          progress.update(at, p.bytes === 0);
        }
      },
      ...(opts.job !== undefined ? { job: opts.job } : {}),
      ...(opts.deep ? { deep: true } : {}),
      ...(opts.identity !== undefined ? { identities: readIdentityFile(opts.identity) } : {}),
    });
  } catch (err) {
    if (controller.signal.aborted) throw new CancelledError("verify cancelled");
    throw err;
  } finally {
    progress.clear();
    removeSignals();
    open.close();
  }
  if (opts.json) writeJson(report);
  else writeResult(render(report));
  if (report.findings.length) {
    throw new VerifyFindingsError(`verify found ${plural(report.findings.length, "problem")}`);
  }
}

/**
 * The logger verify's flow gets: the report is the result, so at the default
 * info level its info lines (deep check passed, lock extended, the summary)
 * would only repeat it; they are shown from --log-level debug on.
 */
function reportLogger(ctx: Context): Context["log"] {
  const log = ctx.log.child({});
  if (log.level === "info") log.level = "warn";
  return log;
}

function render(r: VerifyReport): string {
  const lines: string[] = [];
  for (const f of r.findings) {
    const where = f.key ? `${f.job ?? "-"}  ${f.key}  ${f.versionId ?? "-"}` : `target ${f.target}`;
    lines.push(`FINDING  ${f.kind}  ${where}\n  ${f.message}`);
  }
  for (const w of r.warnings) {
    lines.push(
      `WARNING  ${w.kind}  ${w.job ?? "-"}  ${w.key ?? "-"}  ${w.versionId ?? "-"}\n  ${w.message}`,
    );
  }
  for (const n of r.notes) lines.push(`NOTE  ${n}`);
  for (const e of r.extensions.filter((x) => x.action === "extended")) {
    lines.push(`LOCK  ${e.job}  ${e.key}: ${e.message}`);
  }
  for (const p of r.promoted.filter((x) => !x.problem)) {
    lines.push(
      `PROMOTED  ${p.job}  ${p.key}: stands for ${p.tiers.join(", ") || "no tier"}, tagged immutd-keep=${p.tag}, locked until ${p.retainUntil ?? "-"}`,
    );
  }
  for (const d of r.deepChecked.filter((x) => x.ok)) {
    lines.push(
      `DEEP  ${d.job}  ${d.key}: SHA-256 matches, ${d.entries} archive entries read to the end`,
    );
  }
  const parts = [
    `${plural(r.checked, "backup")} checked`,
    plural(r.targets.length, "bucket"),
    ...(r.expired ? [`${r.expired} marked expired`] : []),
    ...(r.warnings.length ? [plural(r.warnings.length, "warning")] : []),
    ...(r.deep ? [`${r.deepChecked.length} downloaded`] : []),
    ...(r.extensions.length
      ? [`${plural(r.extensions.filter((e) => e.action === "extended").length, "lock")} extended`]
      : []),
    ...(r.promoted.length ? [`${r.promoted.length} promoted to their tiers`] : []),
  ];
  lines.push(
    `${parts.join(", ")} in ${formatDuration(r.durationMs)}: ${
      r.findings.length ? plural(r.findings.length, "finding") : "no findings"
    }`,
  );
  return `${lines.join("\n")}\n`;
}

export function registerVerify(p: Command, cli: Cli): void {
  p.command("verify")
    .description("prove that every backup is still there, locked and readable; exit 4 on findings")
    .option("--job <name>", "only this job's backups")
    .option("--deep", "also download the newest backup of each job and check its SHA-256")
    .option("--json", "machine-readable report")
    .option("--identity <file>", "with --deep: age identity file to read age-encrypted archives")
    .addHelpText("after", verifyHelp)
    .action((opts: { job?: string; deep?: boolean; json?: boolean; identity?: string }) =>
      cli.withContext((ctx) => {
        if (opts.deep) leaveHeapToV8();
        return verifyCommand(ctx, opts);
      }),
    );
}
