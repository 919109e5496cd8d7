/**
 * The total a backup's progress line counts towards, so that it can show a
 * percentage and the time left (as restic does, with a scan beside the
 * backup):
 *
 * 1. at once, the job's previous successful run in the catalog: its file
 *    count, and for an uncompressed job its size (the tar is about the
 *    content); marked as an estimate ("~");
 * 2. then a quick walk of the job's paths, the same walk as `backup --dry-run`
 *    (the same excludes; lstat only, no file is opened), run beside the
 *    backup. Its files and bytes replace the estimate; still "~" when the job
 *    has commands (their output is not known until they ran).
 *
 * Only where the line is shown (a terminal): a run without a terminal (cron,
 * the daemon) does no extra walk.
 */
import type { Catalog } from "../catalog/catalog.js";
import type { JobConfig } from "../config/config.js";
import { jobWalk } from "../flows/backup.js";
import { createArchive } from "../pipeline/archive.js";
import type { ProgressLine } from "./progress.js";

/** Starts estimating `job`'s total into `progress`; returns the stop (call it when the backup ends). */
export function estimateBackupTotal(
  job: JobConfig,
  catalog: Catalog,
  progress: ProgressLine,
): () => void {
  if (!progress.enabled) return () => {};
  const previous = catalog.jobSummary(job.name).lastSuccess;
  if (previous) {
    progress.setTotal({
      files: previous.files,
      ...(job.compression === "none" ? { bytes: previous.bytes } : {}),
      estimate: true,
    });
  }
  const controller = new AbortController();
  const walk = createArchive({
    ...jobWalk(job, catalog.path),
    dryRun: true,
    signal: controller.signal,
    // The backup's own walk reports what cannot be read; this one stays silent.
    onWarning: () => {},
  });
  walk.stream.resume(); // a dry walk writes no tar: let its end drain
  walk.stream.on("error", () => {});
  walk.done.then(
    (r) => {
      if (controller.signal.aborted) return;
      progress.setTotal({ files: r.files, bytes: r.bytes, estimate: job.commands.length > 0 });
    },
    () => {}, // stopped, or a path vanished: the previous run's estimate stays
  );
  return () => controller.abort();
}
