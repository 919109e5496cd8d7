/**
 * `immutd doctor` against the real Ceph RGW with the tutorial's users: it
 * passes with the least-privilege subusers (plus README's bucket policy), and
 * warns when the writer credential is the main user. Its canary is checked
 * with the plain SDK.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  GetObjectRetentionCommand,
  ListObjectVersionsCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import type { DoctorReport } from "../src/flows/doctor.js";
import { writeConfig } from "./support/assurance.js";
import { runCli } from "./support/cli.js";
import { applyReadmePolicy } from "./support/rgw-admin.js";
import { client, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

describe("immutd doctor (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  before(() => {
    env = s3env();
    main = client(env, env.main);
  });
  after(() => main?.destroy());

  /** A bucket made by `immutd init`, optionally with README's bucket policy. */
  async function bucketFor(policy: boolean, prefix = ""): Promise<string> {
    const bucket = uniqueBucket("doc");
    const init = await runCli(["--config", writeConfig(env, { bucket, prefix }).file, "init"]);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    if (policy) await applyReadmePolicy(env, bucket);
    return bucket;
  }
  async function doctor(cfgFile: string) {
    const r = await runCli(["--config", cfgFile, "doctor", "--json"]);
    const [report] = JSON.parse(r.stdout || "[]") as DoctorReport[];
    const status = (name: string) => report?.checks.find((c) => c.name === name)?.status;
    return { r, report: report as DoctorReport, status };
  }

  it("passes with the tutorial's least-privilege users and leaves one 1-day COMPLIANCE canary", async () => {
    const bucket = await bucketFor(true, "srv/");
    const cfg = writeConfig(env, { bucket, prefix: "srv/" });
    const { r, report } = await doctor(cfg.file);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const notOk = report.checks.filter((c) => c.status !== "OK");
    assert.deepEqual(notOk, [], JSON.stringify(notOk, null, 1));
    assert.equal(report.checks.length, 19);
    for (const secret of cfg.secrets) {
      assert.ok(
        !r.stdout.includes(secret) && !r.stderr.includes(secret),
        "a secret reached the output",
      );
    }

    const versions = await main.send(new ListObjectVersionsCommand({ Bucket: bucket }));
    assert.deepEqual(
      (versions.Versions ?? []).map((v) => [v.Key, v.VersionId]),
      [[report.canary?.key, report.canary?.versionId]],
    );
    assert.deepEqual(versions.DeleteMarkers ?? [], [], "the policy kept the writer from hiding it");
    assert.match(
      report.canary?.key ?? "",
      /^srv\/assure\/\.immutd-doctor\/canary-\d{8}T\d{6}Z-[0-9a-f]{8}$/,
    );
    const ret = await main.send(
      new GetObjectRetentionCommand({
        Bucket: bucket,
        Key: report.canary?.key,
        VersionId: report.canary?.versionId,
      }),
    );
    assert.equal(ret.Retention?.Mode, "COMPLIANCE");
    const days = ((ret.Retention?.RetainUntilDate?.getTime() ?? 0) - Date.now()) / 86_400_000;
    assert.ok(days > 0.99 && days < 1.01, `canary locked ${days} days`);

    // The human form: one line per check.
    const text = await runCli(["--config", cfg.file, "doctor"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      /^ {2}OK {4}delete \(writer\) +cannot delete a locked version \(forbidden by Object Lock\)$/m,
    );
    assert.match(text.stdout, /19 OK, 0 WARN, 0 FAIL/);
  });

  it("warns that Ceph subusers may change the bucket's Object Lock configuration and put delete markers without the bucket policy", async () => {
    const bucket = await bucketFor(false);
    const { r, report, status } = await doctor(writeConfig(env, { bucket }).file);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(status("lock config (writer)"), "WARN");
    assert.equal(status("lock config (reader)"), "WARN");
    // The write subuser may put delete markers: doctor says so, and left one on its canary.
    assert.equal(status("delete marker (writer)"), "WARN");
    const versions = await main.send(new ListObjectVersionsCommand({ Bucket: bucket }));
    assert.deepEqual(
      (versions.DeleteMarkers ?? []).map((m) => [m.Key, m.IsLatest]),
      [[report.canary?.key, true]],
    );
  });

  it("warns when the writer credential is the main user", async () => {
    const bucket = await bucketFor(true);
    const { r, report, status } = await doctor(writeConfig(env, { bucket, writer: env.main }).file);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(status("writer read"), "WARN");
    assert.equal(status("lock config (writer)"), "WARN");
    assert.equal(status("delete (writer)"), "OK");
    assert.match(
      report.checks.find((c) => c.name === "writer read")?.fix ?? "",
      /write-only credential/,
    );
  });

  it("fails (exit 4) on a bucket that does not exist", async () => {
    const { r, status } = await doctor(writeConfig(env, { bucket: uniqueBucket("none") }).file);
    assert.equal(r.code, 4, r.stderr);
    assert.equal(status("bucket"), "FAIL");
    assert.equal(status("endpoint"), "OK");
  });
});
