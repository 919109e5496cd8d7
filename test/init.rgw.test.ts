/**
 * `immutd init` against the real Ceph RGW: a new bucket gets Object Lock, a
 * COMPLIANCE default retention and the lifecycle rules; a second run changes
 * nothing; an existing bucket is only ever made stricter. Settings are read
 * back with the plain SDK, not with immutd's own store code.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  CreateBucketCommand,
  GetBucketLifecycleConfigurationCommand,
  GetBucketVersioningCommand,
  GetObjectLockConfigurationCommand,
  PutBucketLifecycleConfigurationCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { writeConfig } from "./support/assurance.js";
import { runCli } from "./support/cli.js";
import { client, createLockedBucket, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

describe("immutd init (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  before(() => {
    env = s3env();
    main = client(env, env.main);
  });
  after(() => main?.destroy());

  const settings = async (bucket: string) => {
    const lock = await main.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }));
    const versioning = await main.send(new GetBucketVersioningCommand({ Bucket: bucket }));
    const lc = await main.send(new GetBucketLifecycleConfigurationCommand({ Bucket: bucket }));
    return {
      lock: lock.ObjectLockConfiguration,
      versioning: versioning.Status,
      rules: (lc.Rules ?? [])
        .map((r) => ({
          id: r.ID,
          status: r.Status,
          noncurrent: r.NoncurrentVersionExpiration?.NoncurrentDays,
          markers: r.Expiration?.ExpiredObjectDeleteMarker,
          abort: r.AbortIncompleteMultipartUpload?.DaysAfterInitiation,
          days: r.Expiration?.Days,
        }))
        .sort((a, b) => String(a.id).localeCompare(String(b.id))),
    };
  };

  it("creates a bucket with Object Lock, COMPLIANCE default retention and lifecycle; a second run changes nothing", async () => {
    const bucket = uniqueBucket("init");
    const cfg = writeConfig(env, { bucket, days: 3 });
    const first = await runCli(["--config", cfg.file, "init"]);
    assert.equal(first.code, 0, first.stderr + first.stdout);
    assert.match(first.stdout, /create +bucket/);
    assert.match(first.stdout, /set +default retention +none → COMPLIANCE 3 days/);
    const s = await settings(bucket);
    assert.deepEqual(s.lock, {
      ObjectLockEnabled: "Enabled",
      Rule: { DefaultRetention: { Mode: "COMPLIANCE", Days: 3 } },
    });
    assert.equal(s.versioning, "Enabled");
    assert.deepEqual(s.rules, [
      {
        id: "immutd-abort-incomplete-uploads",
        status: "Enabled",
        noncurrent: undefined,
        markers: undefined,
        abort: 1,
        days: undefined,
      },
      {
        id: "immutd-expired-delete-markers",
        status: "Enabled",
        noncurrent: undefined,
        markers: true,
        abort: undefined,
        days: undefined,
      },
      {
        id: "immutd-noncurrent-versions",
        status: "Enabled",
        noncurrent: 10,
        markers: undefined,
        abort: undefined,
        days: undefined,
      },
    ]);

    const second = await runCli(["--config", cfg.file, "init"]);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /nothing to change/);
    assert.doesNotMatch(second.stdout, /^ {2}(create|set|add|update) /m);
    assert.deepEqual(await settings(bucket), s);
    for (const secret of cfg.secrets) {
      assert.ok(
        !first.stdout.includes(secret) && !first.stderr.includes(secret),
        "a secret reached the output",
      );
    }
  });

  it("--dry-run shows the plan and creates nothing", async () => {
    const bucket = uniqueBucket("dry");
    const cfg = writeConfig(env, { bucket });
    const r = await runCli(["--config", cfg.file, "init", "local", "--dry-run"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /dry run: nothing changed/);
    await assert.rejects(main.send(new GetObjectLockConfigurationCommand({ Bucket: bucket })));
  });

  it("tightens an existing bucket, keeps others' rules, and never weakens", async () => {
    const bucket = uniqueBucket("tight");
    await createLockedBucket(env, bucket, 1);
    await main.send(
      new PutBucketLifecycleConfigurationCommand({
        Bucket: bucket,
        LifecycleConfiguration: {
          Rules: [
            {
              ID: "theirs",
              Status: "Enabled",
              Filter: { Prefix: "other/" },
              Expiration: { Days: 400 },
            },
          ],
        },
      }),
    );
    const up = await runCli(["--config", writeConfig(env, { bucket, days: 2 }).file, "init"]);
    assert.equal(up.code, 0, up.stderr + up.stdout);
    assert.match(up.stdout, /update +default retention +COMPLIANCE 1 day → COMPLIANCE 2 days/);
    const s = await settings(bucket);
    assert.equal(s.lock?.Rule?.DefaultRetention?.Days, 2);
    assert.deepEqual(
      s.rules.map((r) => r.id),
      [
        "immutd-abort-incomplete-uploads",
        "immutd-expired-delete-markers",
        "immutd-noncurrent-versions",
        "theirs",
      ],
    );
    assert.equal(s.rules.find((r) => r.id === "theirs")?.days, 400);

    const down = await runCli(["--config", writeConfig(env, { bucket, days: 1 }).file, "init"]);
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stdout, /kept +default retention +COMPLIANCE 2 days is stricter/);
    assert.match(down.stdout, /kept +lifecycle immutd-noncurrent-versions/);
    assert.deepEqual(await settings(bucket), s, "nothing was weakened");
  });

  it("exits 4 on an existing bucket without Object Lock, which it cannot fix", async () => {
    const bucket = uniqueBucket("nolock");
    await main.send(new CreateBucketCommand({ Bucket: bucket }));
    const r = await runCli(["--config", writeConfig(env, { bucket }).file, "init"]);
    assert.equal(r.code, 4, r.stderr + r.stdout);
    assert.match(r.stdout, /cannot-fix +object lock/);
    // Said once: the PROBLEM line on stdout; the exit message on stderr counts it.
    assert.match(r.stdout, /PROBLEM +.*does not have Object Lock enabled/);
    assert.doesNotMatch(r.stderr, /does not have Object Lock enabled/);
    assert.match(r.stderr, /^immutd: 1 problem remains that init does not fix/m);
  });

  it("needs the admin credential", async () => {
    const r = await runCli([
      "--config",
      writeConfig(env, { bucket: uniqueBucket("noadm"), admin: null }).file,
      "init",
    ]);
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, /credentials\.admin is not set/);
  });
});
