/**
 * Names that are also properties of every JavaScript object (toString,
 * constructor, valueOf) against the real Ceph RGW: a target may be called so
 * and works; a name that is no longer configured is "not configured", never
 * Object.prototype's function taken for a target.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
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

describe("prototype names as targets (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  it("backs up to a target named toString; verify after renaming it says 'no longer configured'", async () => {
    const bucket = uniqueBucket("proto");
    await createLockedBucket(env, bucket, 1);
    const dir = mkdtempSync(join(tmpdir(), "immutd-names-"));
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(data);
    writeFileSync(join(data, "a.txt"), "alpha\n");
    const config = (target: string) => `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: names-test
targets:
${targetYaml(env, { bucket, name: target, extra: ["partSizeMiB: 5"] })}jobs:
  - name: valueOf
    target: ${target}
    schedule: "@daily"
    paths: [${data}]
`;
    const first = join(dir, "first.yaml");
    writeFileSync(first, config("toString"));
    const b = await runCli(["--config", first, "backup"]);
    assert.equal(b.code, 0, b.stderr);
    const done = logRecords(b.stderr).find((l) => l.msg === "backup succeeded");
    assert.equal(done?.job, "valueOf");

    const list = await runCli(["--config", first, "list", "--json"]);
    assert.equal(list.code, 0, list.stderr);
    const rows = JSON.parse(list.stdout) as { target: string; status: string }[];
    assert.deepEqual(
      rows.map((r) => [r.target, r.status]),
      [["toString", "ok"]],
    );
    const v = await runCli(["--config", first, "verify", "--json"]);
    assert.equal(v.code, 0, v.stderr);

    // The operator renames the target; the catalog's backups still say toString.
    // Looked up through the prototype, "toString" found a function and verify crashed.
    const renamed = join(dir, "renamed.yaml");
    writeFileSync(renamed, config("offsite"));
    const after = await runCli(["--config", renamed, "verify", "--json"]);
    assert.doesNotMatch(after.stderr, /unexpected error|TypeError/);
    const report = JSON.parse(after.stdout) as { notes: string[] };
    assert.ok(
      report.notes.some((n) => /target toString is no longer configured/.test(n)),
      after.stdout,
    );
  });
});
