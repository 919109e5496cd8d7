/**
 * `immutd doctor`: the preflight a new user runs first. Each check is one line,
 * OK, WARN or FAIL, with what to do. FAIL means a promise of immutd would not
 * hold or immutd could not work (exit code 4); WARN means a credential can do
 * more than its role needs, or something could not be proven.
 *
 * The credential checks use a canary, as the tutorial's step 4 does by hand:
 * the writer uploads a tiny SSE-C object under `<prefix><host>/.immutd-doctor/`
 * with an explicit COMPLIANCE retention of one day (the shortest), and doctor
 * then tries to read it with each credential and to delete it with each, and
 * has the writer put a delete marker on it (Object Lock allows that to anyone
 * who may write; doctor warns if the writer may). It is the one object immutd
 * writes that is not a backup; it is locked for a day, restore and verify ignore
 * it. Behind the delete marker it is a noncurrent version, which immutd's
 * lifecycle rule removes once its lock has passed; where the writer may not put
 * the marker, the canary stays a current version, like a backup.
 * Two probes may leave one more canary each, only where the server failed
 * them: an upload with a wrong checksum that the server accepted, and an upload
 * by the reader that the server allowed.
 *
 * The other write: to learn whether the writer and reader may change the
 * bucket's Object Lock configuration (Ceph RGW lets subusers do it), doctor
 * writes the bucket's current default retention back unchanged with each.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  type Config,
  type EncryptionScheme,
  encryptionOf,
  type TargetConfig,
} from "../config/config.js";
import { describeError, explainReadRefusal, refusalWords, StorageError } from "../errors.js";
import type { Logger } from "../log.js";
import {
  type BucketProblem,
  describeRetention,
  lifecycleProblems,
  lockProblems,
  missingLifecycle,
} from "../retention/bucket-check.js";
import { KEEP_TAG } from "../retention/tiers.js";
import { RetryPolicy, retry } from "../store/retry.js";
import {
  type BucketLockState,
  CANARY_DIR,
  type EndpointProbe,
  type LifecycleRule,
  type ObjectStore,
  type Target,
} from "../store/store.js";
import { judgeKeep, policiesOn } from "./doctor-keep.js";
import { readLifecycle, readLockState } from "./verify.js";

export type CheckStatus = "OK" | "WARN" | "FAIL" | "SKIP";

export interface Check {
  target: string;
  /** Short name, e.g. "endpoint", "delete (writer)". */
  name: string;
  status: CheckStatus;
  message: string;
  /** What to do (WARN and FAIL). */
  fix?: string;
}

export interface DoctorReport {
  target: string;
  bucket: string;
  checks: Check[];
  /** The canary doctor left behind, if it wrote one. */
  canary?: { key: string; versionId: string; retainUntil: string };
}

export interface DoctorDeps {
  config: Config;
  targetConfig: TargetConfig;
  target: Target;
  log: Logger;
  /** The clock; tests move it. */
  now?: () => Date;
  /** The caller prints the report (immutd doctor): every check is then logged at debug, said once. */
  reportShown?: boolean;
}

const DAY_MS = 86_400_000;
/** S3 refuses signatures more than 15 minutes off. */
const SKEW_FAIL_MS = 15 * 60_000;
const SKEW_WARN_MS = 30_000;

type Outcome<T = void> = { ok: true; value: T } | { ok: false; error: unknown };

async function attempt<T>(fn: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (error) {
    return { ok: false, error };
  }
}

function statusOf(err: unknown): number | undefined {
  return err instanceof StorageError ? err.status : undefined;
}

/**
 * The encryption schemes that reach a target: its jobs' (each job's own
 * `encryption:` or the target's), or the target's alone when no job uses it.
 */
export function targetSchemes(
  config: Pick<Config, "jobs">,
  t: TargetConfig,
): Set<EncryptionScheme> {
  const jobs = config.jobs.filter((j) => j.target === t.name);
  const schemes = new Set(jobs.map((j) => encryptionOf(j, t).scheme));
  if (!schemes.size) schemes.add(encryptionOf({}, t).scheme);
  return schemes;
}

/** Whether every backup to the target is age alone, so no SSE-C key is ever sent to it. */
export function ageOnly(config: Pick<Config, "jobs">, t: TargetConfig): boolean {
  const s = targetSchemes(config, t);
  return s.size === 1 && s.has("age");
}

/** Pure: the endpoint line. */
export function judgeEndpoint(
  probe: Outcome<EndpointProbe>,
  t: TargetConfig,
  noSseC = false,
): Omit<Check, "target"> {
  if (!probe.ok) {
    return {
      name: "endpoint",
      status: "FAIL",
      message: `${t.endpoint} cannot be reached: ${describeError(probe.error)}`,
      fix: `check targets.${t.name}.endpoint, the network, and (for a private CA) targets.${t.name}.caFile`,
    };
  }
  const p = probe.value;
  if (p.protocol === "http:" && noSseC) {
    return {
      name: "endpoint",
      status: t.allowInsecureTransport ? "WARN" : "FAIL",
      message: `${p.url} is plain http: every backup here is age-encrypted and no SSE-C key is sent, but anyone on the path can read the credentials' requests and alter or replace what is uploaded and downloaded`,
      fix: "use the https endpoint (allowInsecureTransport is for a local test server only)",
    };
  }
  if (p.protocol === "http:") {
    return {
      name: "endpoint",
      status: t.allowInsecureSseC ? "WARN" : "FAIL",
      message: `${p.url} is plain http: SSE-C keys and credentials' requests cross the network readable`,
      fix: "use the https endpoint (allowInsecureSseC is for a local test server only)",
    };
  }
  if (p.status >= 500) {
    return {
      name: "endpoint",
      status: "WARN",
      message: `${p.url} answers over ${p.tls ?? "TLS"} but with HTTP ${p.status}`,
      fix: "the server reports an error; check it, then run doctor again",
    };
  }
  return {
    name: "endpoint",
    status: "OK",
    message: `${p.url} answers over ${p.tls ?? "TLS"} with a verified certificate in ${p.rttMs} ms`,
  };
}

/** Pure: the clock line from the server's Date header. */
export function judgeClock(probe: EndpointProbe): Omit<Check, "target"> {
  if (!probe.date) {
    return {
      name: "clock",
      status: "WARN",
      message: "the server sent no Date header, so clock skew cannot be measured",
      fix: "keep this machine's clock synchronised (NTP): retention dates and request signatures depend on it",
    };
  }
  const skew = probe.date.getTime() - probe.localMidpoint.getTime();
  const abs = Math.abs(skew);
  const text = `${(abs / 1000).toFixed(abs < 10_000 ? 1 : 0)} s ${skew >= 0 ? "behind" : "ahead of"} the server`;
  if (abs > SKEW_FAIL_MS) {
    return {
      name: "clock",
      status: "FAIL",
      message: `this machine's clock is ${text}: S3 refuses requests signed more than 15 minutes off`,
      fix: "synchronise the clock (NTP: systemd-timesyncd, chrony)",
    };
  }
  if (abs > SKEW_WARN_MS) {
    return {
      name: "clock",
      status: "WARN",
      message: `this machine's clock is ${text}`,
      fix: "synchronise the clock (NTP); retention dates immutd computes depend on it",
    };
  }
  return {
    name: "clock",
    status: "OK",
    message: `within ${SKEW_WARN_MS / 1000} s of the server's (${text})`,
  };
}

/** Pure: the bucket lines, from the same checks verify makes. */
export function judgeBucket(
  state: BucketLockState,
  rules: readonly LifecycleRule[] | undefined,
  t: TargetConfig,
  hasAdmin: boolean,
  lifecycleError?: string,
): Omit<Check, "target">[] {
  const problems = lockProblems(state, t);
  const out: Omit<Check, "target">[] = [];
  const lockIssue = problems.filter(
    (p) => p.kind === "object-lock-disabled" || p.kind === "versioning-disabled",
  );
  out.push(
    lockIssue.length
      ? failed("object lock", lockIssue)
      : {
          name: "object lock",
          status: "OK",
          message: `enabled on bucket ${t.bucket}, with versioning`,
        },
  );
  if (!state.objectLock) return out;
  const retention = problems.filter(
    (p) => p.kind === "no-default-retention" || p.kind === "default-retention-weak",
  );
  const d = state.defaultRetention;
  out.push(
    retention.length
      ? failed("default retention", retention)
      : {
          name: "default retention",
          status: "OK",
          message: `${d ? describeRetention(d) : "none"} (configured: ${describeRetention(t.retention)})`,
        },
  );
  out.push(judgeLifecycle(rules, t, hasAdmin, lifecycleError));
  return out;
}

/** Pure: the lifecycle line (rules undefined: no credential may read them). */
function judgeLifecycle(
  rules: readonly LifecycleRule[] | undefined,
  t: TargetConfig,
  hasAdmin: boolean,
  lifecycleError: string | undefined,
): Omit<Check, "target"> {
  if (lifecycleError !== undefined) {
    return {
      name: "lifecycle",
      status: "WARN",
      message: `not checked: reading the lifecycle rules failed: ${lifecycleError}`,
      fix: "run doctor again; if it persists, check the endpoint and credentials",
    };
  }
  if (rules === undefined) {
    return {
      name: "lifecycle",
      status: "WARN",
      message:
        "not checked: neither the reader nor an admin credential may read the lifecycle rules",
      fix: hasAdmin
        ? "give the admin credential s3:GetLifecycleConfiguration"
        : `configure targets.${t.name}.credentials.admin (the bucket owner) so that doctor and verify can read them`,
    };
  }
  const bad = lifecycleProblems(rules, t);
  if (bad.length) return failed("lifecycle", bad);
  const missing = missingLifecycle(rules, t);
  if (missing.length) {
    return {
      name: "lifecycle",
      status: "WARN",
      message: `immutd's cleanup rules are missing or disabled: ${missing.join(", ")}`,
      fix: `run \`immutd init ${t.name}\` to add them (old versions, delete markers and aborted uploads would otherwise stay)`,
    };
  }
  return {
    name: "lifecycle",
    status: "OK",
    message: "immutd's cleanup rules are set; no rule expires backups inside the retention",
  };
}

/** One FAIL line for problems found by the checks verify shares: their messages and fixes. */
function failed(name: string, problems: readonly BucketProblem[]): Omit<Check, "target"> {
  return {
    name,
    status: "FAIL",
    message: problems.map((p) => p.message).join("; "),
    fix: problems.map((p) => p.fix).join("; "),
  };
}

function checksumHeader(t: TargetConfig): string {
  return t.checksum === "md5" ? "Content-MD5" : `x-amz-checksum-${t.checksum}`;
}

export function canaryKey(t: TargetConfig, host: string, at: Date, tag = ""): string {
  const stamp = at
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
  return `${t.prefix}${host}/${CANARY_DIR}/canary-${stamp}-${randomBytes(4).toString("hex")}${tag}`;
}

/**
 * One run of doctor against one target: what every check reads and the one
 * way it reports. `add` records a line and logs it (FAIL as error, WARN as
 * warn, the rest as debug).
 */
interface Run {
  config: Config;
  t: TargetConfig;
  target: Target;
  report: DoctorReport;
  /** When the canary was made; its lock runs a day from it. */
  started: Date;
  add(c: Omit<Check, "target">): void;
  /** SKIP lines for checks that cannot run, and why. */
  skip(names: string[], why: string): void;
}

/** The canary the writer uploaded: what the credential checks test with. */
interface Canary {
  /** The key it is stored at (with `-unencrypted` where SSE-C was refused). */
  key: string;
  versionId: string;
  /** False where the server refused SSE-C and doctor fell back to a plain upload. */
  encrypted: boolean;
  /** Uploaded without SSE-C because the target is age-only: read back without a key. */
  ageOnly?: boolean;
  sseKey: Buffer;
  body: Buffer;
  retainUntil: Date;
  /** The bucket's lock settings as read before the canary. */
  state: BucketLockState;
  /** Set by the delete check once a credential deleted it. */
  deleted: boolean;
}

/**
 * The checks that need a canary, in the order their lines are reported. Each
 * adds its own lines (OK, WARN, FAIL or SKIP) and nothing else; a new check
 * is one function here.
 */
const CANARY_CHECKS: readonly ((run: Run, c: Canary) => Promise<void>)[] = [
  checkSseC,
  checkChecksum,
  checkCanaryLock,
  checkReads,
  checkReaderWrite,
  checkLockExtension,
  checkKeepTagging,
  checkLockConfig,
  checkDelete,
  checkDeleteMarker,
];

export async function runDoctor(deps: DoctorDeps): Promise<DoctorReport> {
  const run = startRun(deps);
  if (!(await checkEndpoint(run))) return run.report;
  const state = await checkBucket(run);
  if (!state) return run.report;
  const canary = await uploadCanary(run, state);
  if (!canary) return run.report;
  for (const check of CANARY_CHECKS) await check(run, canary);
  return run.report;
}

function startRun(deps: DoctorDeps): Run {
  const { config, target, log } = deps;
  const t = deps.targetConfig;
  const checks: Check[] = [];
  const add = (c: Omit<Check, "target">) => {
    checks.push({ target: t.name, ...c });
    const level =
      deps.reportShown || (c.status !== "FAIL" && c.status !== "WARN")
        ? "debug"
        : c.status === "FAIL"
          ? "error"
          : "warn";
    log[level]({ target: t.name, check: c.name, status: c.status }, c.message);
  };
  return {
    config,
    t,
    target,
    report: { target: t.name, bucket: t.bucket, checks },
    started: (deps.now ?? (() => new Date()))(),
    add,
    skip: (names, why) => {
      for (const name of names) add({ name, status: "SKIP", message: why });
    },
  };
}

/** Reachability, TLS and the clock; false if the endpoint cannot be reached. */
async function checkEndpoint(run: Run): Promise<boolean> {
  const { t, target, add, skip } = run;
  const probe = await attempt(() => target.reader.probeEndpoint());
  add(judgeEndpoint(probe, t, ageOnly(run.config, t)));
  if (!probe.ok) {
    skip(["everything else"], "the endpoint cannot be reached");
    return false;
  }
  add(judgeClock(probe.value));
  return true;
}

/** The bucket, as verify checks it; its lock settings, or undefined where a canary cannot follow. */
async function checkBucket(run: Run): Promise<BucketLockState | undefined> {
  const { t, target, add, skip } = run;
  const state = await attempt(() => readLockState(target));
  if (!state.ok) {
    const missing = statusOf(state.error) === 404;
    add({
      name: "bucket",
      status: "FAIL",
      message: missing
        ? `bucket ${t.bucket} does not exist`
        : `cannot read the settings of bucket ${t.bucket}: ${describeError(state.error)}`,
      fix: missing
        ? `create it with \`immutd init ${t.name}\``
        : `check targets.${t.name}.bucket and the reader credential`,
    });
    skip(["credentials"], "the bucket cannot be read");
    return undefined;
  }
  const rules = await attempt(() => readLifecycle(target));
  for (const c of judgeBucket(
    state.value,
    rules.ok ? rules.value : undefined,
    t,
    target.admin !== undefined,
    rules.ok ? undefined : describeError(rules.error),
  ))
    add(c);
  for (const c of judgeKeep(rules.ok ? rules.value : undefined, t, run.config)) add(c);
  if (!state.value.objectLock) {
    skip(["credentials"], "without Object Lock there is nothing to prove with a canary");
    return undefined;
  }
  return state.value;
}

/**
 * SSE-C on a real upload by the writer. Where SSE-C is refused, a plain
 * upload tells "SSE-C refused" (AWS blocks it on new buckets since April 2026)
 * from "cannot write at all". Undefined if the writer cannot upload.
 */
async function uploadCanary(run: Run, state: BucketLockState): Promise<Canary | undefined> {
  const { t, target, add } = run;
  const retainUntil = new Date(run.started.getTime() + DAY_MS);
  const key = canaryKey(t, run.config.host, run.started);
  const body = Buffer.from(
    `immutd doctor canary: proves the lock holds; locked until ${retainUntil.toISOString()}, safe to ignore\n`,
  );
  const sseKey = randomBytes(32);
  const base = { sseKey, body, retainUntil, state, deleted: false };
  // An age-only target never gets an SSE-C key, not even the canary's.
  const noSseC = ageOnly(run.config, t);
  const put = noSseC
    ? await attempt(() => target.writer.putCanary({ key, body, retainUntil }))
    : await attempt(() => target.writer.putCanary({ key, body, sseKey, retainUntil }));
  let canary: Canary;
  if (put.ok && noSseC) {
    canary = { ...base, key, versionId: put.value.versionId, encrypted: false, ageOnly: true };
    add({
      name: "writer upload",
      status: "OK",
      message: `the writer uploaded the canary s3://${t.bucket}/${key} (without SSE-C: every job here uses encryption: age)`,
    });
    add({
      name: "sse-c",
      status: "OK",
      message:
        "not used: every backup to this target is age-encrypted on the host, and no request carries an SSE-C key",
    });
  } else if (put.ok) {
    canary = { ...base, key, versionId: put.value.versionId, encrypted: true };
    add({
      name: "writer upload",
      status: "OK",
      message: `the writer uploaded the canary s3://${t.bucket}/${key}`,
    });
  } else {
    const plainKey = `${key}-unencrypted`;
    const plain = noSseC
      ? put
      : await attempt(() => target.writer.putCanary({ key: plainKey, body, retainUntil }));
    if (!plain.ok) {
      add({
        name: "writer upload",
        status: "FAIL",
        message: `the writer cannot upload: ${describeError(put.error)}`,
        fix: `give targets.${t.name}.credentials.writer permission to write (s3:PutObject, s3:PutObjectRetention), e.g. a Ceph subuser with --access=write`,
      });
      run.skip(["credentials"], "there is no canary to test them with");
      return undefined;
    }
    canary = { ...base, key: plainKey, versionId: plain.value.versionId, encrypted: false };
    add({
      name: "writer upload",
      status: "OK",
      message: `the writer uploaded an unencrypted canary s3://${t.bucket}/${plainKey}`,
    });
    add({
      name: "sse-c",
      status: "FAIL",
      message: `the server refuses SSE-C uploads (it accepted the same one unencrypted): ${describeError(put.error)}; this target's backups use SSE-C, so they would fail`,
      fix: `either encrypt on the host instead: set targets.${t.name}.encryption: { scheme: age, recipients: [age1…] } (see \`immutd key generate --age\`), which sends no SSE-C key; or allow SSE-C on the bucket: on AWS, PutBucketEncryption with BlockedEncryptionTypes: { EncryptionType: [NONE] } (permission s3:PutEncryptionConfiguration), which new buckets block since April 2026`,
    });
  }
  run.report.canary = {
    key: canary.key,
    versionId: canary.versionId,
    retainUntil: retainUntil.toISOString(),
  };
  return canary;
}

/** The server refuses a read of the canary with a wrong SSE-C key. */
async function checkSseC({ t, target, add }: Run, c: Canary): Promise<void> {
  if (!c.encrypted) return;
  const wrong = await attempt(() => target.reader.head(c.key, c.versionId, randomBytes(32)));
  // A refusal proves something only if it was the key that was refused, not the reader.
  const why = wrong.ok
    ? undefined
    : await explainReadRefusal(wrong.error, () => target.reader.head(c.key, c.versionId, c.sseKey));
  add(
    wrong.ok
      ? {
          name: "sse-c",
          status: "FAIL",
          message:
            "the server returned the canary for a wrong SSE-C key: it does not encrypt with the key immutd sends",
          fix: "do not use this server for backups until it honours SSE-C",
        }
      : why?.refused === "sse-c key"
        ? {
            name: "sse-c",
            status: "OK",
            message: "the server accepts SSE-C uploads and refuses reads with a wrong key",
          }
        : {
            name: "sse-c",
            status: "FAIL",
            message: `cannot tell whether the server checks SSE-C keys: a read with a wrong key failed, but not for the key: ${why?.text ?? describeError(wrong.error)}`,
            fix: `check targets.${t.name}.credentials.reader: the reader read fails the same way`,
          },
  );
}

/** The server refuses an upload whose checksum header does not match. */
async function checkChecksum(run: Run, c: Canary): Promise<void> {
  const { t, target, add } = run;
  const bad = await attempt(() =>
    target.writer.putCanary({
      key: canaryKey(t, run.config.host, run.started, "-checksum"),
      body: c.body,
      ...(c.encrypted ? { sseKey: c.sseKey } : {}),
      retainUntil: c.retainUntil,
      corruptChecksum: true,
    }),
  );
  const header = checksumHeader(t);
  if (bad.ok) {
    add({
      name: "checksum",
      status: "WARN",
      message: `the server stored an upload whose ${header} did not match: it does not verify that header, so a part corrupted on the way would be stored`,
      fix:
        t.checksum === "md5"
          ? "run `immutd verify --deep` regularly (it compares SHA-256 with the catalog)"
          : `set targets.${t.name}.checksum: md5 (Ceph RGW 16, for one, ignores x-amz-checksum-* headers)`,
    });
  } else if (statusOf(bad.error) === 400) {
    add({
      name: "checksum",
      status: "OK",
      message: `the server verifies ${header}: it refused an upload whose checksum did not match`,
    });
  } else {
    add({
      name: "checksum",
      status: "WARN",
      message: `could not test whether the server verifies ${header}: ${describeError(bad.error)}`,
      fix: "run doctor again; if it persists, run `immutd verify --deep` regularly",
    });
  }
}

/** The canary is locked as asked (COMPLIANCE, one day). */
async function checkCanaryLock({ target, add }: Run, c: Canary): Promise<void> {
  const ret = await attempt(() =>
    retry(() => target.reader.retention(c.key, c.versionId), RetryPolicy.probe),
  );
  if (!ret.ok) {
    add({
      name: "canary lock",
      status: "FAIL",
      message: `the reader cannot read the canary's retention: ${describeError(ret.error)}`,
      fix: "the reader needs s3:GetObjectRetention: verify checks every backup's lock with it",
    });
  } else if (ret.value?.mode !== "COMPLIANCE") {
    add({
      name: "canary lock",
      status: "FAIL",
      message: ret.value
        ? `the canary is locked in ${ret.value.mode} mode, not the COMPLIANCE it was uploaded with`
        : "the canary has no retention although it was uploaded with one: the server does not lock objects",
      fix: "do not use this server for backups: it does not enforce Object Lock",
    });
  } else {
    add({
      name: "canary lock",
      status: "OK",
      message: `COMPLIANCE until ${ret.value.retainUntil.toISOString()}`,
    });
  }
}

/** The reader reads the canary back intact; the writer cannot read it at all. */
async function checkReads({ target, add, skip }: Run, c: Canary): Promise<void> {
  if (!c.encrypted && !c.ageOnly) {
    skip(["reader read", "writer read"], "needs an SSE-C canary");
    return;
  }
  const key = c.encrypted ? c.sseKey : undefined;
  const read = await attempt(async () => {
    const s = await target.reader.get(c.key, c.versionId, key);
    const chunks: Buffer[] = [];
    for await (const chunk of s) chunks.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(chunks);
  });
  add(
    read.ok && sha256(read.value) === sha256(c.body)
      ? {
          name: "reader read",
          status: "OK",
          message: "the reader can read the canary back with its key",
        }
      : {
          name: "reader read",
          status: "FAIL",
          message: read.ok
            ? "the reader read the canary back, but the bytes differ from what was uploaded"
            : `the reader cannot read the canary: ${describeError(read.error)}`,
          fix: "the reader needs s3:GetObject and s3:GetObjectVersion (e.g. a Ceph subuser with --access=read): restore and verify use it",
        },
  );
  const writerRead = await attempt(() =>
    target.writer.get(c.key, c.versionId, key).then((s) => s.resume()),
  );
  add(
    writerRead.ok
      ? {
          name: "writer read",
          status: "WARN",
          message: "the writer can read backups back; it only needs to write them",
          fix: "use a write-only credential for the writer (a Ceph subuser with --access=write, or README's AWS policy): the writer's key lives on the machine an attacker takes first",
        }
      : {
          name: "writer read",
          status: "OK",
          message: `the writer cannot read backups back (${refusalWords(writerRead.error)})`,
        },
  );
}

function sha256(b: Buffer): string {
  return createHash("sha256").update(b).digest("hex");
}

/** The reader cannot upload. */
async function checkReaderWrite(run: Run, c: Canary): Promise<void> {
  const readerPut = await attempt(() =>
    run.target.reader.putCanary({
      key: canaryKey(run.t, run.config.host, run.started, "-reader"),
      body: c.body,
      ...(c.encrypted ? { sseKey: c.sseKey } : {}),
      retainUntil: c.retainUntil,
    }),
  );
  run.add(
    readerPut.ok
      ? {
          name: "reader write",
          status: "WARN",
          message: "the reader can write (it uploaded a second canary); it only needs to read",
          fix: "use a read-only credential for the reader (a Ceph subuser with --access=read, or README's AWS policy)",
        }
      : {
          name: "reader write",
          status: "OK",
          message: `the reader cannot write (${refusalWords(readerPut.error)})`,
        },
  );
}

/**
 * The writer can set and extend a version's lock. Every backup needs this
 * when the bucket default gives it less than configured (src/retention/lock.ts), and
 * keepLatestLocked needs it to extend locks.
 */
async function checkLockExtension({ config, target, add }: Run, c: Canary): Promise<void> {
  const later = {
    mode: "COMPLIANCE" as const,
    retainUntil: new Date(c.retainUntil.getTime() + 60_000),
  };
  const ext = await attempt(() =>
    retry(() => target.writer.extendRetention(c.key, c.versionId, later), RetryPolicy.probe),
  );
  if (ext.ok) {
    add({
      name: "lock extension",
      status: "OK",
      message: `the writer can set and extend a version's lock (each backup's explicit lock${config.keepLatestLocked ? ", keepLatestLocked" : ""})`,
    });
    return;
  }
  const admin = target.admin;
  const viaAdmin = admin
    ? await attempt(() => admin.extendRetention(c.key, c.versionId, later))
    : undefined;
  add(
    viaAdmin?.ok
      ? {
          name: "lock extension",
          status: "WARN",
          message: `only the admin credential can set or extend locks (the writer: ${refusalWords(ext.error)}), so backups and keepLatestLocked need admin on this machine`,
          fix: "give the writer s3:PutObjectRetention, and remove admin from this machine's config",
        }
      : {
          name: "lock extension",
          status: "FAIL",
          message: `the writer cannot set a version's lock (${describeError(ext.error)}): a backup that the bucket default locks for less than configured would fail and stay unlocked${config.keepLatestLocked ? ", and keepLatestLocked cannot extend locks" : ""}`,
          fix: "give the writer s3:PutObjectRetention (Ceph subusers with --access=write have it)",
        },
  );
}

/**
 * With a keep policy: the writer tags the canary as each backup is tagged, and
 * the tag is read back. A server that refuses or drops tags (Hetzner, R2, a
 * proxy) leaves every backup untagged: locked for its tiers, never removed.
 */
async function checkKeepTagging({ t, target, add, config }: Run, c: Canary): Promise<void> {
  if (policiesOn(config, t).length === 0) return;
  const tag = { [KEEP_TAG]: "doctor-probe" };
  const put = await attempt(() =>
    retry(() => target.writer.putTags(c.key, c.versionId, tag), RetryPolicy.probe),
  );
  if (!put.ok) {
    add({
      name: "keep tagging",
      status: "WARN",
      message: `the writer cannot tag a version (${describeError(put.error)}): backups are locked for their tiers, but no lifecycle rule will remove them`,
      fix: "give the writer s3:PutObjectTagging (Ceph subusers with --access=write have it), or expect storage to grow",
    });
    return;
  }
  let read: Record<string, string> | undefined;
  for (const s of [target.reader, target.admin]) {
    if (!s || read) continue;
    const r = await attempt(() => retry(() => s.tags(c.key, c.versionId), RetryPolicy.probe));
    if (r.ok) read = r.value;
  }
  if (read === undefined) {
    add({
      name: "keep tagging",
      status: "WARN",
      message:
        "the writer tagged the canary, but neither the reader nor admin may read tags, so verify cannot check backups' tags",
      fix: "give the reader s3:GetObjectTagging",
    });
    return;
  }
  add(
    read[KEEP_TAG] === "doctor-probe"
      ? {
          name: "keep tagging",
          status: "OK",
          message: "the writer's tags are kept: the tier rules can find each backup",
        }
      : {
          name: "keep tagging",
          status: "WARN",
          message: `the server accepted the writer's tag but does not keep it (read back: ${JSON.stringify(read)}): backups are locked for their tiers, but no lifecycle rule will remove them`,
          fix: "use a provider whose lifecycle rules filter by tag (README, Retention that ends), or expect storage to grow",
        },
  );
}

/** Who may change the bucket's Object Lock configuration: written back unchanged by each. */
async function checkLockConfig({ t, target, add }: Run, c: Canary): Promise<void> {
  const d = c.state.defaultRetention;
  if (!d) return;
  const same =
    d.years !== undefined ? { mode: d.mode, years: d.years } : { mode: d.mode, days: d.days };
  for (const [role, store] of [
    ["writer", target.writer],
    ["reader", target.reader],
  ] as [string, ObjectStore][]) {
    const change = await attempt(() => store.putDefaultRetention(same));
    add(
      change.ok
        ? {
            name: `lock config (${role})`,
            status: "WARN",
            message: `the ${role} credential can change the bucket's default retention (doctor wrote it back unchanged); a stolen key could weaken or remove it: backup's preflight refuses such a bucket, each backup sets and reads back its own lock, and verify reports the bucket`,
            fix: `deny it s3:PutBucketObjectLockConfiguration (Ceph RGW lets subusers do this: add README's bucket policy)`,
          }
        : {
            name: `lock config (${role})`,
            status: "OK",
            message: `the ${role} cannot change the bucket's Object Lock configuration (${refusalWords(change.error)})`,
          },
    );
  }
  const again = await attempt(() => readLockState(target));
  if (again.ok && JSON.stringify(again.value.defaultRetention) !== JSON.stringify(d)) {
    add({
      name: "lock config",
      status: "FAIL",
      message: `the bucket's default retention changed while doctor ran: ${describeRetention(d)} → ${again.value.defaultRetention ? describeRetention(again.value.defaultRetention) : "none"}`,
      fix: `find out who changes it, and run \`immutd init ${t.name}\``,
    });
  }
}

/** Nobody can delete a locked version: the tutorial's step 4, in its order (restorer, creator, main user). */
async function checkDelete({ target, report, add }: Run, c: Canary): Promise<void> {
  const roles: [string, ObjectStore][] = [
    ["reader", target.reader],
    ["writer", target.writer],
    ...(target.admin ? ([["admin", target.admin]] as [string, ObjectStore][]) : []),
  ];
  for (const [role, store] of roles) {
    if (c.deleted) {
      add({ name: `delete (${role})`, status: "SKIP", message: "the canary is already gone" });
      continue;
    }
    const del = await attempt(() => store.deleteCanary(c.key, c.versionId));
    if (del.ok) {
      c.deleted = true;
      delete report.canary;
      add({
        name: `delete (${role})`,
        status: "FAIL",
        message: `the ${role} deleted a locked version (the canary): this bucket does not protect backups`,
        fix: "use a server and bucket that enforce Object Lock in COMPLIANCE mode",
      });
    } else {
      add({
        name: `delete (${role})`,
        status: "OK",
        message: `cannot delete a locked version (${refusalWords(del.error)})`,
      });
    }
  }
}

/**
 * Hiding is not deleting: Object Lock lets anyone with write access put a
 * delete marker on a key. The locked version stays, restorable by its version
 * ID; verify warns about markers on backup keys. On the canary the marker is
 * also its way out: noncurrent, it falls to immutd's lifecycle rule once its
 * lock has passed.
 */
async function checkDeleteMarker({ target, add }: Run, c: Canary): Promise<void> {
  if (c.deleted) return;
  const hide = await attempt(() => target.writer.hideCanary(c.key));
  add(
    hide.ok
      ? {
          name: "delete marker (writer)",
          status: "WARN",
          message:
            "the writer can put a delete marker on a key (it did on the canary): a stolen key can hide the latest version of backups; they stay locked and restorable by version ID, and verify warns about such markers",
          fix: "deny the writer s3:DeleteObject (README's bucket policy for Ceph subusers; README's AWS writer policy does not grant it)",
        }
      : {
          name: "delete marker (writer)",
          status: "OK",
          message: `the writer cannot put delete markers (${refusalWords(hide.error)})`,
        },
  );
}
