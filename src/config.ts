/**
 * The configuration: one YAML file, parsed once into a typed, validated,
 * resolved object. Unknown keys are errors (a typo must not silently disable a
 * backup); every default lives in DEFAULTS; every problem is reported with the
 * file, line and key at fault and maps to exit code 78.
 *
 * Resolution order per value: `${ENV_VAR}` substitution in any string, then
 * schema validation, then secrets given as `…File` are read from their files.
 */
import { readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
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
import { ConfigError } from "./errors.js";
import { compileExcludes } from "./exclude.js";
import { parseMasterKey } from "./keys.js";
import { Secret } from "./secret.js";

export const DEFAULT_CONFIG_PATH = "/etc/immutd/config.yaml";

/** Every default of the configuration, in one place. */
export const DEFAULTS = {
  catalog: "/var/lib/immutd/catalog.db",
  region: "us-east-1",
  prefix: "",
  forcePathStyle: false,
  allowInsecureSseC: false,
  retention: { mode: "COMPLIANCE", days: 30 },
  partSizeMiB: 16,
  queueSize: 4,
  checksum: "md5",
  exclude: [] as string[],
  compression: "gzip",
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
} as const;

export type RetentionMode = "COMPLIANCE" | "GOVERNANCE";
/**
 * How each uploaded part is checksummed. md5 (Content-MD5) is understood and
 * verified by every S3 implementation, old Ceph RGW included; the others use the
 * SDK's flexible checksums (x-amz-checksum-*), which some servers ignore.
 */
export type ChecksumMode = "md5" | "crc32" | "crc32c" | "sha1" | "sha256";
export type Compression = "none" | "gzip";

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
  credentials: { writer: Credential; reader: Credential; admin?: Credential };
  partSizeMiB: number;
  queueSize: number;
  checksum: ChecksumMode;
  /** Days after the retention period before `immutd init`'s lifecycle rule expires noncurrent versions. */
  lifecycleGraceDays: number;
}

export interface VerifyConfig {
  /** When the daemon runs `verify` (cron; default daily at 04:00); unset: `schedule: off`. */
  schedule?: string;
  /** When the daemon runs `verify --deep`, and how many newest backups per job it downloads. */
  deep?: { schedule: string; sample: number };
  /** Parallel HEAD/GetObjectRetention requests. */
  concurrency: number;
}

export type NotifyEvent = "start" | "success" | "failure";

export interface NotifyConfig {
  url: string;
  events: NotifyEvent[];
  /** json: POST a JSON object; text: POST one human line (ntfy style); ping: POST with no body (Healthchecks style). */
  format: "json" | "text" | "ping";
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
  schedule: string;
  /** IANA time zone for schedule; default the machine's. */
  timezone?: string;
  /** Run once at daemon start if a scheduled run was missed. */
  catchUp: boolean;
  /** Start up to this many seconds late, at random, to spread load. */
  jitter: number;
  paths: string[];
  exclude: string[];
  compression: Compression;
  hooks?: HooksConfig;
  commands: CommandSource[];
  notify: NotifyConfig[];
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
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const nameSchema = z
  .string()
  .regex(
    NAME,
    "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
  );
const absolutePath = z.string().refine(isAbsolute, "must be an absolute path");

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

const targetSchema = z.strictObject({
  endpoint: z
    .string()
    .refine((s) => /^https?:\/\/[^/\s]+/.test(s), "must be an http:// or https:// URL"),
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
    writer: credentialSchema,
    reader: credentialSchema,
    admin: credentialSchema.optional(),
  }),
  partSizeMiB: z.number().int().min(5).max(5120).default(DEFAULTS.partSizeMiB),
  queueSize: z.number().int().min(1).max(64).default(DEFAULTS.queueSize),
  checksum: z.enum(["md5", "crc32", "crc32c", "sha1", "sha256"]).default(DEFAULTS.checksum),
  lifecycleGraceDays: z.number().int().min(0).max(3650).default(DEFAULTS.lifecycleGraceDays),
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

const notifySchema = z.strictObject({
  url: z
    .string()
    .refine((u) => /^https?:\/\/[^/\s]+/.test(u), "must be an http:// or https:// URL"),
  events: z
    .array(z.enum(["start", "success", "failure"]))
    .min(1)
    .default([...DEFAULTS.notifyEvents]),
  format: z.enum(["json", "text", "ping"]).default(DEFAULTS.notifyFormat),
  timeoutSeconds: z.number().int().min(1).max(300).default(DEFAULTS.notifyTimeoutSeconds),
});

const timezoneSchema = z.string().refine((tz) => {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}, "is not a known IANA time zone (e.g. Europe/Berlin, UTC)");

const jobSchema = z.strictObject({
  name: nameSchema,
  target: z.string().min(1),
  schedule: cronSchema,
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
  compression: z.enum(["none", "gzip"]).default(DEFAULTS.compression),
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
        timeoutSeconds: z.number().int().min(1).optional(),
      }),
    )
    .default([]),
  notify: z.array(notifySchema).default([]),
});

const configSchema = z
  .strictObject({
    catalog: absolutePath.default(DEFAULTS.catalog),
    ...secretPair("masterKey"),
    host: nameSchema.optional(),
    targets: z.record(nameSchema, targetSchema).refine((t) => Object.keys(t).length > 0, {
      message: "must define at least one target",
    }),
    jobs: z.array(jobSchema).min(1, "must define at least one job"),
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
    const seen = new Map<string, number>();
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
      if (!(job.target in cfg.targets)) {
        const known = Object.keys(cfg.targets).join(", ");
        ctx.addIssue({
          code: "custom",
          path: ["jobs", i, "target"],
          message: `target "${job.target}" is not defined under targets (defined: ${known || "none"})`,
        });
      }
    });
    for (const [name, t] of Object.entries(cfg.targets)) {
      if (t.endpoint.startsWith("http://") && !t.allowInsecureSseC) {
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
    requireOneOf(ctx, cfg as Record<string, unknown>, [], "masterKey");
  });

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
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(
      `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  return parseConfig(text, file, opts);
}

export function parseConfig(text: string, file: string, opts: LoadOptions = {}): Loaded {
  const env = opts.env ?? process.env;
  const readSecret = opts.readSecretFile ?? ((p: string) => readFileSync(p));
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  const where = (offset: number | undefined) => {
    if (offset === undefined) return file;
    const { line, col } = lines.linePos(offset);
    return `${file}:${line}:${col}`;
  };

  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors
        .map((e) => `${where(e.pos[0])}: YAML syntax error: ${e.message.split("\n")[0]}`)
        .join("\n"),
    );
  }

  const problems: string[] = [];
  substituteEnv(doc, env, (offset, msg) => problems.push(`${where(offset)}: ${msg}`));
  if (problems.length) throw new ConfigError(problems.join("\n"));

  const raw = doc.toJS() ?? {};
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const path = issue.path as (string | number)[];
      if (issue.code === "unrecognized_keys") {
        for (const key of issue.keys) {
          const label = describePath(raw, [...path, key]);
          problems.push(
            `${where(keyOffset(doc, path, key))}: ${label}: unknown key${suggest(key, path)}`,
          );
        }
        continue;
      }
      const node = nodeOffset(doc, path);
      const missing = issue.code === "invalid_type" && issue.input === undefined;
      problems.push(
        `${where(node)}: ${describePath(raw, path)}: ${missing ? "required key is missing" : issue.message}`,
      );
    }
    throw new ConfigError(problems.join("\n"));
  }

  const cfg = parsed.data;
  const warnings: string[] = [];
  const secretAt = (
    obj: Record<string, unknown>,
    key: string,
    path: (string | number)[],
  ): { value: Buffer; source: string } => {
    const inline = obj[key];
    if (typeof inline === "string") return { value: Buffer.from(inline, "utf8"), source: key };
    const f = obj[`${key}File`] as string;
    const label = describePath(raw, [...path, `${key}File`]);
    try {
      // A replaced reader (tests) reads no real file, so there is no mode to check.
      const st = opts.readSecretFile ? undefined : statSync(f);
      if (st && st.mode & 0o077) {
        warnings.push(
          `${label}: ${f} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
        );
      }
      return { value: readSecret(f), source: f };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new ConfigError(
        `${where(nodeOffset(doc, [...path, `${key}File`]))}: ${label}: cannot read ${f}: ${code}`,
      );
    }
  };
  const text1 = (b: Buffer) => b.toString("utf8").replace(/\r?\n$/, "");

  const targets: Record<string, TargetConfig> = {};
  for (const [name, t] of Object.entries(cfg.targets)) {
    const cred = (role: "writer" | "reader" | "admin"): Credential | undefined => {
      const c = t.credentials[role] as Record<string, unknown> | undefined;
      if (!c) return undefined;
      const path = ["targets", name, "credentials", role];
      return {
        accessKeyId: text1(secretAt(c, "accessKeyId", path).value),
        secretAccessKey: new Secret(text1(secretAt(c, "secretAccessKey", path).value)),
      };
    };
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
        writer: cred("writer") as Credential,
        reader: cred("reader") as Credential,
        ...(admin ? { admin } : {}),
      },
      partSizeMiB: t.partSizeMiB,
      queueSize: t.queueSize,
      checksum: t.checksum,
      lifecycleGraceDays: t.lifecycleGraceDays,
    };
  }

  const mk = secretAt(cfg as Record<string, unknown>, "masterKey", []);
  let masterKey: Buffer;
  try {
    masterKey = parseMasterKey(mk.value);
  } catch (err) {
    const key = mk.source === "masterKey" ? "masterKey" : "masterKeyFile";
    throw new ConfigError(`${where(nodeOffset(doc, [key]))}: ${key}: ${(err as Error).message}`);
  }

  return {
    config: {
      file,
      catalog: cfg.catalog,
      masterKey: new Secret(masterKey),
      masterKeySource: mk.source,
      host: cfg.host ?? hostname().split(".")[0] ?? "localhost",
      targets,
      jobs: cfg.jobs.map((j) => {
        const { hooks, timezone, ...rest } = j;
        return {
          ...rest,
          ...(timezone !== undefined ? { timezone } : {}),
          ...(hooks !== undefined ? { hooks: definedOnly(hooks) } : {}),
          commands: j.commands.map((c) => definedOnly(c)),
        };
      }),
      maxConcurrentJobs: cfg.maxConcurrentJobs,
      ...(cfg.http !== undefined ? { http: cfg.http } : {}),
      notify: cfg.notify,
      verify: {
        concurrency: cfg.verify.concurrency,
        ...(cfg.verify.schedule !== "off" ? { schedule: cfg.verify.schedule } : {}),
        ...(cfg.verify.deep !== undefined ? { deep: cfg.verify.deep } : {}),
      },
      keepLatestLocked: cfg.keepLatestLocked,
    },
    warnings,
  };
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
          problem(node.range?.[0], `"${m}" is not a valid environment variable reference`);
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

function nodeOffset(doc: Document, path: (string | number)[]): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n), true) as
      | { range?: [number, number, number] }
      | undefined;
    if (node && typeof node === "object" && node.range) return node.range[0];
  }
  return undefined;
}

function keyOffset(doc: Document, path: (string | number)[], key: string): number | undefined {
  const map = path.length ? doc.getIn(path, true) : doc.contents;
  if (isMap(map)) {
    for (const pair of map.items) {
      if (isScalar(pair.key) && pair.key.value === key) return pair.key.range?.[0];
    }
  }
  return nodeOffset(doc, path);
}

/** "jobs[1] (etc).schedule" — names the job where there is one. */
function describePath(raw: unknown, path: (string | number)[]): string {
  if (path.length === 0) return "config";
  let out = "";
  let cur: unknown = raw;
  for (const seg of path) {
    if (typeof seg === "number") {
      out += `[${seg}]`;
      cur = Array.isArray(cur) ? cur[seg] : undefined;
      const name = (cur as { name?: unknown } | undefined)?.name;
      if (typeof name === "string") out += ` (${name})`;
    } else {
      out += out ? `.${seg}` : seg;
      cur = cur && typeof cur === "object" ? (cur as Record<string, unknown>)[seg] : undefined;
    }
  }
  return out;
}

/** Known keys at a path of the schema, to suggest the one a typo meant. */
function suggest(key: string, path: (string | number)[]): string {
  const known = keysAt(path);
  let best: string | undefined;
  let bestDist = 3;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDist) {
      bestDist = d;
      best = k;
    }
  }
  return best
    ? ` (did you mean "${best}"?)`
    : known.length
      ? ` (known keys: ${known.join(", ")})`
      : "";
}

function keysAt(path: (string | number)[]): string[] {
  // biome-ignore lint/suspicious/noExplicitAny: walking zod's internal definitions
  let s: any = configSchema;
  const unwrap = () => {
    while (s?._zod?.def && ["default", "optional", "pipe"].includes(s._zod.def.type)) {
      s = s._zod.def.innerType ?? s._zod.def.in;
    }
  };
  unwrap();
  for (const seg of path) {
    if (s?._zod?.def?.type === "array") s = s._zod.def.element;
    else if (s?._zod?.def?.type === "record") s = s._zod.def.valueType;
    else if (s?._zod?.def?.type === "object" && typeof seg === "string") s = s._zod.def.shape[seg];
    else return [];
    unwrap();
  }
  return s?._zod?.def?.type === "object" ? Object.keys(s._zod.def.shape) : [];
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0] as number;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j] as number;
      dp[j] = Math.min(
        (dp[j] as number) + 1,
        (dp[j - 1] as number) + 1,
        prev + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      prev = tmp;
    }
  }
  return dp[b.length] as number;
}

/** The resolved configuration as plain data with every secret replaced, for `config check`. */
export function redactedView(config: Config): unknown {
  const cred = (c: Credential) => ({ accessKeyId: c.accessKeyId, secretAccessKey: "<redacted>" });
  return {
    catalog: config.catalog,
    masterKey: `<redacted> (from ${config.masterKeySource})`,
    host: config.host,
    targets: Object.fromEntries(
      Object.values(config.targets).map((t) => [
        t.name,
        {
          ...t,
          name: undefined,
          credentials: Object.fromEntries(
            Object.entries(t.credentials).map(([role, c]) => [role, cred(c)]),
          ),
        },
      ]),
    ),
    jobs: config.jobs,
  };
}
