import type { Config, JobConfig, TargetConfig } from "../../src/config/config.js";
import { Secret } from "../../src/config/secret.js";

/** A target config as loadConfig would resolve it, for tests that skip the YAML. */
export function targetConfig(over: Partial<TargetConfig> = {}): TargetConfig {
  const cred = (id: string) => ({ accessKeyId: id, secretAccessKey: new Secret(`${id}-secret`) });
  return {
    name: "test",
    endpoint: "https://s3.test.invalid",
    region: "us-east-1",
    bucket: "bucket",
    prefix: "",
    forcePathStyle: true,
    allowInsecureSseC: false,
    retention: { mode: "COMPLIANCE", days: 1 },
    credentials: { writer: cred("writer"), reader: cred("reader") },
    partSizeMiB: 5,
    queueSize: 2,
    checksum: "md5",
    connectTimeoutSeconds: 10,
    idleTimeoutSeconds: 30,
    lifecycleGraceDays: 7,
    ...over,
  };
}

/** A job as loadConfig would resolve it. */
export function jobConfig(
  over: Partial<JobConfig> & Pick<JobConfig, "name" | "target">,
): JobConfig {
  return {
    schedule: "0 3 * * *",
    catchUp: true,
    jitter: 0,
    paths: [],
    exclude: [],
    excludeFrom: [],
    excludeIfPresent: [],
    oneFileSystem: false,
    compression: "gzip",
    commands: [],
    notify: [],
    ...over,
  };
}

/** A whole resolved config around the given targets and jobs. */
export function fullConfig(
  over: Partial<Config> & Pick<Config, "catalog" | "targets" | "jobs" | "masterKey">,
): Config {
  return {
    file: "test",
    masterKeySource: "test",
    host: "testhost",
    verify: { concurrency: 4 },
    keepLatestLocked: true,
    maxConcurrentJobs: 1,
    notify: [],
    ...over,
  };
}
