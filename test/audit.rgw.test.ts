/**
 * `immutd audit` on the real server: three hosts back up into one bucket and
 * prefix, an auditor with only the reader credential and the master key judges
 * them all. One host stops backing up, one loses an archive version behind S3's
 * back (radosgw-admin on the rados level: COMPLIANCE stops every S3 caller);
 * the auditor reports exactly those two, while the second host's own verify,
 * its catalog tampered with, says all is well. Then a fault (the server answers
 * 500, then stalls) and hostile manifests (not gzip JSON; one naming another
 * host; a forged later version).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import type { AuditReport } from "../src/flows/audit.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest } from "../src/repo/manifest.js";
import { manifestKey, objectKey } from "../src/repo/naming.js";
import { DaemonProcess, runCli } from "./support/cli.js";
import { FaultProxy } from "./support/fault-proxy.js";
import { denySubusersRetentionRead, removeBucketPolicy } from "./support/rgw-admin.js";
import {
  adminRemoveVersion,
  client,
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const sse = (key: Buffer) => ({
  SSECustomerAlgorithm: "AES256",
  SSECustomerKey: key.toString("base64"),
});

interface Fleet {
  dir: string;
  bucket: string;
  masterKey: Buffer;
  /** The config file of each host, by host name. */
  hosts: Record<string, string>;
}

/** One master key, one bucket and prefix, a config per host with its own catalog. */
function fleet(env: S3Env, bucket: string, schedules: Record<string, string>): Fleet {
  const dir = mkdtempSync(join(tmpdir(), "immutd-audit-"));
  chmodSync(dir, 0o700);
  const masterKey = Buffer.from("5a".repeat(32), "hex");
  writeFileSync(join(dir, "master.key"), `${masterKey.toString("hex")}\n`, { mode: 0o600 });
  const hosts: Record<string, string> = {};
  for (const [host, schedule] of Object.entries(schedules)) {
    const data = join(dir, host, "data");
    mkdirSync(data, { recursive: true });
    writeFileSync(join(data, "a.txt"), `${host}\n`.repeat(100));
    const file = join(dir, host, "config.yaml");
    writeFileSync(
      file,
      `catalog: ${dir}/${host}/catalog.db
masterKeyFile: ${dir}/master.key
host: ${host}
targets:
${targetYaml(env, { bucket, extra: ['prefix: "fleet"', "partSizeMiB: 5"] })}jobs:
  - name: files
    target: local
    schedule: "${schedule}"
    paths: [${data}]
`,
      { mode: 0o600 },
    );
    hosts[host] = file;
  }
  return { dir, bucket, masterKey, hosts };
}

/** The auditor's config: the reader credential only, no jobs, no catalog it uses. */
function auditorConfig(
  f: Fleet,
  env: S3Env,
  o: { endpoint?: string; audit?: string[]; days?: number } = {},
) {
  const file = join(f.dir, `auditor-${Math.random().toString(16).slice(2)}.yaml`);
  const target = targetYaml(
    { ...env, endpoint: o.endpoint ?? env.endpoint },
    { bucket: f.bucket, extra: ['prefix: "fleet"'], ...(o.days ? { days: o.days } : {}) },
  )
    .split("\n")
    .filter((l) => !l.includes("writer:"))
    .join("\n");
  writeFileSync(
    file,
    `catalog: ${f.dir}/auditor.db
masterKeyFile: ${f.dir}/master.key
targets:
${target}audit:
${(o.audit ?? ["slackMinutes: 0"]).map((l) => `  ${l}`).join("\n")}
`,
    { mode: 0o600 },
  );
  return file;
}

async function audit(file: string, timeoutMs = 120_000) {
  const r = await runCli(["--config", file, "audit", "--json"], { timeoutMs });
  let report: AuditReport | undefined;
  try {
    report = JSON.parse(r.stdout) as AuditReport;
  } catch {
    assert.fail(`audit printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
  }
  return { ...r, report };
}

async function backup(file: string) {
  const r = await runCli(["--config", file, "backup"]);
  assert.equal(r.code, 0, r.stderr);
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const { port } = srv.address() as { port: number };
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

interface Row {
  key: string;
  versionId: string;
}

describe("audit: one auditor for many hosts (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let writer: S3Client;
  let main: S3Client;
  let proxy: FaultProxy;
  before(async () => {
    env = s3env();
    writer = client(env, env.writer);
    main = client(env, env.main);
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
  });
  after(async () => {
    writer?.destroy();
    main?.destroy();
    await proxy?.close();
  });

  it("reports exactly the host that stopped and the version lost behind S3's back, while that host's own verify lies", async () => {
    const bucket = uniqueBucket("aud");
    await createLockedBucket(env, bucket, 1);
    // web3's job is due every second: once it stops, two missed runs pass in 2 s
    // (slackMinutes 0), where a daily job would need two days.
    const f = fleet(env, bucket, {
      web1: "0 3 * * *",
      web2: "0 3 * * *",
      web3: "* * * * * *",
    });
    await backup(f.hosts.web3 as string);
    await backup(f.hosts.web1 as string);
    await backup(f.hosts.web2 as string);
    await backup(f.hosts.web2 as string);

    const auditor = auditorConfig(f, env);
    const clean = await audit(auditor);
    // web3's backup may already be two seconds old; nothing else may be reported.
    assert.deepEqual(
      clean.report?.findings.filter((x) => x.host !== "web3"),
      [],
      JSON.stringify(clean.report),
    );
    assert.deepEqual(
      clean.report?.jobs.map((j) => [j.host, j.job, j.backups]),
      [
        ["web1", "files", 1],
        ["web2", "files", 2],
        ["web3", "files", 1],
      ],
    );

    // web2 loses its older backup's archive version behind S3's back.
    const web2db = join(f.dir, "web2", "catalog.db");
    const rows = new Database(web2db, { readonly: true })
      .prepare("SELECT object_key AS key, version_id AS versionId FROM backups ORDER BY id")
      .all() as Row[];
    const lost = rows[0] as Row;
    adminRemoveVersion(env, bucket, lost.key, lost.versionId);
    // The attacker on web2 makes its catalog forget that backup: web2's own verify is clean.
    const db = new Database(web2db);
    db.prepare("DELETE FROM backups WHERE version_id = ?").run(lost.versionId);
    db.close();
    const own = await runCli(["--config", f.hosts.web2 as string, "verify", "--json"]);
    assert.equal(own.code, 0, `web2's verify was meant to lie: ${own.stdout}${own.stderr}`);

    // Until web3's newest backup is past its second missed run (2 s after it was made).
    const web3Due = Date.parse(clean.report?.jobs[2]?.dueBy ?? "");
    assert.ok(web3Due > 0, JSON.stringify(clean.report?.jobs[2]));
    await new Promise((r) => setTimeout(r, Math.max(0, web3Due - Date.now() + 1000)));

    const r = await audit(auditor);
    assert.equal(r.code, 4, r.stderr);
    const got = (r.report?.findings ?? []).map((x) => [x.kind, x.host, x.job, x.key]);
    assert.deepEqual(
      got.sort(),
      [
        ["missing", "web2", "files", lost.key],
        ["too-old", "web3", "files", got.find((g) => g[0] === "too-old")?.[3] ?? "?"],
      ].sort(),
      JSON.stringify(r.report, null, 2),
    );
    assert.match(
      r.report?.findings.find((x) => x.kind === "too-old")?.message ?? "",
      /backups have stopped/,
    );
    // Human output at a terminal names both too.
    const human = await runCli(["--config", auditor, "audit"]);
    assert.equal(human.code, 4);
    assert.match(human.stdout, /FINDING {2}missing/);
    assert.match(human.stdout, /FINDING {2}too-old/);
    assert.doesNotMatch(human.stdout + human.stderr, new RegExp(env.reader.secretAccessKey));

    // The auditor's daemon (no jobs, no writer): audits at start, then on audit.schedule, into /metrics.
    const port = await freePort();
    const daemonCfg = auditorConfig(f, env, {
      audit: ["slackMinutes: 0", 'schedule: "0 5 * * *"'],
    });
    writeFileSync(
      daemonCfg,
      `${readFileSync(daemonCfg, "utf8")}http: { listen: "127.0.0.1:${port}" }\n`,
    );
    const d = new DaemonProcess(["--config", daemonCfg]);
    try {
      await d.waitFor((x) => x.msg === "audit found problems", 120_000, "the audit");
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const labels = (host: string) => `target="local",host="${host}",job="files"`;
      assert.match(
        metrics,
        new RegExp(`immutd_audit_findings\\{${labels("web2")},kind="missing"\\} 1`),
      );
      assert.match(
        metrics,
        new RegExp(`immutd_audit_findings\\{${labels("web3")},kind="too-old"\\} 1`),
      );
      assert.match(
        metrics,
        new RegExp(`immutd_audit_findings\\{${labels("web1")},kind="none"\\} 0`),
      );
      assert.match(
        metrics,
        new RegExp(`immutd_audit_newest_backup_timestamp_seconds\\{${labels("web3")}\\} \\d+`),
      );
      assert.match(metrics, /immutd_audit_last_run_success\{target="local"\} 1/);
      assert.equal(
        d.count((x) => String(x.msg).startsWith("audit: ")),
        2,
      );
      // promtool (Debian package prometheus) lints the audit's series (prom-client's own
      // nodejs_active_*_total gauges fail its naming lint; they are not the audit's).
      const series = metrics
        .split("\n")
        .filter((l) => l.includes("immutd_audit_"))
        .join("\n");
      const lint = spawnSync("promtool", ["check", "metrics"], {
        input: `${series}\n`,
        encoding: "utf8",
      });
      assert.equal(lint.error, undefined, "promtool is needed: apt-get install prometheus");
      assert.equal(lint.status, 0, lint.stdout + lint.stderr);
    } finally {
      d.child.kill("SIGTERM");
      await d.exited;
    }
  });

  it("locks: shorter than the auditor's configured days is retention-short; a reader refused GetObjectRetention is lock-unreadable, naming the permission", async () => {
    const bucket = uniqueBucket("audl");
    await createLockedBucket(env, bucket, 1);
    const f = fleet(env, bucket, { web1: "0 3 * * *" });
    await backup(f.hosts.web1 as string);
    const ok = await audit(auditorConfig(f, env));
    assert.equal(ok.code, 0, JSON.stringify(ok.report));

    // The hosts lock for 1 day; an auditor configured for 30 sees every lock short.
    const short = await audit(auditorConfig(f, env, { days: 30 }));
    assert.equal(short.code, 4);
    assert.deepEqual(
      short.report?.findings.map((x) => [x.kind, x.host]),
      [["retention-short", "web1"]],
    );
    assert.match(short.report?.findings[0]?.message ?? "", /COMPLIANCE 30 days/);

    await denySubusersRetentionRead(env, bucket);
    try {
      const refused = await audit(auditorConfig(f, env));
      assert.equal(refused.code, 4, refused.stderr);
      assert.deepEqual(
        refused.report?.findings.map((x) => [x.kind, x.host, x.job]),
        [["lock-unreadable", "web1", "files"]],
        JSON.stringify(refused.report),
      );
      assert.match(refused.report?.findings[0]?.message ?? "", /s3:GetObjectRetention/);
    } finally {
      await removeBucketPolicy(env, bucket);
    }
  });

  it("a server answering 500, then stalling: retries, then check-failed, never ok", async () => {
    const bucket = uniqueBucket("audf");
    await createLockedBucket(env, bucket, 1);
    const f = fleet(env, bucket, { web1: "0 3 * * *" });
    await backup(f.hosts.web1 as string);
    const auditor = auditorConfig(f, env, { endpoint: proxy.endpoint });

    // Every HEAD of an archive answers 500: retried, then reported as check-failed.
    proxy.clear();
    const heads = proxy.fault({
      match: (q) => q.method === "HEAD",
      times: 100,
      action: { kind: "status", status: 500, code: "InternalError" },
    });
    const r = await audit(auditor);
    assert.equal(r.code, 4, r.stderr);
    assert.ok(heads.hits >= 4, `HEAD was tried ${heads.hits} times`);
    assert.deepEqual(
      r.report?.findings.map((x) => x.kind),
      ["check-failed"],
      JSON.stringify(r.report),
    );
    assert.match(r.report?.findings[0]?.message ?? "", /could not be checked/);
    assert.notEqual(r.report?.jobs[0]?.findings, 0);

    // The listing stalls: the idle timeout ends each attempt, then the target is check-failed.
    proxy.clear();
    proxy.fault({
      match: (q) => q.method === "GET" && q.query.has("versions"),
      times: 100,
      action: { kind: "hang" },
    });
    const stalled = auditorConfig(f, env, { endpoint: proxy.endpoint });
    writeFileSync(
      stalled,
      readFileSync(stalled, "utf8").replace(
        'prefix: "fleet"',
        'prefix: "fleet"\n    idleTimeoutSeconds: 1',
      ),
    );
    const s = await audit(stalled, 300_000);
    proxy.clear();
    assert.equal(s.code, 4, s.stderr);
    assert.deepEqual(
      s.report?.findings.map((x) => x.kind),
      ["check-failed"],
    );
    assert.match(s.report?.findings[0]?.message ?? "", /cannot list .* nothing was audited/);
  });

  it("hostile manifests (not gzip JSON, naming another host, a forged later version, a delete marker) are findings, not crashes", async () => {
    const bucket = uniqueBucket("audh");
    await createLockedBucket(env, bucket, 1);
    const f = fleet(env, bucket, { web1: "0 3 * * *" });
    await backup(f.hosts.web1 as string);
    const row = new Database(join(f.dir, "web1", "catalog.db"), { readonly: true })
      .prepare(
        "SELECT manifest_key AS key, manifest_version_id AS versionId FROM backups ORDER BY id",
      )
      .get() as Row;
    const put = (key: string, body: Buffer) =>
      writer.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: body,
          ...sse(deriveSseKey(f.masterKey, bucket, key)),
        }),
      );
    const mk = (host: string) =>
      manifestKey(
        objectKey({
          prefix: "fleet/",
          host,
          job: "files",
          at: new Date(),
          compression: "gzip",
        }),
      );
    // 1. Not gzip JSON at all.
    const garbage = mk("evil");
    await put(garbage, Buffer.from("this is not a manifest"));
    // 2. web1's real manifest copied under host "other": it names web1.
    const res = await main.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: row.key,
        VersionId: row.versionId,
        ...sse(deriveSseKey(f.masterKey, bucket, row.key)),
      }),
    );
    const real = Buffer.from(
      await (res.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
    );
    const copied = mk("other");
    await put(copied, real);
    // 3. A forged later version at web1's manifest key (the writer may add one).
    await put(row.key, gzipSync(JSON.stringify({ ...decodeManifest(real), files: [] })));
    // 4. A delete marker hiding it (RGW lets the write subuser put one without the README policy).
    await writer.send(new DeleteObjectCommand({ Bucket: bucket, Key: row.key }));

    const r = await audit(auditorConfig(f, env, { audit: ["slackMinutes: 60"] }));
    assert.equal(r.code, 4, r.stderr);
    const kinds = (r.report?.findings ?? []).map((x) => [x.kind, x.host, x.key]).sort();
    assert.deepEqual(
      kinds,
      [
        ["manifest-forged", "web1", row.key],
        ["manifest-hidden", "web1", row.key],
        ["manifest-invalid", "evil", garbage],
        ["manifest-invalid", "other", copied],
        // Hosts whose only manifest is invalid have no backup that checks out; their
        // manifests record no schedule the auditor could trust, so no age finding.
      ].sort(),
      JSON.stringify(r.report, null, 2),
    );
    assert.match(
      r.report?.findings.find((x) => x.host === "other")?.message ?? "",
      /does not belong at its key: .* names archive fleet\/web1\/files\//,
    );
    assert.match(
      r.report?.findings.find((x) => x.host === "evil")?.message ?? "",
      /not a valid manifest: not a manifest/,
    );
    // web1's backup itself (the oldest manifest version, its archive) is still judged fine.
    assert.equal(r.report?.jobs.find((j) => j.host === "web1")?.newest !== null, true);
  });
});
