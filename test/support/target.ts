import type { TargetConfig } from "../../src/config.js";
import { Secret } from "../../src/secret.js";

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
    lifecycleGraceDays: 7,
    ...over,
  };
}
