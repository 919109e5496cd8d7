/**
 * A config file for the init/verify/doctor CLI tests against the test RGW,
 * with the credentials each test chooses (the tutorial's subusers, or the main
 * user in a role it should not have).
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCli } from "./cli.js";
import { type Cred, credYaml, type S3Env, targetYaml } from "./s3env.js";

export interface TestConfig {
  dir: string;
  file: string;
  data: string;
  /** Every secret in the config, to assert none reaches the output. */
  secrets: string[];
}

export function writeConfig(
  env: S3Env,
  o: {
    bucket: string;
    days?: number;
    writer?: Cred;
    reader?: Cred;
    admin?: Cred | null;
    keepLatestLocked?: boolean;
    prefix?: string;
    /** More keys of the job, one YAML line each at the job's indentation. */
    job?: string[];
    /** More keys of the target, one YAML line each, e.g. `idleTimeoutSeconds: 2`. */
    target?: string[];
  },
): TestConfig {
  const dir = mkdtempSync(join(tmpdir(), "immutd-assure-"));
  chmodSync(dir, 0o700);
  const masterKey = randomBytes(32).toString("hex");
  writeFileSync(join(dir, "master.key"), `${masterKey}\n`, { mode: 0o600 });
  const data = join(dir, "data");
  mkdirSync(data);
  writeFileSync(join(data, "a.txt"), "alpha\n".repeat(50));
  writeFileSync(join(data, "b.bin"), randomBytes(100_000));
  const writer = o.writer ?? env.writer;
  const reader = o.reader ?? env.reader;
  const admin = o.admin === undefined ? env.main : o.admin;
  const file = join(dir, "config.yaml");
  writeFileSync(
    file,
    `catalog: ${dir}/state/catalog.db
masterKeyFile: ${dir}/master.key
host: assure
keepLatestLocked: ${o.keepLatestLocked ?? true}
targets:
${targetYaml(env, {
  bucket: o.bucket,
  days: o.days ?? 1,
  extra: [`prefix: "${o.prefix ?? ""}"`, "partSizeMiB: 5", ...(o.target ?? [])],
  writer: credYaml(writer),
  reader: credYaml(reader),
  ...(admin ? { admin: credYaml(admin) } : {}),
})}jobs:
  - name: files
    target: local
    schedule: "0 3 * * *"
    paths: [${data}]
${(o.job ?? []).map((l) => `    ${l}\n`).join("")}`,
    { mode: 0o600 },
  );
  return {
    dir,
    file,
    data,
    secrets: [
      masterKey,
      writer.secretAccessKey,
      reader.secretAccessKey,
      ...(admin ? [admin.secretAccessKey] : []),
    ],
  };
}

/** `immutd list --json` of the config's catalog (it must exit 0). */
export async function listBackups<T>(cfg: TestConfig): Promise<T[]> {
  const r = await runCli(["--config", cfg.file, "list", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T[];
}
