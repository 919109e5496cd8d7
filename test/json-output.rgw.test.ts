/**
 * `--json` on every command that prints a result, against the real Ceph RGW,
 * as a script runs them (no terminal): stdout is exactly one JSON document
 * (JSON.parse of all of it), stderr holds only log lines (each an NDJSON
 * record) or the one "immutd: " exit message, and a failure still prints a
 * JSON error object with the documented exit code; so does a job that the
 * server fails (a fault proxy answering 500). The field names checked here
 * are the ones README "JSON output" documents.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type CliResult, runCli } from "./support/cli.js";
import { FaultProxy, isUploadPart } from "./support/fault-proxy.js";
import {
  adminRemoveVersion,
  createLockedBucket,
  credYaml,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

type Doc = Record<string, unknown>;

/** stdout parsed as one document; stderr lines are log records only (no table, no document). */
function oneDocument(r: CliResult, what: string): unknown {
  let doc: unknown;
  try {
    doc = JSON.parse(r.stdout);
  } catch (err) {
    assert.fail(`${what}: stdout is not one JSON document (${String(err)}):\n${r.stdout}`);
  }
  for (const line of r.stderr.split("\n").filter((l) => l !== "")) {
    if (line.startsWith("immutd: ")) continue; // the exit message, never on stdout
    // A usage error as the command-line parser prints it.
    if (line.startsWith("error: ") || line.startsWith("(run with --help")) continue;
    const rec = JSON.parse(line) as Doc; // throws on anything that is not a log record
    assert.equal(typeof rec.level, "string", `${what}: stderr line is not a log record: ${line}`);
    assert.equal(typeof rec.msg, "string", `${what}: stderr line is not a log record: ${line}`);
  }
  return doc;
}

function errorOf(doc: unknown): { type: string; message: string; exitCode: number } {
  const e = (doc as { error?: { type: string; message: string; exitCode: number } }).error;
  assert.ok(e, `not an error document: ${JSON.stringify(doc)}`);
  assert.deepEqual(Object.keys(e).sort(), ["exitCode", "message", "type"]);
  return e;
}

describe("--json on every command (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let dir: string;
  let cfg: string;
  let bucket: string;
  let cli: (...args: string[]) => Promise<CliResult>;

  before(async () => {
    env = s3env();
    bucket = uniqueBucket("json");
    await createLockedBucket(env, bucket, 1);
    dir = mkdtempSync(join(tmpdir(), "immutd-json-"));
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(join(data, "sub"), { recursive: true });
    writeFileSync(join(data, "a.txt"), "alpha\n");
    writeFileSync(join(data, "sub", "b.txt"), "beta\n");
    cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/state/catalog.db
masterKeyFile: ${dir}/master.key
host: json-test
targets:
${targetYaml(env, { bucket, admin: credYaml(env.main) })}jobs:
  - name: files
    target: local
    paths: [${data}]
  - name: gone
    target: local
    paths: [${dir}/does-not-exist]
`,
    );
    cli = (...args) => runCli(["--config", cfg, ...args]);
  });

  it("backup --json: one document with every job's result, logs on stderr", async () => {
    const r = await cli("backup", "--json", "files");
    assert.equal(r.code, 0, r.stderr);
    const doc = oneDocument(r, "backup") as { jobs: Doc[] };
    assert.equal(doc.jobs.length, 1);
    const j = doc.jobs[0] as Doc;
    assert.deepEqual(Object.keys(j).sort(), [
      "backupId",
      "bucket",
      "bytes",
      "durationMs",
      "error",
      "files",
      "job",
      "key",
      "retainUntil",
      "runId",
      "status",
      "versionId",
      "warnings",
    ]);
    assert.equal(j.status, "succeeded");
    assert.equal(j.bucket, bucket);
    assert.equal(j.files, 2);
    assert.equal(typeof j.versionId, "string");
    assert.ok(!Number.isNaN(Date.parse(String(j.retainUntil))));
    assert.equal(j.error, null);
    // The logs are still there, on stderr only.
    assert.match(r.stderr, /"msg":"backup succeeded"/);
    assert.doesNotMatch(r.stdout, /"msg"/);
  });

  it("backup --json of a failing job: still one document, the failure in it, exit 3, no stderr message", async () => {
    const r = await cli("backup", "--json", "gone", "files");
    assert.equal(r.code, 3, r.stderr);
    const doc = oneDocument(r, "backup (failing)") as { jobs: Doc[] };
    // In the order of the config, as they ran.
    assert.deepEqual(
      doc.jobs.map((j) => [j.job, j.status]),
      [
        ["files", "succeeded"],
        ["gone", "failed"],
      ],
    );
    assert.match(String(doc.jobs[1]?.error), /does-not-exist/);
    assert.doesNotMatch(r.stderr, /^immutd: /m, "with --json the result is the document");
  });

  it("backup --dry-run --json: the walk's report per job", async () => {
    const r = await cli("backup", "--dry-run", "--json", "files");
    assert.equal(r.code, 0, r.stderr);
    const doc = oneDocument(r, "backup --dry-run") as { jobs: Doc[] };
    assert.equal(doc.jobs[0]?.job, "files");
    assert.equal(doc.jobs[0]?.files, 2);
    assert.equal(doc.jobs[0]?.bytes, 11);
  });

  it("list, status, ls, verify, restore --to, restore --list: one document each", async () => {
    const list = oneDocument(await cli("list", "--json", "--job", "files"), "list") as Doc[];
    assert.ok(list.length >= 1);
    assert.equal(list[0]?.job, "files");

    const status = oneDocument(await cli("status", "--json"), "status") as Doc;
    assert.deepEqual(Object.keys(status).sort(), ["daemon", "jobs", "verify"]);

    const ls = oneDocument(await cli("ls", "files", "--json"), "ls") as { files: Doc[] };
    assert.ok(ls.files.some((f) => String(f.path).endsWith("/sub/b.txt")));

    const v = await cli("verify", "--json");
    assert.equal(v.code, 0, v.stderr);
    const report = oneDocument(v, "verify") as Doc;
    assert.deepEqual(report.findings, []);
    assert.equal(typeof report.checked, "number");

    const to = join(dir, "restored");
    rmSync(to, { recursive: true, force: true });
    const rt = await cli("restore", "files", "--to", to, "--json");
    assert.equal(rt.code, 0, rt.stderr);
    const restored = oneDocument(rt, "restore --to") as Doc;
    assert.equal(restored.mode, "extract");
    assert.equal(restored.dest, to);
    assert.equal(restored.files, 2);
    assert.equal(restored.integrity, "catalog");
    assert.equal(restored.entries, null);

    const rl = await cli("restore", "files", "--list", "--json");
    assert.equal(rl.code, 0, rl.stderr);
    const listed = oneDocument(rl, "restore --list") as { entries: Doc[]; mode: string };
    assert.equal(listed.mode, "list");
    assert.ok(listed.entries.some((e) => String(e.name).endsWith("sub/b.txt") && e.size === 5));
    assert.deepEqual(Object.keys(listed.entries[0] ?? {}).sort(), [
      "gid",
      "linkname",
      "mode",
      "mtime",
      "name",
      "size",
      "type",
      "uid",
    ]);
  });

  it("init --dry-run --json and doctor --json: one document each", async () => {
    const i = await cli("init", "--dry-run", "--json");
    assert.ok(i.code === 0 || i.code === 4, i.stderr);
    const init = oneDocument(i, "init") as { dryRun: boolean; targets: Doc[] };
    assert.equal(init.dryRun, true);
    assert.equal(init.targets[0]?.bucket, bucket);
    assert.ok(Array.isArray(init.targets[0]?.steps));
    assert.ok(Array.isArray(init.targets[0]?.problems));

    const d = await cli("doctor", "--json");
    assert.ok(d.code === 0 || d.code === 4, d.stderr);
    const doctor = oneDocument(d, "doctor") as { target: string; checks: Doc[] }[];
    assert.equal(doctor[0]?.target, "local");
    assert.ok(doctor[0]?.checks.some((c) => c.name === "endpoint" && c.status === "OK"));
    // Each check is said once, in the document: none is logged on stderr too.
    assert.doesNotMatch(d.stderr, /"check":/);
  });

  it("verify --json with a finding: the report (exit 4), not an error object; the finding is not logged twice", async () => {
    const rows = JSON.parse((await cli("list", "--json", "--job", "files")).stdout) as {
      key: string;
      versionId: string;
    }[];
    const victim = rows[0];
    assert.ok(victim);
    adminRemoveVersion(env, bucket, victim.key, victim.versionId);
    const v = await cli("verify", "--json", "--job", "files");
    assert.equal(v.code, 4, v.stderr);
    const report = oneDocument(v, "verify (finding)") as { findings: Doc[] };
    assert.ok(
      report.findings.some((f) => f.kind === "missing" && f.versionId === victim.versionId),
    );
    assert.doesNotMatch(v.stderr, /"kind":"missing"/);
    assert.doesNotMatch(v.stderr, /^immutd: /m);
  });

  it("failures print a JSON error object with the documented exit code", async () => {
    const cases: [string[], number, string][] = [
      [["backup", "--json", "nosuch"], 2, "UsageError"],
      [["restore", "nosuch", "--list", "--json"], 2, "UsageError"],
      [["status", "--json", "--no-such-option"], 2, "UsageError"],
      [["restore", "files", "--stdout", "--json"], 2, "UsageError"],
    ];
    for (const [args, code, type] of cases) {
      const r = await cli(...args);
      assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      const e = errorOf(oneDocument(r, args.join(" ")));
      assert.equal(e.exitCode, code);
      assert.equal(e.type, type);
    }
    const missing = await runCli(["--config", join(dir, "nope.yaml"), "list", "--json"]);
    assert.equal(missing.code, 78);
    const e = errorOf(JSON.parse(missing.stdout));
    assert.equal(e.type, "ConfigError");
    assert.match(e.message, /nope\.yaml/);
    assert.equal(missing.stderr, "", "the message is in the document, not said twice");
  });
});

describe("--json under faults (CLI, Ceph RGW through a fault proxy)", () => {
  let env: S3Env;
  let proxy: FaultProxy;
  before(async () => {
    env = s3env();
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
  });
  after(() => proxy.close());

  it("every part answered 500: backup --json is still one document, the job failed with the server's error, exit 3", async () => {
    const bucket = uniqueBucket("json500");
    await createLockedBucket(env, bucket, 1);
    const dir = mkdtempSync(join(tmpdir(), "immutd-json500-"));
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "data"));
    writeFileSync(join(dir, "data", "blob"), randomBytes(6 << 20));
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: json500
targets:
${targetYaml({ ...env, endpoint: proxy.endpoint }, { bucket, extra: ["partSizeMiB: 5"] })}jobs:
  - name: data
    target: local
    compression: none
    paths: [${dir}/data]
`,
    );
    proxy.fault({
      match: isUploadPart(),
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 500, code: "InternalError", message: "disk on fire" },
    });
    try {
      const r = await runCli(["--config", cfg, "backup", "--json"]);
      assert.equal(r.code, 3, r.stderr);
      const doc = oneDocument(r, "backup (500)") as { jobs: Doc[] };
      assert.equal(doc.jobs[0]?.status, "failed");
      assert.match(String(doc.jobs[0]?.error), /InternalError, HTTP 500: disk on fire/);
      assert.equal(doc.jobs[0]?.versionId, null);
    } finally {
      proxy.clear();
    }
  });
});
