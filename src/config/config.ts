/**
 * The configuration: one YAML file, parsed once into a typed, validated,
 * resolved object. Unknown keys are errors (a typo must not silently disable a
 * backup); every default lives in DEFAULTS; every problem is reported with the
 * file, line and key at fault and maps to exit code 78.
 *
 * Resolution order per value: `${ENV_VAR}` substitution in any string, then
 * schema validation, then secrets given as `…File` are read from their files.
 *
 * The file may be hostile or just wrong (a binary, a 50 MB log, an alias bomb,
 * `target: toString`): every such case is one line and exit 78, found in time
 * linear in the file's size. Records keyed by configured names (targets) have
 * no prototype, so a name like "constructor" finds only what was configured.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from "node:fs";
import { availableParallelism, hostname } from "node:os";
import { isAbsolute } from "node:path";
import { Cron } from "croner";
import {
  type Document,
  isMap,
  isScalar,
  LineCounter,
  parseDocument,
  parse as parseYamlScalar,
  visit,
} from "yaml";
import { z } from "zod";
import { ConfigError } from "../errors.js";
import { LEVELS, zstdUnavailable } from "../pipeline/codec.js";
import { compileExcludes } from "../pipeline/exclude.js";
import { parseRecipient } from "../repo/age-keys.js";
import { parseMasterKey } from "../repo/keys.js";
import { NAME } from "../repo/naming.js";
import {
  COMPRESSIONS,
  type Compression,
  ENCRYPTION_SCHEMES,
  type EncryptionScheme,
} from "./names.js";
import {
  checkAliases,
  checkKeys,
  describePath,
  explain,
  LIMITS,
  nodeKind,
  nodeOffset,
  Problems,
  relevantIssues,
  short,
  unknownKeys,
  yamlMessage,
} from "./problems.js";
import { redactUserinfo, Secret, urlOrigin } from "./secret.js";

// Defined apart (names.ts) so that a worker reading a manifest needs no schema.
export { COMPRESSIONS, type Compression, ENCRYPTION_SCHEMES, type EncryptionScheme };

export const DEFAULT_CONFIG_PATH = "/etc/immutd/config.yaml";

/** Every default of the configuration, in one place. */
export const DEFAULTS = {
  catalog: "/var/lib/immutd/catalog.db",
  region: "us-east-1",
  prefix: "",
  forcePathStyle: false,
  allowInsecureSseC: false,
  retention: { mode: "COMPLIANCE", days: 30 },
  partSizeMiB: 8,
  queueSize: 4,
  checksum: "md5",
  connectTimeoutSeconds: 10,
  idleTimeoutSeconds: 30,
  exclude: [] as string[],
  oneFileSystem: false,
  compression: "gzip",
  /** Worker threads compressing a job's archive: every core (what `zstd -T0` and pigz use). */
  compressionThreads: availableParallelism(),
  catchUp: true,
  jitter: 0,
  hookTimeoutSeconds: 300,
  maxConcurrentJobs: 1,
  notifyEvents: ["success", "failure"] as NotifyEvent[],
  notifyFormat: "json",
  notifyTimeoutSeconds: 10,
  lifecycleGraceDays: 7,
  keepLatestLocked: true,
  verifyConcurrency: 4,
  /**
   * Daily: keepLatestLocked extends locks only when the daemon verifies, so a
   * daemon that never verified would let the newest backup's lock run out.
   */
  verifySchedule: "0 4 * * *",
  /** The auditor's grace beyond a job's second missed scheduled run (src/flows/audit.ts). */
  auditSlackMinutes: 60,
} as const;

export type RetentionMode = "COMPLIANCE" | "GOVERNANCE";
/**
 * A `keep:` policy (src/retention/tiers.ts): how many days, ISO weeks, months
 * and years the first backup of each such period stays locked. Unset or 0: no
 * such tier.
 */
export interface KeepPolicy {
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}
/**
 * How each uploaded part is checksummed. md5 (Content-MD5) is understood and
 * verified by every S3 implementation, old Ceph RGW included; the others use the
 * SDK's flexible checksums (x-amz-checksum-*), which some servers ignore.
 */
export type ChecksumMode = "md5" | "crc32" | "crc32c" | "sha1" | "sha256";

export interface Credential {
  accessKeyId: string;
  secretAccessKey: Secret;
}

export interface TargetConfig {
  name: string;
  endpoint: string;
  region: string;
  bucket: string;
  /** Empty, or ends with "/". */
  prefix: string;
  forcePathStyle: boolean;
  caFile?: string;
  allowInsecureSseC: boolean;
  retention: { mode: RetentionMode; days: number };
  /** writer is absent only on targets no job backs up to (an auditor's: src/flows/audit.ts reads with the reader alone). */
  credentials: { writer?: Credential; reader: Credential; admin?: Credential };
  partSizeMiB: number;
  queueSize: number;
  checksum: ChecksumMode;
  /** Seconds to establish a TCP connection before the attempt fails and is retried (a stalled TLS handshake is ended by idleTimeoutSeconds). */
  connectTimeoutSeconds: number;
  /**
   * Seconds without a byte in either direction on a request's connection (sending
   * a part, waiting for an answer, receiving a download) before the attempt is
   * given up: retried, or, for a download, resumed from the last byte received.
   */
  idleTimeoutSeconds: number;
  /** Days after the retention period before `immutd init`'s lifecycle rule expires noncurrent versions. */
  lifecycleGraceDays: number;
  /** How this target's backups are encrypted; absent: SSE-C (the default, as before age existed). */
  encryption?: EncryptionConfig;
  /** Plain http without SSE-C (an age-only target) is allowed: for a test server only. */
  allowInsecureTransport?: boolean;
  /** The keep policy of jobs on this target that set none (src/retention/tiers.ts). */
  keep?: KeepPolicy;
}

export interface EncryptionConfig {
  scheme: EncryptionScheme;
  /** age recipients (`age1…`), for age and both; new backups are encrypted to all of them. */
  recipients: string[];
  /** The age identity file restore, `verify --deep`, ls and find use when no --identity is given. */
  identityFile?: string;
  /**
   * Recipients of older backups (before a rotation, or before a switch back
   * to sse-c): `catalog rebuild` and `list --from-bucket` believe age
   * manifests sealed to them; nothing new is ever encrypted to them.
   */
  formerRecipients?: string[];
}

/** The recipients whose age manifests are believed: the current ones and the former. */
export function acceptedRecipients(e: EncryptionConfig): string[] {
  return [...e.recipients, ...(e.formerRecipients ?? [])];
}

/** The encryption a job's backups get: the job's own section, else its target's, else SSE-C. */
export function encryptionOf(
  job: Pick<JobConfig, "encryption">,
  t: TargetConfig,
): EncryptionConfig {
  return job.encryption ?? t.encryption ?? { scheme: "sse-c", recipients: [] };
}

/** Whether a scheme sends SSE-C keys. */
export function usesSseC(scheme: EncryptionScheme): boolean {
  return scheme !== "age";
}

export interface VerifyConfig {
  /** When the daemon runs `verify` (cron; default daily at 04:00); unset: `schedule: off`. */
  schedule?: string;
  /** When the daemon runs `verify --deep`, and how many newest backups per job it downloads. */
  deep?: { schedule: string; sample: number };
  /** Parallel HEAD/GetObjectRetention requests. */
  concurrency: number;
}

/**
 * The auditor (`immutd audit`, src/flows/audit.ts): it reads other hosts' backups
 * from the bucket, so what it knows of their jobs comes from their manifests
 * (the `schedule` each one records) and from these overrides.
 */
export interface AuditConfig {
  /** When the daemon audits every target (cron); unset: the daemon does not audit. */
  schedule?: string;
  /** Grace after a job's second scheduled time since its newest backup, before that backup is too old. */
  slackMinutes: number;
  /** The age limit for jobs whose manifests give no schedule (manual-only, or written before manifests had one); unset: not judged. */
  maxAgeHours?: number;
  /** Per host (and job) limits that replace the schedule's; null: the age is never a finding. First match wins. */
  overrides: { host: string; job?: string; maxAgeHours: number | null }[];
}

export type NotifyEvent = "start" | "success" | "failure";

export interface NotifyConfig {
  url: string;
  events: NotifyEvent[];
  /**
   * json: POST a JSON object; text: POST one human line; ping: POST with no body
   * (Healthchecks); ntfy: the line with Title, Priority and Tags; uptime-kuma: GET
   * a push URL with status=up|down&msg=; apprise: Apprise API's JSON.
   */
  format: (typeof NOTIFY_FORMATS)[number];
  timeoutSeconds: number;
}

export interface HooksConfig {
  before?: string;
  after?: string;
  onFailure?: string;
  timeoutSeconds: number;
}

export interface CommandSource {
  /** File name of the output in the archive, under immutd-commands/. */
  name: string;
  run: string;
  timeoutSeconds?: number;
}

export interface JobConfig {
  name: string;
  target: string;
  /** Cron expression; unset: a manual-only job the daemon never runs (`immutd backup NAME` does). */
  schedule?: string;
  /** IANA time zone for schedule; default the machine's. */
  timezone?: string;
  /** Run once at daemon start if a scheduled run was missed. */
  catchUp: boolean;
  /** Start up to this many seconds late, at random, to spread load. */
  jitter: number;
  paths: string[];
  exclude: string[];
  /** Pattern files, read at config load; `patterns` join `exclude` in the walk (see jobExcludes). */
  excludeFrom: { file: string; patterns: string[] }[];
  /** Marker file names: a directory holding one is archived without its other contents. */
  excludeIfPresent: string[];
  /** Do not descend into directories on another device than their job path. */
  oneFileSystem: boolean;
  compression: Compression;
  /** The codec's level (src/pipeline/codec.ts LEVELS); unset: its default. */
  compressionLevel?: number | undefined;
  /** Threads compressing in parallel (src/pipeline/parallel-codec.ts); 1: one zlib stream; unset: DEFAULTS. */
  compressionThreads?: number | undefined;
  hooks?: HooksConfig;
  commands: CommandSource[];
  notify: NotifyConfig[];
  /** Replaces the target's `encryption:` for this job. */
  encryption?: EncryptionConfig;
  /** This job's keep policy; unset: its target's `keep`, if any (keepPolicyOf). */
  keep?: KeepPolicy;
  /** Incremental backups in chains (src/repo/chain.ts); unset: every run is a full backup. */
  incremental?: IncrementalConfig;
}

/**
 * When a chain ends and the next run is a full backup again: after `runs`
 * members (the full included), or once the chain's full is `ms` old.
 */
export interface IncrementalConfig {
  fullEvery: { runs?: number; ms?: number; text: string };
}

export interface Config {
  /** The file this was read from. */
  file: string;
  catalog: string;
  masterKey: Secret<Buffer>;
  /** Where the master key came from, for messages: a path or "masterKey". */
  masterKeySource: string;
  host: string;
  targets: Record<string, TargetConfig>;
  jobs: JobConfig[];
  verify: VerifyConfig;
  /** Present when the config has an `audit:` section. */
  audit?: AuditConfig;
  /** Jobs the daemon runs at the same time. */
  maxConcurrentJobs: number;
  /** The daemon's /healthz and /metrics endpoint, if any. */
  http?: { listen: string };
  /** Webhooks for every job (each job may add its own). */
  notify: NotifyConfig[];
  /** Extend each job's newest good backup so it stays locked at least the retention period ahead of now. */
  keepLatestLocked: boolean;
}

/** Names that end up in object keys: keep them to a portable character set. */
const nameSchema = z
  .string()
  .regex(
    NAME,
    "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
  );
const absolutePath = z.string().refine(isAbsolute, "must be an absolute path");

/**
 * An http(s) URL without user:password@: the S3 SDK does not use it, fetch
 * refuses it, and it would put a password into every place a URL is shown.
 */
function httpUrl(userinfo: string) {
  return z.string().superRefine((s, ctx) => {
    let url: URL | undefined;
    try {
      url = new URL(s);
    } catch {
      // reported below
    }
    if (!url || !/^https?:$/.test(url.protocol) || !/^https?:\/\/[^/\s]/i.test(s)) {
      ctx.addIssue({ code: "custom", message: "must be an http:// or https:// URL" });
    } else if (url.username || url.password) {
      ctx.addIssue({ code: "custom", message: `must not contain user:password@ (${userinfo})` });
    }
  });
}

/** A secret given inline or as `<key>File` pointing at a file that holds it. */
function secretPair<K extends string>(key: K) {
  return {
    [key]: z.string().min(1).optional(),
    [`${key}File`]: absolutePath.optional(),
  } as Record<K | `${K}File`, z.ZodOptional<z.ZodString>>;
}

const credentialSchema = z.strictObject({
  ...secretPair("accessKeyId"),
  ...secretPair("secretAccessKey"),
});

const ageRecipient = z.string().superRefine((r, ctx) => {
  try {
    parseRecipient(r);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
  }
});
const encryptionSchema = z
  .strictObject({
    scheme: z.enum(ENCRYPTION_SCHEMES).default("sse-c"),
    recipients: z.array(ageRecipient).default([]),
    identityFile: absolutePath.optional(),
    // Allowed with any scheme: a job switched back to sse-c keeps its old age backups.
    formerRecipients: z.array(ageRecipient).default([]),
  })
  .superRefine((e, ctx) => {
    if (e.scheme !== "sse-c" && e.recipients.length === 0)
      ctx.addIssue({
        code: "custom",
        path: ["recipients"],
        message: `scheme ${e.scheme} needs at least one age recipient (age1…; \`immutd key generate --age FILE\` prints one)`,
      });
    if (e.scheme === "sse-c" && e.recipients.length > 0)
      ctx.addIssue({
        code: "custom",
        path: ["scheme"],
        message: "is sse-c, so the recipients are not used: set scheme: age or both",
      });
  });
const keepSchema = z.strictObject({
  daily: z.number().int().min(0).max(36500).optional(),
  weekly: z.number().int().min(0).max(5200).optional(),
  monthly: z.number().int().min(0).max(1200).optional(),
  yearly: z.number().int().min(0).max(100).optional(),
});

const targetSchema = z.strictObject({
  endpoint: httpUrl("the credentials go under credentials:"),
  region: z.string().min(1).default(DEFAULTS.region),
  bucket: z
    .string()
    .regex(
      /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
      "must be a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')",
    ),
  prefix: z
    .string()
    .refine(
      (s) => !s.startsWith("/") && !s.includes("//"),
      "must not start with '/' or contain '//'",
    )
    .default(DEFAULTS.prefix),
  forcePathStyle: z.boolean().default(DEFAULTS.forcePathStyle),
  caFile: absolutePath.optional(),
  allowInsecureSseC: z.boolean().default(DEFAULTS.allowInsecureSseC),
  retention: z
    .strictObject({
      mode: z.enum(["COMPLIANCE", "GOVERNANCE"]).default(DEFAULTS.retention.mode),
      days: z.number().int().min(1).max(36500),
    })
    .default({ ...DEFAULTS.retention }),
  credentials: z.strictObject({
    writer: credentialSchema.optional(),
    reader: credentialSchema,
    admin: credentialSchema.optional(),
  }),
  partSizeMiB: z.number().int().min(5).max(5120).default(DEFAULTS.partSizeMiB),
  queueSize: z.number().int().min(1).max(64).default(DEFAULTS.queueSize),
  checksum: z.enum(["md5", "crc32", "crc32c", "sha1", "sha256"]).default(DEFAULTS.checksum),
  connectTimeoutSeconds: z.number().min(1).max(300).default(DEFAULTS.connectTimeoutSeconds),
  idleTimeoutSeconds: z.number().min(1).max(3600).default(DEFAULTS.idleTimeoutSeconds),
  lifecycleGraceDays: z.number().int().min(0).max(3650).default(DEFAULTS.lifecycleGraceDays),
  encryption: encryptionSchema.optional(),
  allowInsecureTransport: z.boolean().default(false),
  keep: keepSchema.optional(),
});

const cronSchema = z.string().superRefine(checkCron);

function checkCron(expr: string, ctx: z.RefinementCtx): void {
  try {
    new Cron(expr, { paused: true });
  } catch (err) {
    ctx.addIssue({
      code: "custom",
      message: `invalid cron expression "${expr}": ${(err as Error).message.replace(/^CronPattern: /, "")}`,
    });
  }
}

export const NOTIFY_FORMATS = ["json", "text", "ping", "ntfy", "uptime-kuma", "apprise"] as const;
const notifySchema = z
  .strictObject({
    url: httpUrl("fetch refuses it; put the token in the path or query"),
    events: z
      .array(z.enum(["start", "success", "failure"]))
      .min(1)
      .default([...DEFAULTS.notifyEvents]),
    format: z.enum(NOTIFY_FORMATS).default(DEFAULTS.notifyFormat),
    timeoutSeconds: z.number().int().min(1).max(300).default(DEFAULTS.notifyTimeoutSeconds),
  })
  .refine((n) => !(n.format === "uptime-kuma" && n.events.includes("start")), {
    message: "uptime-kuma knows only up and down: leave start out of events",
    path: ["events"],
  });

const timezoneSchema = z.string().refine((tz) => {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}, "is not a known IANA time zone (e.g. Europe/Berlin, UTC)");

/** A file name (no "/"), for excludeIfPresent. */
const markerName = z
  .string()
  .min(1)
  .refine((s) => !s.includes("/") && s !== "." && s !== ".." && !s.includes("\0"), {
    message: 'must be a file name without "/"',
  });
/** One value or a list of them, as a list. */
function oneOrMany<T extends z.ZodTypeAny>(item: T) {
  return z
    .union([item, z.array(item)])
    .default([])
    .transform((v) => (Array.isArray(v) ? v : [v]) as z.output<T>[]);
}

const jobSchema = z.strictObject({
  name: nameSchema,
  target: z.string().min(1),
  // Optional: a job without schedule is run only by `immutd backup NAME`.
  schedule: cronSchema.optional(),
  timezone: timezoneSchema.optional(),
  catchUp: z.boolean().default(DEFAULTS.catchUp),
  jitter: z.number().int().min(0).max(86_400).default(DEFAULTS.jitter),
  paths: z.array(absolutePath).default([]),
  exclude: z
    .array(z.string().min(1))
    .default([])
    .superRefine((patterns, ctx) => {
      try {
        compileExcludes(patterns);
      } catch (err) {
        ctx.addIssue({ code: "custom", message: (err as Error).message });
      }
    }),
  excludeFrom: oneOrMany(absolutePath),
  excludeIfPresent: oneOrMany(markerName),
  oneFileSystem: z.boolean().default(DEFAULTS.oneFileSystem),
  // The default stays gzip for configs that omit it: changing it would change
  // the format (and key extension) of existing installations' next backups
  // behind their operators' backs; new configs say `compression: zstd`.
  compression: z.enum(COMPRESSIONS).default(DEFAULTS.compression),
  compressionLevel: z.number().int().optional(),
  compressionThreads: z.number().int().min(1).max(256).default(DEFAULTS.compressionThreads),
  hooks: z
    .strictObject({
      before: z.string().min(1).optional(),
      after: z.string().min(1).optional(),
      onFailure: z.string().min(1).optional(),
      timeoutSeconds: z.number().int().min(1).max(86_400).default(DEFAULTS.hookTimeoutSeconds),
    })
    .optional(),
  commands: z
    .array(
      z.strictObject({
        name: z
          .string()
          .regex(
            /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/,
            "must be a file name (letters, digits, '.', '_', '-')",
          ),
        run: z.string().min(1),
        timeoutSeconds: z.number().int().min(1).max(604_800).optional(),
      }),
    )
    .default([]),
  notify: z.array(notifySchema).default([]),
  encryption: encryptionSchema.optional(),
  keep: keepSchema.optional(),
  incremental: z
    .strictObject({
      fullEvery: z.union([
        z.number().int().min(1).max(10_000),
        z
          .string()
          .regex(
            /^[1-9]\d{0,4}[hdw]$/,
            'must be a count of runs or a duration such as "7d", "36h", "2w"',
          ),
      ]),
    })
    .transform((i): IncrementalConfig => ({ fullEvery: fullEvery(i.fullEvery) }))
    .optional(),
});

/** incremental.fullEvery: a count of runs per chain, or the age ("7d", "36h", "2w") at which a chain's full is renewed. */
function fullEvery(v: number | string): IncrementalConfig["fullEvery"] {
  if (typeof v === "number") return { runs: v, text: String(v) };
  const unit = { h: 3_600_000, d: 86_400_000, w: 604_800_000 }[v.slice(-1) as "h" | "d" | "w"];
  return { ms: Number(v.slice(0, -1)) * unit, text: v };
}

const configSchema = z
  .strictObject({
    catalog: absolutePath.default(DEFAULTS.catalog),
    ...secretPair("masterKey"),
    host: nameSchema.optional(),
    targets: z.record(nameSchema, targetSchema).refine((t) => Object.keys(t).length > 0, {
      message: "must define at least one target",
    }),
    // Empty only with an audit: section (checked below): an auditor backs nothing up.
    jobs: z.array(jobSchema).default([]),
    verify: z
      .strictObject({
        schedule: z
          .string()
          .superRefine((expr, ctx) => (expr === "off" ? undefined : checkCron(expr, ctx)))
          .default(DEFAULTS.verifySchedule),
        deep: z
          .strictObject({
            schedule: cronSchema,
            sample: z.number().int().min(1).max(1000).default(1),
          })
          .optional(),
        concurrency: z.number().int().min(1).max(64).default(DEFAULTS.verifyConcurrency),
      })
      .default({ schedule: DEFAULTS.verifySchedule, concurrency: DEFAULTS.verifyConcurrency }),
    audit: z
      .strictObject({
        schedule: cronSchema.optional(),
        slackMinutes: z.number().int().min(0).max(525_600).default(DEFAULTS.auditSlackMinutes),
        maxAgeHours: z.number().min(1).max(876_000).optional(),
        overrides: z
          .array(
            z.strictObject({
              host: nameSchema,
              job: nameSchema.optional(),
              maxAgeHours: z.number().min(1).max(876_000).nullable(),
            }),
          )
          .default([]),
      })
      .optional(),
    keepLatestLocked: z.boolean().default(DEFAULTS.keepLatestLocked),
    maxConcurrentJobs: z.number().int().min(1).max(64).default(DEFAULTS.maxConcurrentJobs),
    http: z
      .strictObject({
        listen: z
          .string()
          .regex(
            /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/,
            "must be HOST:PORT (e.g. 127.0.0.1:9180)",
          ),
      })
      .optional(),
    notify: z.array(notifySchema).default([]),
  })
  .superRefine((cfg, ctx) => {
    if (cfg.jobs.length === 0 && cfg.audit === undefined)
      ctx.addIssue({ code: "custom", path: ["jobs"], message: "must define at least one job" });
    const seen = new Map<string, number>();
    // Built once, not per job: 10,000 jobs naming a missing target must stay linear.
    const targetNames = Object.keys(cfg.targets);
    const defined =
      targetNames.slice(0, 10).join(", ") +
      (targetNames.length > 10 ? `, … (${targetNames.length} in all)` : "");
    cfg.jobs.forEach((job, i) => {
      const first = seen.get(job.name);
      if (first !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "name"],
          message: `duplicate job name "${job.name}" (also jobs[${first}])`,
        });
      } else seen.set(job.name, i);
      if (job.paths.length === 0 && job.commands.length === 0) {
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "paths"],
          message: "must list at least one path (or give commands)",
        });
      }
      const level = compressionProblem(job.compression, job.compressionLevel);
      if (level) {
        const at = job.compressionLevel === undefined ? "compression" : "compressionLevel";
        ctx.addIssue({ code: "custom", path: ["jobs", i, at], message: level });
      }
      const names = new Set<string>();
      job.commands.forEach((c, k) => {
        if (names.has(c.name)) {
          ctx.addIssue({
            code: "custom",
            path: ["jobs", i, "commands", k, "name"],
            message: `duplicate command name "${c.name}"`,
          });
        }
        names.add(c.name);
      });
      if (!Object.hasOwn(cfg.targets, job.target)) {
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "target"],
          message: `target "${short(job.target)}" is not defined under targets (defined: ${defined || "none"})`,
        });
      } else if (
        job.incremental &&
        (job.encryption ?? cfg.targets[job.target]?.encryption)?.scheme !== undefined &&
        (job.encryption ?? cfg.targets[job.target]?.encryption)?.scheme !== "sse-c"
      ) {
        // The next incremental compares the walk with the parent's file index, which
        // age seals from the host: it would have to keep that index itself, and a
        // host that keeps the names of old files is what age is there to prevent.
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "incremental"],
          message: `cannot be combined with encryption scheme ${(job.encryption ?? cfg.targets[job.target]?.encryption)?.scheme}: the host cannot read the sealed file index an incremental compares against; remove incremental (every run a full backup) or use sse-c`,
        });
      } else if (cfg.targets[job.target]?.credentials.writer === undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "target"],
          message: `target "${short(job.target)}" has no writer credential (targets.${short(job.target)}.credentials.writer): a job needs one to upload; only an auditor's target may go without`,
        });
      }
    });
    for (const [name, t] of Object.entries(cfg.targets)) {
      // Which schemes reach this target: its own, and any job's that replaces it.
      const schemes = new Set([
        t.encryption?.scheme ?? "sse-c",
        ...cfg.jobs
          .filter((j) => j.target === name && j.encryption)
          .map((j) => j.encryption?.scheme),
      ]);
      const sseC = [...schemes].some((x) => x !== "age");
      if (t.endpoint.startsWith("http://") && !sseC && !t.allowInsecureTransport) {
        ctx.addIssue({
          code: "custom",
          path: ["targets", name, "endpoint"],
          message:
            "is plain http: age keeps the backups secret, but anyone on the path could alter or " +
            "replace what is uploaded and read. Use https, or set allowInsecureTransport: true " +
            "for a local test server only",
        });
      }
      if (t.endpoint.startsWith("http://") && sseC && !t.allowInsecureSseC) {
        ctx.addIssue({
          code: "custom",
          path: ["targets", name, "endpoint"],
          message:
            "is plain http: immutd would send SSE-C encryption keys unencrypted. Use https, " +
            "or set allowInsecureSseC: true for a local test server only",
        });
      }
      const creds = t.credentials as Record<string, Record<string, unknown> | undefined>;
      for (const [role, cred] of Object.entries(creds)) {
        if (cred) requireOneOf(ctx, cred, ["targets", name, "credentials", role]);
      }
    }
    const needKey = sseCUsers(cfg);
    if (cfg.masterKey !== undefined || cfg.masterKeyFile !== undefined) {
      requireOneOf(ctx, cfg as Record<string, unknown>, [], "masterKey");
    } else if (needKey.length) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: `missing masterKey (or masterKeyFile): the SSE-C keys of ${needKey.join(", ")} are derived from it (only a config where every target and job has scheme: age needs none)`,
      });
    }
  });

/**
 * What sends SSE-C keys, and so needs the master key: every target whose own
 * scheme (sse-c unless it says otherwise) or some job's scheme is sse-c or
 * both. A config where everything is `scheme: age` needs no master key; one
 * given anyway is kept (to read older SSE-C backups).
 */
function sseCUsers(cfg: {
  targets: Record<string, { encryption?: { scheme: EncryptionScheme } | undefined }>;
  jobs: { name: string; target: string; encryption?: { scheme: EncryptionScheme } | undefined }[];
}): string[] {
  const users: string[] = [];
  for (const [name, t] of Object.entries(cfg.targets)) {
    const scheme = t.encryption?.scheme ?? "sse-c";
    if (usesSseC(scheme))
      users.push(
        `target "${short(name)}" (scheme ${scheme}${t.encryption ? "" : ", the default"})`,
      );
  }
  for (const j of cfg.jobs) {
    if (j.encryption && usesSseC(j.encryption.scheme))
      users.push(`job "${short(j.name)}" (scheme ${j.encryption.scheme})`);
  }
  return users;
}

/** Why a job's compression and level cannot run here, or undefined. */
function compressionProblem(c: Compression, level: number | undefined): string | undefined {
  if (c === "zstd" && zstdUnavailable()) return `${zstdUnavailable()}; use compression: gzip`;
  if (level === undefined) return undefined;
  if (c === "none") return "is set, but compression is none";
  const { min, max } = LEVELS[c];
  return level < min || level > max ? `must be ${min} to ${max} for ${c}` : undefined;
}

function requireOneOf(
  ctx: z.RefinementCtx,
  obj: Record<string, unknown>,
  path: (string | number)[],
  ...only: string[]
): void {
  const keys = only.length ? only : ["accessKeyId", "secretAccessKey"];
  for (const key of keys) {
    const inline = obj[key] !== undefined;
    const file = obj[`${key}File`] !== undefined;
    if (inline === file) {
      ctx.addIssue({
        code: "custom",
        path,
        message: inline
          ? `give either ${key} or ${key}File, not both`
          : `missing ${key} (or ${key}File)`,
      });
    }
  }
}

/**
 * An empty record for values keyed by configured names. Without a prototype,
 * `targets["toString"]` is undefined unless a target of that name exists.
 */
export function byName<T>(): Record<string, T> {
  return Object.create(null) as Record<string, T>;
}

/** The path of the config file: --config, else $IMMUTD_CONFIG, else the default. */
export function configPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? (env.IMMUTD_CONFIG || DEFAULT_CONFIG_PATH);
}

export interface LoadOptions {
  env?: NodeJS.ProcessEnv;
  /** Reads a secret file; tests replace it. */
  readSecretFile?: (path: string) => Buffer;
}

export interface Loaded {
  config: Config;
  /** Things worth a warning that do not stop immutd (e.g. a world-readable key file). */
  warnings: string[];
}

export function loadConfig(file: string, opts: LoadOptions = {}): Loaded {
  let bytes: Buffer | undefined;
  try {
    bytes = readAtMost(file, LIMITS.configBytes);
  } catch (err) {
    throw new ConfigError(
      `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  if (!bytes) {
    throw new ConfigError(
      `config file ${file} is larger than ${LIMITS.configBytes / 1024 / 1024} MiB, the limit for a config: is it the right file?`,
    );
  }
  return parseConfig(decodeText(bytes, file), file, opts);
}

/**
 * Reads at most `limit` bytes: the file's contents, or undefined if it holds
 * more. Reads in pieces, so a device or pipe without an end (/dev/zero) is
 * stopped at the limit too.
 */
function readAtMost(path: string, limit: number): Buffer | undefined {
  const fd = openSync(path, "r");
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.size > limit) return undefined;
    const buf = Buffer.alloc(limit + 1);
    let n = 0;
    for (let got = -1; got !== 0 && n <= limit; n += got)
      got = readSync(fd, buf, n, limit + 1 - n, null);
    return n > limit ? undefined : buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** The config as text: UTF-8 without NUL bytes (a binary file would otherwise parse as one odd string). */
function decodeText(bytes: Buffer, file: string): string {
  const nul = bytes.indexOf(0);
  let text: string | undefined;
  try {
    if (nul < 0) text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    // reported below
  }
  if (text === undefined) {
    throw new ConfigError(
      `config file ${file} is not UTF-8 text${nul >= 0 ? ` (a NUL byte at offset ${nul})` : ""}: a config is a YAML text file`,
    );
  }
  return text;
}

/** The YAML document being parsed, and how to point at a place in it. */
interface Source {
  file: string;
  doc: Document;
  /** The document as plain data, before validation. */
  raw: unknown;
  /** "file:line:col" of an offset in the text (the file alone without one). */
  where(offset: number | undefined): string;
  /** "file:line:col" of the node at a path of keys. */
  at(path: (string | number)[]): string;
  lineOf(offset: number | undefined): number | undefined;
}

type Parsed = z.output<typeof configSchema>;

/**
 * Parses the text into a Config: YAML with its safety limits (readYaml), the
 * schema (validate), then what needs files or refinement: secrets (secretReader),
 * targets, the master key, jobs' exclude files and the audit section.
 */
export function parseConfig(text: string, file: string, opts: LoadOptions = {}): Loaded {
  const src = readYaml(text, file, opts.env ?? process.env);
  const cfg = validate(src);
  const warnings: string[] = [];
  const secret = secretReader(src, opts, warnings);
  return {
    config: {
      file,
      catalog: cfg.catalog,
      ...masterKeyOf(cfg, src, secret),
      host: cfg.host ?? hostname().split(".")[0] ?? "localhost",
      targets: resolveTargets(cfg, src, secret, warnings),
      jobs: resolveJobs(cfg, src),
      maxConcurrentJobs: cfg.maxConcurrentJobs,
      ...(cfg.http !== undefined ? { http: cfg.http } : {}),
      notify: cfg.notify,
      verify: {
        concurrency: cfg.verify.concurrency,
        ...(cfg.verify.schedule !== "off" ? { schedule: cfg.verify.schedule } : {}),
        ...(cfg.verify.deep !== undefined ? { deep: cfg.verify.deep } : {}),
      },
      ...(cfg.audit !== undefined ? { audit: resolveAudit(cfg.audit) } : {}),
      keepLatestLocked: cfg.keepLatestLocked,
    },
    warnings,
  };
}

/**
 * The text as a YAML document with `${VAR}`s substituted, checked for syntax,
 * shape (a mapping), alias bombs and duplicate keys; throws ConfigError.
 */
function readYaml(text: string, file: string, env: NodeJS.ProcessEnv): Source {
  const lines = new LineCounter();
  const where = (offset: number | undefined) => {
    if (offset === undefined) return file;
    const { line, col } = lines.linePos(offset);
    return `${file}:${line}:${col}`;
  };
  const lineOf = (offset: number | undefined) =>
    offset === undefined ? undefined : lines.linePos(offset).line;
  let doc: Document;
  try {
    // uniqueKeys: the yaml package compares each key with every earlier one
    // (quadratic: 20,000 keys took seconds); checkKeys does it with a Set.
    doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false });
  } catch (err) {
    throw new ConfigError(`${file}: YAML syntax error: ${yamlMessage(err)}`); // e.g. too deeply nested
  }

  // The first syntax error is the one to fix; the next ones often follow from it.
  const [first, ...more] = doc.errors;
  if (first) {
    const also = more.length
      ? ` (and ${more.length} more YAML error${more.length > 1 ? "s" : ""})`
      : "";
    throw new ConfigError(
      `${where(first.pos[0])}: YAML syntax error: ${yamlMessage(first)}${also}`,
    );
  }
  const top = doc.contents;
  if (top === null || (isScalar(top) && top.value === null)) {
    throw new ConfigError(
      `${file}: the config is empty; it needs at least masterKeyFile, targets and jobs (see config.example.yaml)`,
    );
  }
  if (!isMap(top)) {
    throw new ConfigError(
      `${where(top.range?.[0])}: the config must be a mapping (catalog:, targets:, jobs:, …), not ${nodeKind(top)}`,
    );
  }

  const problems = new Problems();
  const problem = (offset: number | undefined, msg: string) =>
    problems.add(() => `${where(offset)}: ${msg}`);
  checkAliases(doc, file, where);
  checkKeys(doc, problem, lineOf);
  substituteEnv(doc, env, problem);
  if (problems.count) throw problems.error();

  let raw: unknown;
  try {
    // checkAliases bounded the expansion exactly; the yaml package's own
    // (coarser, per anchor) check stays as a second line of defence.
    raw = doc.toJS({ maxAliasCount: LIMITS.aliasNodes });
  } catch (err) {
    throw new ConfigError(`${file}: YAML error: ${yamlMessage(err)}`);
  }
  return { file, doc, raw, where, lineOf, at: (path) => where(nodeOffset(doc, path)) };
}

/** The document checked against the schema; every problem (up to a limit) in one ConfigError. */
function validate(src: Source): Parsed {
  const { doc, raw, where, lineOf } = src;
  const parsed = configSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const problems = new Problems();
  for (const issue of relevantIssues(parsed.error.issues, raw, configSchema)) {
    const path = issue.path as (string | number)[];
    if (issue.code === "unrecognized_keys") {
      problems.add(() => unknownKeys(doc, raw, configSchema, path, issue.keys, where, lineOf));
    } else {
      problems.add(() => `${src.at(path)}: ${describePath(raw, path)}: ${explain(issue, raw)}`);
    }
  }
  throw problems.error();
}

/** Reads a secret given as `key` (inline) or `keyFile` under `path`; the value and where it came from. */
type SecretReader = (
  obj: Record<string, unknown>,
  key: string,
  path: (string | number)[],
) => { value: Buffer; source: string };

/** A SecretReader that warns about key files readable by others and reports unreadable ones at their line. */
function secretReader(src: Source, opts: LoadOptions, warnings: string[]): SecretReader {
  const read =
    opts.readSecretFile ??
    ((p: string) => {
      const b = readAtMost(p, LIMITS.secretFileBytes);
      if (!b) throw new Error(`larger than ${LIMITS.secretFileBytes / 1024} KiB: not a key file`);
      return b;
    });
  return (obj, key, path) => {
    const inline = obj[key];
    if (typeof inline === "string") return { value: Buffer.from(inline, "utf8"), source: key };
    const f = obj[`${key}File`] as string;
    const label = describePath(src.raw, [...path, `${key}File`]);
    try {
      // A replaced reader (tests) reads no real file, so there is no mode to check.
      const st = opts.readSecretFile ? undefined : statSync(f);
      if (st && st.mode & 0o077) {
        warnings.push(
          `${label}: ${f} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
        );
      }
      return { value: read(f), source: f };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new ConfigError(
        `${src.at([...path, `${key}File`])}: ${label}: cannot read ${f}: ${code}`,
      );
    }
  };
}

/** One line of a secret file: its text without the trailing newline. */
const text1 = (b: Buffer) => b.toString("utf8").replace(/\r?\n$/, "");

function resolveTargets(
  cfg: Parsed,
  src: Source,
  secret: SecretReader,
  warnings: string[],
): Record<string, TargetConfig> {
  const targets = byName<TargetConfig>();
  for (const [name, t] of Object.entries(cfg.targets)) {
    if (t.retention.mode === "GOVERNANCE") {
      const path = ["targets", name, "retention", "mode"];
      warnings.push(
        `${src.at(path)}: ${describePath(src.raw, path)}: GOVERNANCE can be bypassed by anyone with s3:BypassGovernanceRetention (they can shorten the lock or delete the backup); use COMPLIANCE`,
      );
    }
    const cred = (role: "writer" | "reader" | "admin"): Credential | undefined => {
      const c = t.credentials[role] as Record<string, unknown> | undefined;
      if (!c) return undefined;
      const path = ["targets", name, "credentials", role];
      return {
        accessKeyId: text1(secret(c, "accessKeyId", path).value),
        secretAccessKey: new Secret(text1(secret(c, "secretAccessKey", path).value)),
      };
    };
    const writer = cred("writer");
    const admin = cred("admin");
    targets[name] = {
      name,
      endpoint: t.endpoint.replace(/\/+$/, ""),
      region: t.region,
      bucket: t.bucket,
      prefix: t.prefix === "" || t.prefix.endsWith("/") ? t.prefix : `${t.prefix}/`,
      forcePathStyle: t.forcePathStyle,
      ...(t.caFile !== undefined ? { caFile: t.caFile } : {}),
      allowInsecureSseC: t.allowInsecureSseC,
      retention: t.retention,
      credentials: {
        ...(writer ? { writer } : {}),
        reader: cred("reader") as Credential,
        ...(admin ? { admin } : {}),
      },
      partSizeMiB: t.partSizeMiB,
      queueSize: t.queueSize,
      checksum: t.checksum,
      connectTimeoutSeconds: t.connectTimeoutSeconds,
      idleTimeoutSeconds: t.idleTimeoutSeconds,
      lifecycleGraceDays: t.lifecycleGraceDays,
      ...(t.encryption ? { encryption: resolveEncryption(t.encryption) } : {}),
      ...(t.allowInsecureTransport ? { allowInsecureTransport: true } : {}),
      ...(t.keep !== undefined ? { keep: definedOnly(t.keep) } : {}),
    };
  }
  return targets;
}

function resolveEncryption(e: z.infer<typeof encryptionSchema>): EncryptionConfig {
  return {
    scheme: e.scheme,
    recipients: e.recipients.map((r) => r.trim()),
    ...(e.identityFile !== undefined ? { identityFile: e.identityFile } : {}),
    ...(e.formerRecipients.length
      ? { formerRecipients: e.formerRecipients.map((r) => r.trim()) }
      : {}),
  };
}

function masterKeyOf(
  cfg: Parsed,
  src: Source,
  secret: SecretReader,
): Pick<Config, "masterKey" | "masterKeySource"> {
  if (cfg.masterKey === undefined && cfg.masterKeyFile === undefined) {
    // Allowed only when nothing uses SSE-C (validate): an empty key, which
    // deriveSseKey refuses with a clear error should an SSE-C object turn up.
    return { masterKey: new Secret(Buffer.alloc(0)), masterKeySource: "none" };
  }
  const mk = secret(cfg as Record<string, unknown>, "masterKey", []);
  try {
    return { masterKey: new Secret(parseMasterKey(mk.value)), masterKeySource: mk.source };
  } catch (err) {
    const key = mk.source === "masterKey" ? "masterKey" : "masterKeyFile";
    throw new ConfigError(`${src.at([key])}: ${key}: ${(err as Error).message}`);
  }
}

function resolveJobs(cfg: Parsed, src: Source): JobConfig[] {
  return cfg.jobs.map((j, i) => {
    const { hooks, timezone, schedule, excludeFrom, encryption, keep, incremental, ...rest } = j;
    const at = src.at(["jobs", i, "excludeFrom"]);
    return {
      ...rest,
      excludeFrom: excludeFrom.map((f) => ({
        file: f,
        patterns: readExcludeFile(f, `${at}: job ${j.name}: excludeFrom`),
      })),
      ...(schedule !== undefined ? { schedule } : {}),
      ...(timezone !== undefined ? { timezone } : {}),
      ...(hooks !== undefined ? { hooks: definedOnly(hooks) } : {}),
      ...(keep !== undefined ? { keep: definedOnly(keep) } : {}),
      ...(incremental !== undefined ? { incremental } : {}),
      commands: j.commands.map((c) => definedOnly(c)),
      ...(encryption !== undefined ? { encryption: resolveEncryption(encryption) } : {}),
    };
  });
}

function resolveAudit(a: NonNullable<Parsed["audit"]>): AuditConfig {
  return {
    ...(a.schedule !== undefined ? { schedule: a.schedule } : {}),
    slackMinutes: a.slackMinutes,
    ...(a.maxAgeHours !== undefined ? { maxAgeHours: a.maxAgeHours } : {}),
    overrides: a.overrides.map((o) => definedOnly(o) as AuditConfig["overrides"][number]),
  };
}

/** Every exclude pattern of a job: its `exclude` list, then those of its excludeFrom files. */
export function jobExcludes(job: Pick<JobConfig, "exclude" | "excludeFrom">): string[] {
  return [...job.exclude, ...job.excludeFrom.flatMap((f) => f.patterns)];
}

/**
 * The patterns of an excludeFrom file: one per line, blank lines and lines
 * starting with "#" ignored, surrounding whitespace trimmed. A file that cannot
 * be read, is no text file, or holds a bad pattern is a configuration error
 * naming the file (and the line); the same limit as for the config stops /dev/zero.
 */
function readExcludeFile(file: string, label: string): string[] {
  let bytes: Buffer | undefined;
  try {
    bytes = readAtMost(file, LIMITS.excludeFromBytes);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError(`${label}: cannot read ${file}: ${code}`);
  }
  if (!bytes) {
    throw new ConfigError(
      `${label}: ${file} is larger than ${LIMITS.excludeFromBytes / 1024 / 1024} MiB: not a pattern file`,
    );
  }
  let text: string;
  try {
    if (bytes.includes(0)) throw new Error("NUL byte");
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ConfigError(
      `${label}: ${file} is not UTF-8 text: a pattern file has one pattern a line`,
    );
  }
  const patterns: string[] = [];
  for (const [n, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    try {
      compileExcludes([line]);
    } catch (err) {
      throw new ConfigError(`${label}: ${file} line ${n + 1}: ${(err as Error).message}`);
    }
    patterns.push(line);
  }
  return patterns;
}

/** Replace ${NAME} in every string value. A value that is exactly ${NAME} is re-read as a YAML scalar, so numbers and booleans work. */
function substituteEnv(
  doc: Document,
  env: NodeJS.ProcessEnv,
  problem: (offset: number | undefined, msg: string) => void,
): void {
  visit(doc, {
    Scalar(key, node) {
      if (key === "key" || typeof node.value !== "string" || !node.value.includes("${")) return;
      const original = node.value;
      const whole = /^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$/.exec(original);
      const replaced = original.replace(/\$\{([^}]*)\}/g, (m, name: string) => {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
          problem(node.range?.[0], `"${short(m)}" is not a valid environment variable reference`);
          return m;
        }
        const value = env[name];
        if (value === undefined) {
          problem(node.range?.[0], `environment variable ${name} is not set`);
          return m;
        }
        return value;
      });
      node.value = whole ? scalarFromEnv(replaced) : replaced;
    },
  });
}

/** Drops keys whose value is undefined (zod leaves them; exactOptionalPropertyTypes does not accept them). */
function definedOnly<T extends object>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]: Exclude<T[K], undefined>;
  };
}

/** true/false and small integers become YAML booleans and numbers; everything else (keys, hex) stays a string. */
function scalarFromEnv(value: string): unknown {
  return /^(true|false|-?\d{1,15})$/.test(value) ? parseYamlScalar(value) : value;
}

/**
 * A URL as `config check` shows it: the origin, and "/<redacted>" in place of
 * a path or query, where webhook tokens live (the logs show only the origin).
 */
function redactedUrl(url: string): string {
  const origin = urlOrigin(url);
  return url.replace(/\/+$/, "") === origin ? origin : `${origin}/<redacted>`;
}

/** The resolved configuration as plain data with every secret replaced, for `config check`. */
export function redactedView(config: Config): unknown {
  const cred = (c: Credential) => ({ accessKeyId: c.accessKeyId, secretAccessKey: "<redacted>" });
  const notify = (list: readonly NotifyConfig[]) =>
    list.map((n) => ({ ...n, url: redactedUrl(n.url) }));
  // Shell lines may hold a URL with a password (pg_dump postgres://app:pw@db/app).
  const hooks = (h: HooksConfig) =>
    Object.fromEntries(
      Object.entries(h).map(([k, v]) => [k, typeof v === "string" ? redactUserinfo(v) : v]),
    );
  return {
    catalog: config.catalog,
    masterKey:
      config.masterKeySource === "none"
        ? "none (nothing uses SSE-C)"
        : `<redacted> (from ${config.masterKeySource})`,
    host: config.host,
    targets: Object.fromEntries(
      Object.values(config.targets).map((t) => [
        t.name,
        {
          ...t,
          name: undefined,
          credentials: Object.fromEntries(
            Object.entries(t.credentials).flatMap(([role, c]) => (c ? [[role, cred(c)]] : [])),
          ),
        },
      ]),
    ),
    jobs: config.jobs.map((j) => ({
      ...j,
      // The files, not their (possibly 100,000) patterns.
      excludeFrom: j.excludeFrom.map((f) => `${f.file} (${f.patterns.length} patterns)`),
      ...(j.hooks !== undefined ? { hooks: hooks(j.hooks) } : {}),
      commands: j.commands.map((c) => ({ ...c, run: redactUserinfo(c.run) })),
      notify: notify(j.notify),
    })),
    notify: notify(config.notify),
    verify: config.verify,
    ...(config.audit !== undefined ? { audit: config.audit } : {}),
    keepLatestLocked: config.keepLatestLocked,
    maxConcurrentJobs: config.maxConcurrentJobs,
    ...(config.http !== undefined ? { http: config.http } : {}),
  };
}

/** A job's keep policy: its own, else its target's default; undefined when neither sets one. */
export function keepPolicyOf(
  job: Pick<JobConfig, "keep">,
  t: Pick<TargetConfig, "keep">,
): KeepPolicy | undefined {
  return job.keep ?? t.keep;
}
