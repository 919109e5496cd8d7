/**
 * The harness of a CLI test on the test RGW: a private directory with a
 * master key file, a fresh Object Lock bucket (COMPLIANCE default retention),
 * and the config a test writes around them: catalog and key file in the
 * directory, a host name, any top-level keys, the bucket's target (`local`)
 * and the test's jobs. `cli` runs the built CLI with that config.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CliResult, runCli } from "./cli.js";
import { FaultProxy } from "./fault-proxy.js";
import { createLockedBucket, type S3Env, targetYaml, uniqueBucket } from "./s3env.js";

export interface CliWorkspace {
  dir: string;
  bucket: string;
  masterKey: Buffer;
  /** The config file (config.yaml in dir); written by writeConfig. */
  cfg: string;
  /** The catalog the config names (catalog.db in dir). */
  catalog: string;
  /** Writes the config; the target's options as targetYaml takes them, its bucket this one. */
  writeConfig(o: {
    host: string;
    /** More top-level YAML lines, each ending in a newline (e.g. "keepLatestLocked: false\n"). */
    top?: string;
    target?: Omit<Parameters<typeof targetYaml>[1], "bucket">;
    /** The YAML list under `jobs:`. */
    jobs: string;
  }): void;
  /** `immutd --config cfg ARGS...` */
  cli(...args: string[]): Promise<CliResult>;
}

/** A new workspace: directory `immutd-<dirLabel>-*`, bucket `immutd-<label>-*` locked for bucketDays (default 1). */
export async function cliWorkspace(
  env: S3Env,
  label: string,
  o: { dirLabel?: string; bucketDays?: number } = {},
): Promise<CliWorkspace> {
  const dir = mkdtempSync(join(tmpdir(), `immutd-${o.dirLabel ?? label}-`));
  const bucket = uniqueBucket(label);
  await createLockedBucket(env, bucket, o.bucketDays ?? 1);
  const masterKey = randomBytes(32);
  writeFileSync(join(dir, "master.key"), `${masterKey.toString("hex")}\n`, { mode: 0o600 });
  const cfg = join(dir, "config.yaml");
  const catalog = join(dir, "catalog.db");
  return {
    dir,
    bucket,
    masterKey,
    cfg,
    catalog,
    writeConfig: ({ host, top, target, jobs }) =>
      writeFileSync(
        cfg,
        `catalog: ${catalog}
masterKeyFile: ${dir}/master.key
host: ${host}
${top ?? ""}targets:
${targetYaml(env, { ...target, bucket })}jobs:
${jobs}`,
      ),
    cli: (...args) => runCli(["--config", cfg, ...args]),
  };
}

/** A fault proxy in front of the test server, with the server's own certificate. */
export function faultProxyFor(env: S3Env): Promise<FaultProxy> {
  return FaultProxy.start(env.endpoint, {
    caFile: env.caFile,
    certFile: join(env.caFile, "..", "cert.pem"),
    keyFile: join(env.caFile, "..", "key.pem"),
  });
}
