/**
 * The lifecycle rules that make a keep policy's backups leave the bucket, and
 * the check that a bucket's rules still do it without removing anything early.
 * Pure: no I/O. `immutd init` writes the rules (admin credential); the
 * backed-up host never holds a credential that can delete.
 *
 * Mechanism: object tags, not key prefixes. Each backup (archive and manifest)
 * carries the tag immutd-keep=<its longest hold> (`daily-14`, `weekly-8`,
 * `monthly-12`, `yearly-3`, or `floor-<retention days>` for a backup that
 * stands for no tier), set with PutObjectTagging after the upload completed.
 * For every hold the policy can give, one rule filtered by prefix and tag
 * expires the current version `holdDays + lifecycleGraceDays` days after its
 * creation (a delete marker: the version becomes noncurrent) and removes it
 * once noncurrent for a day; a version still locked is never removed, by these
 * rules or any other: the lock decides, the rule only follows it.
 *
 * Why tags: a backup's tiers can change after it was made (a missed tier is
 * promoted, a policy gets longer), and a tag can be changed while a key cannot
 * (moving it means writing a new version). A backup without a tag (made
 * before the policy, or whose tagging failed) matches no expiry rule and is
 * never expired: the failure is storage, not loss. The writer may re-tag a
 * backup (it has to tag new ones), so a tag never protects anything: a re-tag
 * to a shorter hold makes the rule place its delete marker early, but the
 * version stays locked for its tier; verify reports the tag.
 *
 * Providers (expiryMechanism): AWS S3, Ceph RGW, MinIO and Wasabi filter
 * lifecycle rules by tag. Backblaze B2 turns every rule into a prefix-only
 * one (a tag rule would expire every backup under the prefix), Hetzner does
 * not support tagging, Cloudflare R2 has neither tagging nor Object Lock: on
 * those, init writes no expiry rules and doctor warns that backups are locked
 * for their tiers but never removed.
 */
import type { KeepPolicy, TargetConfig } from "../config/config.js";
import type { LifecycleRule } from "../store/store.js";
import { holdDays, KEEP_TAG, policyTags } from "./tiers.js";

export type ExpiryMechanism = { kind: "tags" } | { kind: "none"; why: string };

/** How expiry can work on a target's provider, known by its endpoint's host. */
export function expiryMechanism(endpoint: string): ExpiryMechanism {
  let host = "";
  try {
    host = new URL(endpoint).hostname.toLowerCase();
  } catch {
    return { kind: "tags" };
  }
  if (host.endsWith(".backblazeb2.com"))
    return {
      kind: "none",
      why: "Backblaze B2 applies lifecycle rules by key prefix only, so a rule filtered by tag would expire every backup under the prefix",
    };
  if (host.endsWith(".your-objectstorage.com"))
    return { kind: "none", why: "Hetzner Object Storage does not support object tagging" };
  if (host.endsWith(".r2.cloudflarestorage.com"))
    return { kind: "none", why: "Cloudflare R2 supports neither object tagging nor Object Lock" };
  return { kind: "tags" };
}

/** Days after removal of the current version until a tier rule removes the noncurrent one (when unlocked). */
export const TIER_NONCURRENT_DAYS = 1;

export function tierRuleId(t: Pick<TargetConfig, "prefix">, tag: string): string {
  return `immutd-keep-${tag}${t.prefix ? `:${t.prefix}` : ""}`;
}

/** True for the id of a rule this module writes. */
export function isTierRule(r: LifecycleRule): boolean {
  return r.id.startsWith("immutd-keep-");
}

/** Days from creation until the rule for `tag` expires the current version. */
export function expireAfterDays(tag: string, graceDays: number): number | undefined {
  const d = holdDays(tag);
  return d === undefined ? undefined : d + graceDays;
}

/**
 * Policy days from a backup's creation until the server removes it under its
 * tag's rule (at the earliest): expiry of the current version, then one day
 * as noncurrent. Undefined for a tag no rule expires.
 */
export function removalAfterDays(tag: string | null, graceDays: number): number | undefined {
  if (tag === null) return undefined;
  const d = expireAfterDays(tag, graceDays);
  return d === undefined ? undefined : d + TIER_NONCURRENT_DAYS;
}

/** The tier rules for a target whose jobs have these policies (one per hold any of them can give). */
export function tierRules(
  t: Pick<TargetConfig, "prefix" | "retention" | "lifecycleGraceDays">,
  policies: readonly (KeepPolicy | undefined)[],
): LifecycleRule[] {
  const tags = new Set<string>();
  for (const p of policies) for (const tag of policyTags(p, t.retention.days)) tags.add(tag);
  if (!policies.some((p) => p !== undefined)) return [];
  return [...tags].map((tag) => ({
    id: tierRuleId(t, tag),
    enabled: true,
    prefix: t.prefix,
    tag: { key: KEEP_TAG, value: tag },
    expirationDays: expireAfterDays(tag, t.lifecycleGraceDays) as number,
    noncurrentDays: TIER_NONCURRENT_DAYS,
  }));
}

export interface TierRuleProblem {
  /** The rule (or missing rule) at fault. */
  rule: string;
  message: string;
}

/**
 * How a bucket's rules fall short of a policy: a tier rule missing, disabled,
 * filtered differently, or expiring sooner than its hold plus grace; and any
 * other enabled rule that expires current versions tagged for a hold sooner
 * than that hold. A rule that expires later only costs storage: not reported.
 */
export function tierRuleProblems(
  rules: readonly LifecycleRule[],
  t: Pick<TargetConfig, "name" | "bucket" | "prefix" | "retention" | "lifecycleGraceDays">,
  policies: readonly (KeepPolicy | undefined)[],
): TierRuleProblem[] {
  const out: TierRuleProblem[] = [];
  const where = `bucket ${t.bucket} (target ${t.name})`;
  for (const want of tierRules(t, policies)) {
    const have = rules.find((r) => r.id === want.id);
    const tag = want.tag?.value ?? "";
    if (!have) {
      out.push({
        rule: want.id,
        message: `${where} has no lifecycle rule ${want.id}: backups tagged ${KEEP_TAG}=${tag} are never removed (run \`immutd init ${t.name}\`)`,
      });
      continue;
    }
    if (!have.enabled) {
      out.push({
        rule: want.id,
        message: `${where}: lifecycle rule ${want.id} is disabled: backups tagged ${KEEP_TAG}=${tag} are never removed`,
      });
    }
    if (have.tag?.key !== KEEP_TAG || have.tag.value !== tag || have.prefix !== want.prefix) {
      out.push({
        rule: want.id,
        message: `${where}: lifecycle rule ${want.id} is filtered by ${describeFilter(have)}, not prefix "${want.prefix}" and tag ${KEEP_TAG}=${tag}`,
      });
    }
  }
  for (const r of rules) {
    if (!r.enabled || r.expirationDays === undefined) continue;
    if (!(r.prefix.startsWith(t.prefix) || t.prefix.startsWith(r.prefix))) continue;
    // Which holds the rule reaches: its tag's, or every one if it has no immutd-keep tag filter.
    const holds =
      r.tag && r.tag.key === KEEP_TAG
        ? [r.tag.value]
        : r.tag
          ? []
          : [...new Set(policies.flatMap((p) => policyTags(p, t.retention.days)))];
    for (const tag of holds) {
      const needed = expireAfterDays(tag, 0);
      if (needed !== undefined && r.expirationDays < needed) {
        out.push({
          rule: r.id,
          message: `${where}: lifecycle rule ${r.id} expires current versions${r.tag ? ` tagged ${KEEP_TAG}=${tag}` : ""} after ${r.expirationDays} days, sooner than their ${tag} hold (${needed} days): they would look deleted while still locked`,
        });
        break;
      }
    }
  }
  return out;
}

function describeFilter(r: LifecycleRule): string {
  const p = `prefix "${r.prefix}"`;
  return r.tag ? `${p} and tag ${r.tag.key}=${r.tag.value}` : `${p} only`;
}
