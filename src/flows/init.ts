/**
 * `immutd init`: creates a target's bucket the way the tutorial does by hand
 * (Object Lock, hence versioning; a COMPLIANCE default retention), plus the
 * lifecycle rules that clean up what locks leave behind. On an existing bucket
 * it makes only changes that are stricter (src/retention/bucket-check.ts planInit), and
 * reads the bucket back afterwards to confirm. Uses the admin credential.
 */

import type { KeepPolicy, TargetConfig } from "../config/config.js";
import { ConfigError, StorageError } from "../errors.js";
import type { Logger } from "../log.js";
import {
  type BucketProblem,
  type BucketSnapshot,
  type InitPlan,
  lifecycleProblems,
  lockProblems,
  planInit,
} from "../retention/bucket-check.js";
import { RetryPolicy, retry } from "../store/retry.js";
import type { ObjectStore, Target } from "../store/store.js";

export interface InitDeps {
  target: Target;
  targetConfig: TargetConfig;
  /** The keep policies of the jobs on this target (keepPolicyOf): init adds their tier rules. */
  policies?: readonly (KeepPolicy | undefined)[];
  log: Logger;
  /** Show the plan, change nothing. */
  dryRun?: boolean;
}

export interface InitResult {
  target: string;
  bucket: string;
  plan: InitPlan;
  /** Whether any change was made. */
  changed: boolean;
  /** What is still wrong with the bucket afterwards (read back from the server). */
  problems: BucketProblem[];
}

export function adminStore(target: Target, t: TargetConfig): ObjectStore {
  if (!target.admin) {
    throw new ConfigError(
      `targets.${t.name}.credentials.admin is not set: this needs the bucket owner's credentials (the tutorial's main user); the writer and reader must not be able to change bucket settings`,
    );
  }
  return target.admin;
}

export async function readSnapshot(admin: ObjectStore): Promise<BucketSnapshot> {
  if (!(await admin.bucketExists())) return { exists: false };
  const [lock, lifecycle] = await Promise.all([admin.lockState(), admin.lifecycle()]);
  return { exists: true, lock, lifecycle };
}

export async function runInit(deps: InitDeps): Promise<InitResult> {
  const t = deps.targetConfig;
  const admin = adminStore(deps.target, t);
  const log = deps.log.child({ target: t.name, bucket: t.bucket });
  const policies = deps.policies ?? [];
  const plan = planInit(await readSnapshot(admin), t, policies);
  const result = { target: t.name, bucket: t.bucket, plan };
  const changes =
    plan.createBucket || plan.defaultRetention !== undefined || plan.lifecycle !== undefined;
  if (deps.dryRun || !changes) {
    return { ...result, changed: false, problems: plan.problems };
  }

  if (plan.createBucket) {
    await admin.createBucket();
    log.info("created the bucket with Object Lock");
  }
  const r = plan.defaultRetention;
  if (r) {
    await retry(() => admin.putDefaultRetention(r), RetryPolicy.settle);
    log.info({ mode: r.mode, days: r.days }, "set the default retention");
  }
  const rules = plan.lifecycle;
  if (rules) {
    await retry(() => admin.putLifecycle(rules), RetryPolicy.settle);
    log.info({ rules: rules.map((x) => x.id) }, "set the lifecycle rules");
  }

  // Confirm from the server rather than trusting the requests.
  const after = await retry(() => readSnapshot(admin), RetryPolicy.settle);
  if (!after.exists || !after.lock) {
    throw new StorageError(
      `bucket ${t.bucket} (target ${t.name}) does not exist after creating it`,
      {
        transient: false,
      },
    );
  }
  const again = planInit(after, t, policies);
  if (again.lifecycle || again.defaultRetention) {
    const what = again.steps.filter(
      (s) => s.action === "add" || s.action === "update" || s.action === "set",
    );
    throw new StorageError(
      `bucket ${t.bucket} (target ${t.name}) did not keep what init set: ${what.map((s) => `${s.setting} (${s.detail})`).join("; ")}`,
      { transient: false },
    );
  }
  return {
    ...result,
    changed: true,
    problems: [...lockProblems(after.lock, t), ...lifecycleProblems(after.lifecycle ?? [], t)],
  };
}
