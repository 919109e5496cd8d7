/**
 * `immutd backup` and `immutd list` as an operator runs them, against the real
 * Ceph RGW: config file, exit codes, JSON output, warnings for unreadable files.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { logRecords, runCli } from "./support/cli.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const NOBODY = 65534;

function configYaml(
  env: S3Env,
  o: { dir: string; bucket: string; paths: string[]; jobs?: string },
): string {
  return `catalog: ${o.dir}/state/catalog.db
masterKeyFile: ${o.dir}/master.key
host: cli-test
targets:
${targetYaml(env, {
  bucket: o.bucket,
  extra: ["partSizeMiB: 5"],
  writer: `{ accessKeyId: ${env.writer.accessKeyId}, secretAccessKeyFile: ${o.dir}/writer.secret }`,
  reader: `{ accessKeyId: ${env.reader.accessKeyId}, secretAccessKey: "\${TEST_READER_SECRET}" }`,
})}jobs:
  - name: files
    target: local
    schedule: "*/5 * * * *"
    paths: [${o.paths.join(", ")}]
    exclude: ["*.skip"]
${o.jobs ?? ""}`;
}

describe("immutd backup / list (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let cliEnv: NodeJS.ProcessEnv;
  before(() => {
    env = s3env();
    cliEnv = { TEST_READER_SECRET: env.reader.secretAccessKey };
  });

  function setup(owner?: number) {
    const dir = mkdtempSync(join(tmpdir(), "immutd-cli-"));
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    writeFileSync(join(dir, "writer.secret"), `${env.writer.secretAccessKey}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(data);
    writeFileSync(join(data, "a.txt"), "alpha\n");
    writeFileSync(join(data, "b.skip"), "excluded\n");
    if (owner !== undefined) {
      for (const f of ["", "master.key", "writer.secret"]) chownSync(join(dir, f), owner, owner);
    }
    return { dir, data };
  }

  it("backs up, exits 0, and lists the backup as a table and as JSON", async () => {
    const bucket = uniqueBucket("cli");
    await createLockedBucket(env, bucket, 1);
    const { dir, data } = setup();
    const cfg = join(dir, "config.yaml");
    writeFileSync(cfg, configYaml(env, { dir, bucket, paths: [data] }));

    const r = await runCli(["--config", cfg, "backup"], { env: cliEnv });
    assert.equal(r.code, 0, r.stderr);
    const done = logRecords(r.stderr).find((l) => l.msg === "backup succeeded");
    assert.ok(done, r.stderr);
    assert.equal(done.job, "files");
    assert.equal(done.retentionMode, "COMPLIANCE");
    assert.equal(done.files, 1, "b.skip is excluded");
    assert.ok(
      !r.stderr.includes(env.writer.secretAccessKey) &&
        !r.stderr.includes(env.reader.secretAccessKey),
    );

    const list = await runCli(["--config", cfg, "list", "--json"], { env: cliEnv });
    assert.equal(list.code, 0, list.stderr);
    const rows = JSON.parse(list.stdout) as Record<string, unknown>[];
    assert.equal(rows.length, 1);
    const row = rows[0] as Record<string, unknown>;
    for (const field of [
      "id",
      "job",
      "target",
      "bucket",
      "key",
      "versionId",
      "size",
      "sha256",
      "compression",
      "createdAt",
      "retainUntil",
      "retentionMode",
      "status",
    ]) {
      assert.ok(field in row, `list --json has ${field}`);
    }
    assert.equal(row.bucket, bucket);
    assert.equal(row.versionId, done.versionId);
    assert.ok(!/sseKey|sse_key/.test(list.stdout));

    const table = await runCli(["--config", cfg, "list", "--job", "files"], { env: cliEnv });
    assert.equal(table.code, 0);
    assert.match(table.stdout, /^ID\s+JOB\s+CREATED \(UTC\)/);
    assert.match(table.stdout, /files .* COMPLIANCE\s+ok\s+cli-test\/files\//);

    const typo = await runCli(["--config", cfg, "list", "--job", "flies"], { env: cliEnv });
    assert.equal(typo.code, 2, typo.stderr);
    assert.match(
      typo.stderr,
      /unknown job flies: not configured and not in the catalog; configured jobs: files/,
    );
  });

  it("exits 3 when a job fails and names it; exits 2 for an unknown job", async () => {
    const bucket = uniqueBucket("clifail");
    await createLockedBucket(env, bucket, 1);
    const { dir, data } = setup();
    const cfg = join(dir, "config.yaml");
    const broken = `  - name: broken\n    target: local\n    schedule: "@daily"\n    paths: [/nonexistent/immutd-test]\n`;
    writeFileSync(cfg, configYaml(env, { dir, bucket, paths: [data], jobs: broken }));

    const r = await runCli(["--config", cfg, "backup"], { env: cliEnv });
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /1 of 2 jobs did not succeed: broken \(failed\)/);
    const unknown = await runCli(["--config", cfg, "backup", "nosuchjob"], { env: cliEnv });
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown job nosuchjob; configured jobs: files, broken/);
  });

  it("an unreadable file is a warning: the backup succeeds with exit 5, and status shows the warning", async (t) => {
    const bucket = uniqueBucket("cliperm");
    await createLockedBucket(env, bucket, 1);
    // As root every file is readable, so run immutd as nobody where we can.
    const asNobody = process.getuid?.() === 0;
    const { dir, data } = setup(asNobody ? NOBODY : undefined);
    const secret = join(data, "secret.txt");
    writeFileSync(secret, "no one may read this\n");
    chmodSync(secret, 0o000);
    const cfg = join(dir, "config.yaml");
    writeFileSync(cfg, configYaml(env, { dir, bucket, paths: [data] }));
    if (asNobody) chownSync(cfg, NOBODY, NOBODY);
    else t.diagnostic("not root: testing as the current user");

    const r = await runCli(["--config", cfg, "backup"], {
      env: cliEnv,
      ...(asNobody ? { uid: NOBODY, gid: NOBODY } : {}),
    });
    // 5, not 0: a script must see that a file was left out (restic's "incomplete snapshot").
    assert.equal(r.code, 5, r.stderr);
    const warn = logRecords(r.stderr).find((l) => l.level === "warn" && l.path === secret);
    assert.ok(warn, `a warning names ${secret}:\n${r.stderr}`);
    const done = logRecords(r.stderr).find((l) => l.msg === "backup succeeded");
    assert.equal(done?.warnings, 1);
    assert.match(
      r.stderr,
      /^immutd: 1 of 1 job succeeded with warnings \(files left out, see the log or the run's warnings\): files \(1 warning, run 1\)$/m,
    );
    const asUser = asNobody ? { uid: NOBODY, gid: NOBODY } : {};
    const status = await runCli(["--config", cfg, "status"], { env: cliEnv, ...asUser });
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /^files\s+\S+ \S+\s+succeeded \(1 warning\)/m);

    // A failed job outranks warnings: exit 3.
    const broken = `  - name: broken\n    target: local\n    schedule: "@daily"\n    paths: [/nonexistent/immutd-test]\n`;
    writeFileSync(cfg, configYaml(env, { dir, bucket, paths: [data], jobs: broken }));
    const both = await runCli(["--config", cfg, "backup"], { env: cliEnv, ...asUser });
    assert.equal(both.code, 3, both.stderr);
    assert.match(both.stderr, /1 of 2 jobs did not succeed: broken \(failed\)/);
  });
});
