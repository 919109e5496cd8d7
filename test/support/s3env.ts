/**
 * The real Ceph RGW started by scripts/s3-test-server.sh. Tests that need it
 * call s3env(); when the server is not there they FAIL (never skip), because a
 * green run without the real server proves nothing about Object Lock.
 */

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { Agent } from "node:https";
import { fileURLToPath } from "node:url";
import {
  CreateBucketCommand,
  PutObjectLockConfigurationCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";
import type { TargetConfig } from "../../src/config/config.js";
import { Secret } from "../../src/config/secret.js";

export interface Cred {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface S3Env {
  endpoint: string;
  httpEndpoint: string;
  region: string;
  caFile: string;
  cephConf: string;
  main: Cred;
  writer: Cred;
  reader: Cred;
}

const REPO = fileURLToPath(new URL("../../../", import.meta.url));

export function s3env(): S3Env {
  const file = process.env.IMMUTD_TEST_S3_ENV ?? `${REPO}.s3-test/env.json`;
  if (!existsSync(file)) {
    throw new Error(
      `the test S3 server is not running (no ${file}); start it with scripts/s3-test-server.sh start, or run npm test`,
    );
  }
  return JSON.parse(readFileSync(file, "utf8")) as S3Env;
}

export function client(env: S3Env, cred: Cred): S3Client {
  return new S3Client({
    endpoint: env.endpoint,
    region: env.region,
    forcePathStyle: true,
    credentials: cred,
    requestChecksumCalculation: "WHEN_REQUIRED",
    requestHandler: new NodeHttpHandler({
      httpsAgent: new Agent({ ca: readFileSync(env.caFile, "utf8") }),
    }),
  });
}

export function uniqueBucket(label = "t"): string {
  return `immutd-${label}-${randomBytes(4).toString("hex")}`;
}

/** A bucket as the tutorial makes it: Object Lock (so versioning) and a COMPLIANCE default retention. */
export async function createLockedBucket(
  env: S3Env,
  bucket: string,
  days = 1,
  lock = true,
): Promise<void> {
  const admin = client(env, env.main);
  await admin.send(new CreateBucketCommand({ Bucket: bucket, ObjectLockEnabledForBucket: lock }));
  if (lock) {
    await admin.send(
      new PutObjectLockConfigurationCommand({
        Bucket: bucket,
        ObjectLockConfiguration: {
          ObjectLockEnabled: "Enabled",
          Rule: { DefaultRetention: { Mode: "COMPLIANCE", Days: days } },
        },
      }),
    );
  }
  admin.destroy();
}

export function rgwTarget(
  env: S3Env,
  bucket: string,
  over: Partial<TargetConfig> = {},
): TargetConfig {
  const cred = (c: Cred) => ({
    accessKeyId: c.accessKeyId,
    secretAccessKey: new Secret(c.secretAccessKey),
  });
  return {
    name: "rgw",
    endpoint: env.endpoint,
    region: env.region,
    bucket,
    prefix: "",
    forcePathStyle: true,
    caFile: env.caFile,
    allowInsecureSseC: false,
    retention: { mode: "COMPLIANCE", days: 1 },
    credentials: { writer: cred(env.writer), reader: cred(env.reader), admin: cred(env.main) },
    partSizeMiB: 5,
    queueSize: 2,
    checksum: "md5",
    connectTimeoutSeconds: 10,
    idleTimeoutSeconds: 30,
    lifecycleGraceDays: 7,
    ...over,
  };
}

/** The storage administrator removing a version behind S3's back (a provider losing data). */
export function adminRemoveVersion(
  env: S3Env,
  bucket: string,
  key: string,
  versionId: string,
): void {
  execFileSync(
    "radosgw-admin",
    [
      "-c",
      env.cephConf,
      "object",
      "rm",
      `--bucket=${bucket}`,
      `--object=${key}`,
      `--object-version=${versionId}`,
    ],
    {
      stdio: "pipe",
    },
  );
}

/** A credential as a YAML flow mapping with its secret inline. */
export function credYaml(c: Cred): string {
  return `{ accessKeyId: ${c.accessKeyId}, secretAccessKey: "${c.secretAccessKey}" }`;
}

/**
 * The `targets:` entry for a locked bucket on the test RGW (COMPLIANCE), as
 * the config tests write it. Credentials are YAML flow mappings (default: the
 * server's writer and reader with their secrets inline; tests that prove a
 * secret form pass their own); `extra` holds more target keys, one per line.
 */
export function targetYaml(
  env: S3Env,
  o: {
    bucket: string;
    name?: string;
    days?: number;
    extra?: string[];
    writer?: string;
    reader?: string;
    admin?: string;
  },
): string {
  const lines = [
    `  ${o.name ?? "local"}:`,
    `    endpoint: ${env.endpoint}`,
    `    bucket: ${o.bucket}`,
    "    forcePathStyle: true",
    `    caFile: ${env.caFile}`,
    `    retention: { mode: COMPLIANCE, days: ${o.days ?? 1} }`,
    ...(o.extra ?? []).map((l) => `    ${l}`),
    "    credentials:",
    `      writer: ${o.writer ?? credYaml(env.writer)}`,
    `      reader: ${o.reader ?? credYaml(env.reader)}`,
    ...(o.admin ? [`      admin: ${o.admin}`] : []),
  ];
  return `${lines.join("\n")}\n`;
}
