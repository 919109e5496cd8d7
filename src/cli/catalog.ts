/**
 * `immutd catalog rebuild`: the catalog rebuilt from the manifests in the
 * bucket (src/catalog/rebuild.ts), with the reader credential and the master key, in
 * one transaction once every manifest has been read and checked.
 */

import type { Command } from "commander";
import { type FoundBackup, type ScanNote, scanTarget, toImported } from "../catalog/rebuild.js";
import { acceptedRecipients, encryptionOf } from "../config/config.js";
import { CatalogError, UsageError, VerifyFindingsError } from "../errors.js";
import type { ManifestScope } from "../repo/snapshots.js";
import type { Cli, Context } from "./context.js";
import { identitiesFrom } from "./identity.js";
import { plural, writeJson } from "./output.js";
import { cancelOnStopSignals } from "./signals.js";
import { openTargets, selectTargets } from "./targets.js";

export const catalogRebuildHelp = `
Rebuilds the catalog's backups from the manifests in the bucket: for each
target (or --target T), every backup made under this host's name (or --host
H: the name of the machine that made them) is read back with the reader
credential, its SSE-C key derived from the master key (an age-only config
has none and needs none). This is what a new machine does first: install
immutd with the old config and master key, run immutd catalog rebuild, then
list, restore and verify as usual.

A manifest is believed only if its archive version exists, encrypted with
the derived key, with the size the manifest names; the SHA-256, size and file
count come from the manifest, retain-until and mode from the server. Status
is ok, expired (its lock has passed) or unlocked (no lock). Not imported, and
reported (exit 4): a manifest whose archive version is gone or differs, and a
manifest that cannot be read or decoded, or does not belong where it is
stored (another archive, host, job or time than its key).
Reported, and not used: a later version at a manifest key (immutd writes one;
the oldest is believed, later ones were written by someone else). Backups
made before manifests (0.1.0) are counted; restore --from-bucket finds them.

age backups (encryption scheme age or both): a manifest is believed only if
it is sealed to recipients the config names (a job's or target's
encryption.recipients or encryption.formerRecipients, for backups made
before a rotation or a switch back to sse-c). Their file count is stored in
the clear; a manifest from before that has only its sealed index, which
--identity FILE (or encryption.identityFile) opens to count; without one its
count is recorded as unknown (list --json shows files: null).

Runs (attempts, failures and their warnings) exist only in the catalog and
are not rebuilt; rebuilt backups have no run.

The catalog must be empty (a missing file is created), unless --merge: then
backups it lacks are added and every row it holds stays exactly as it is.
Nothing is written until every manifest has been read: a rebuild that fails
or is interrupted leaves the catalog as it was. --json prints the backups
found and the report.

Exit codes: 0 rebuilt, 1 the bucket could not be read (after retries), 2
usage, 4 rebuilt, but some manifests were not believed, 78 a catalog that
cannot be used.
`;

export interface RebuildOptions {
  identity?: string;
  host?: string;
  target?: string;
  merge?: boolean;
  json?: boolean;
}

export async function catalogRebuildCommand(ctx: Context, o: RebuildOptions): Promise<void> {
  const catalog = ctx.catalog();
  if (catalog.readOnly !== undefined)
    throw new CatalogError(`catalog ${catalog.path} cannot be written (${catalog.readOnly})`);
  const held = catalog.counts();
  if (!o.merge && (held.backups > 0 || held.runs > 0)) {
    throw new UsageError(
      `catalog ${catalog.path} already holds ${held.backups} backups and ${held.runs} runs; refusing to rebuild into it: use --merge to add what it lacks (its rows stay as they are), or point the config's catalog at a new file`,
    );
  }
  const host = o.host ?? ctx.config.host;
  const scan = await scanBucket(ctx, { host }, o.target, o.identity);
  const masterKey = ctx.config.masterKey.reveal();
  const added = catalog.importBackups(scan.backups.map((b) => toImported(b, masterKey)));
  const { findings, warnings } = scan;
  if (o.json) {
    writeJson({ catalog: catalog.path, host, added, backups: scan.backups, findings, warnings });
  } else {
    printNotes(warnings, findings);
    const kept = scan.backups.length - added;
    process.stdout.write(
      `catalog ${catalog.path}: ${plural(added, "backup")} of host ${host} rebuilt from the bucket${kept ? ` (${kept} already recorded, left as they were)` : ""}; ${plural(findings.length, "manifest")} not believed, ${plural(warnings.length, "warning")}\n`,
    );
  }
  if (findings.length)
    throw new VerifyFindingsError(
      `${findings.length} manifests were not believed and their backups not imported (see above)`,
    );
}

/**
 * Scans the selected targets (all by default) for scope, with a progress line
 * at a terminal and Ctrl-C cancelling. Shared by `catalog rebuild` and `list --from-bucket`.
 */
export async function scanBucket(
  ctx: Context,
  scope: ManifestScope,
  targetName: string | undefined,
  identityFlag?: string,
): Promise<{ backups: FoundBackup[]; findings: ScanNote[]; warnings: ScanNote[] }> {
  const list = selectTargets(ctx.config, targetName);
  const open = openTargets(list, 16);
  const controller = new AbortController();
  const removeSignals = cancelOnStopSignals(
    controller,
    ctx.log,
    "stopping; nothing was written",
    (sig) => new Error(`received ${sig}`),
  );
  const tty = process.stderr.isTTY === true;
  let shown = 0;
  try {
    const all = {
      backups: [] as FoundBackup[],
      findings: [] as ScanNote[],
      warnings: [] as ScanNote[],
    };
    for (const tc of list) {
      const target = open.targets[tc.name];
      if (!target) continue;
      const jobs = ctx.config.jobs.filter((j) => j.target === tc.name);
      // Only to count the files of older age manifests (see catalogRebuildHelp).
      const identities =
        identitiesFrom(identityFlag, encryptionOf({}, tc)) ??
        identitiesFrom(
          undefined,
          jobs.map((j) => j.encryption).find((e) => e?.identityFile),
        );
      const r = await scanTarget(target, {
        ...(identities ? { identities } : {}),
        masterKey: ctx.config.masterKey.reveal(),
        scope,
        schemeOf: (job) => encryptionOf(jobs.find((j) => j.name === job) ?? {}, tc).scheme,
        recipients: [...jobs.map((j) => encryptionOf(j, tc)), encryptionOf({}, tc)].flatMap(
          acceptedRecipients,
        ),
        signal: controller.signal,
        onProgress: (done, total) => {
          const now = Date.now();
          if (!tty || (done < total && now - shown < 250)) return;
          shown = now;
          process.stderr.write(`\r\x1b[2Ktarget ${tc.name}: ${done}/${total} manifests read`);
        },
      });
      all.backups.push(...r.backups);
      all.findings.push(...r.findings);
      all.warnings.push(...r.warnings);
    }
    return all;
  } finally {
    if (tty && shown) process.stderr.write("\r\x1b[2K");
    removeSignals();
    open.close();
  }
}

/** Warnings and findings, one line each, on stderr. */
export function printNotes(warnings: readonly ScanNote[], findings: readonly ScanNote[]): void {
  const bare = warnings.filter((w) => w.kind === "no-manifest");
  for (const w of warnings)
    if (w.kind !== "no-manifest" || bare.length <= 10)
      process.stderr.write(`warning: ${w.message}\n`);
  if (bare.length > 10)
    process.stderr.write(
      `warning: ${bare.length} archives have no manifest (made before manifests, or the manifest could not be written): not listed here; restore --from-bucket still finds them\n`,
    );
  for (const f of findings) process.stderr.write(`not believed: ${f.message}\n`);
}

export function registerCatalog(p: Command, cli: Cli): void {
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
    .option(
      "--identity <file>",
      "age identity file, to count the files of older age backups (default: encryption.identityFile)",
    )
    .option("--merge", "add to a catalog that is not empty; its rows stay as they are")
    .option("--json", "machine-readable report")
    .addHelpText("after", catalogRebuildHelp)
    .action((opts: RebuildOptions) => cli.withContext((ctx) => catalogRebuildCommand(ctx, opts)));
}
