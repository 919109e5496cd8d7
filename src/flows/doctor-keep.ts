/**
 * doctor's keep-policy line: whether the backups' tiers can ever leave the
 * bucket on this provider (src/retention/lifecycle.ts expiryMechanism) and
 * whether the bucket's tier rules are as `immutd init` writes them. Pure.
 */
import { type Config, keepPolicyOf, type TargetConfig } from "../config/config.js";
import { expiryMechanism, tierRuleProblems } from "../retention/lifecycle.js";
import type { LifecycleRule } from "../store/store.js";
import type { Check } from "./doctor.js";

/** The keep policies of the jobs backing up to target t (undefined entries dropped). */
export function policiesOn(config: Config, t: TargetConfig) {
  return config.jobs
    .filter((j) => j.target === t.name)
    .map((j) => keepPolicyOf(j, t))
    .filter((p) => p !== undefined);
}

/** No line when no job on the target has a keep policy. */
export function judgeKeep(
  rules: readonly LifecycleRule[] | undefined,
  t: TargetConfig,
  config: Config,
): Omit<Check, "target">[] {
  const policies = policiesOn(config, t);
  if (policies.length === 0) return [];
  const m = expiryMechanism(t.endpoint);
  if (m.kind === "none") {
    return [
      {
        name: "keep policy",
        status: "WARN",
        message: `backups are locked for their tiers, but nothing will ever remove them: ${m.why}`,
        fix: "budget the storage, or move the target to a provider whose lifecycle rules filter by tag (AWS S3, Ceph RGW, MinIO, Wasabi)",
      },
    ];
  }
  if (rules === undefined) return [];
  const problems = tierRuleProblems(rules, t, policies);
  if (problems.length) {
    return [
      {
        name: "keep policy",
        status: "WARN",
        message: problems.map((p) => p.message).join("; "),
        fix: `run \`immutd init ${t.name}\` (admin credential) to write the tier rules again, and find out who changed them`,
      },
    ];
  }
  return [
    {
      name: "keep policy",
      status: "OK",
      message: "the tier rules expire each backup only after its tier (and its lock) has passed",
    },
  ];
}
