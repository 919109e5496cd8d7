/**
 * Changes a test bucket's default retention with the main user's key, as an
 * attacker holding it (or a before hook) can between a backup's preflight and
 * its upload. Also a script, so that a job's hook can run it:
 *
 *     node dist/test/support/lock-config.js BUCKET COMPLIANCE|GOVERNANCE DAYS
 *     node dist/test/support/lock-config.js BUCKET none
 *
 * It reads the server from IMMUTD_TEST_S3_ENV, which hooks inherit.
 */
import { PutObjectLockConfigurationCommand } from "@aws-sdk/client-s3";
import type { RetentionMode } from "../../src/config/config.js";
import { client, type S3Env, s3env } from "./s3env.js";

export const LOCK_CONFIG_SCRIPT = new URL(import.meta.url).pathname;

/** Sets (or with undefined, removes) the bucket's default retention. */
export async function setDefaultRetention(
  env: S3Env,
  bucket: string,
  r: { mode: RetentionMode; days: number } | undefined,
): Promise<void> {
  const c = client(env, env.main);
  try {
    await c.send(
      new PutObjectLockConfigurationCommand({
        Bucket: bucket,
        ObjectLockConfiguration: {
          ObjectLockEnabled: "Enabled",
          ...(r ? { Rule: { DefaultRetention: { Mode: r.mode, Days: r.days } } } : {}),
        },
      }),
    );
  } finally {
    c.destroy();
  }
}

/** The hook command that runs this script. */
export function lockConfigHook(bucket: string, change: string): string {
  return `"${process.execPath}" "${LOCK_CONFIG_SCRIPT}" ${bucket} ${change}`;
}

if (process.argv[1] === LOCK_CONFIG_SCRIPT) {
  const [bucket, mode, days] = process.argv.slice(2);
  if (!bucket || !mode) throw new Error("usage: lock-config.js BUCKET MODE DAYS | BUCKET none");
  await setDefaultRetention(
    s3env(),
    bucket,
    mode === "none" ? undefined : { mode: mode as RetentionMode, days: Number(days) },
  );
}
