/**
 * Schedule decisions, pure: when a job runs next, and whether a run was missed
 * while immutd was not running (so a reboot at 02:59 does not skip a night).
 */
import { Cron } from "croner";
import type { JobConfig } from "./config.js";

function cronFor(job: Pick<JobConfig, "schedule" | "timezone"> & { schedule: string }): Cron {
  return new Cron(job.schedule, {
    paused: true,
    ...(job.timezone ? { timezone: job.timezone } : {}),
  });
}

/**
 * The first scheduled time strictly after `after`, or null if the expression
 * never fires again or the job has no schedule (manual-only).
 */
export function nextRun(job: Pick<JobConfig, "schedule" | "timezone">, after: Date): Date | null {
  const { schedule } = job;
  if (schedule === undefined) return null;
  return cronFor({ ...job, schedule }).nextRun(after);
}

/**
 * True when a scheduled time passed since the last successful run started (or
 * the job never succeeded): the daemon then runs the job once at start.
 * A manual-only job (no schedule) never misses a run, so catch-up never starts it.
 */
export function missedRun(
  job: Pick<JobConfig, "schedule" | "timezone">,
  lastSuccessStart: Date | undefined,
  now: Date,
): boolean {
  if (job.schedule === undefined) return false;
  if (!lastSuccessStart) return true;
  const due = nextRun(job, lastSuccessStart);
  return due !== null && due.getTime() <= now.getTime();
}
