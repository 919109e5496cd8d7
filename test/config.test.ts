import assert from "node:assert/strict";
import { mkdtempSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { configPath, parseConfig, redactedView } from "../src/config/config.js";
import { ConfigError } from "../src/errors.js";
import { runCli } from "./support/cli.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-config-"));
const keyFile = join(dir, "master.key");
writeFileSync(keyFile, `${"ab".repeat(32)}\n`, { mode: 0o600 });
const secretFile = join(dir, "writer-secret");
writeFileSync(secretFile, "s3cr3t-from-file\n", { mode: 0o600 });

function valid(extra = ""): string {
  return `catalog: ${dir}/catalog.db
masterKeyFile: ${keyFile}
host: web-1
targets:
  offsite:
    endpoint: https://s3.example.com
    bucket: backups-web
    prefix: web-1
    retention: { mode: COMPLIANCE, days: 30 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKeyFile: ${secretFile} }
      reader: { accessKeyId: AKR, secretAccessKey: "\${READER_SECRET}" }
jobs:
  - name: etc
    target: offsite
    schedule: "0 3 * * *"
    paths: [/etc]
    exclude: ["*.swp", "/etc/ssl/private/**"]
${extra}`;
}

const env = { READER_SECRET: "reader-secret-value" };

function problem(text: string, e: NodeJS.ProcessEnv = env): string {
  try {
    parseConfig(text, "/x/config.yaml", { env: e });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
    assert.equal(err.exitCode, 78);
    return err.message;
  }
  assert.fail("config was accepted");
}

describe("config", () => {
  it("resolves a valid config: defaults, env references, …File secrets, prefix slash", () => {
    const { config } = parseConfig(valid(), "/x/config.yaml", { env });
    const t = config.targets.offsite;
    assert.ok(t);
    assert.equal(t.prefix, "web-1/");
    assert.equal(t.region, "us-east-1");
    assert.equal(t.partSizeMiB, 8);
    assert.equal(t.checksum, "md5");
    assert.equal(t.credentials.writer?.secretAccessKey.reveal(), "s3cr3t-from-file");
    assert.equal(t.credentials.reader.secretAccessKey.reveal(), "reader-secret-value");
    assert.equal(config.masterKey.reveal().toString("hex"), "ab".repeat(32));
    assert.equal(config.jobs[0]?.compression, "gzip");
    assert.equal(config.host, "web-1");
  });

  it("never shows a secret in its redacted view or in JSON", () => {
    const { config } = parseConfig(valid(), "/x/config.yaml", { env });
    const text = JSON.stringify(redactedView(config)) + JSON.stringify(config);
    assert.ok(!text.includes("reader-secret-value"));
    assert.ok(!text.includes("s3cr3t-from-file"));
    assert.ok(!text.includes("ab".repeat(32)));
    assert.match(text, /<redacted>/);
  });

  it("names file, line and key of an unknown key, with a suggestion", () => {
    const msg = problem(valid().replace('schedule: "0 3', 'shedule: "0 3'));
    assert.match(
      msg,
      /^\/x\/config\.yaml:16:5: jobs\[0\] \(etc\)\.shedule: unknown key \(did you mean "schedule"\?\)/m,
    );
  });

  it("rejects a job whose target does not exist", () => {
    assert.match(
      problem(valid().replace("target: offsite", "target: offsight")),
      /config\.yaml:15:13: jobs\[0\] \(etc\)\.target: target "offsight" is not defined under targets \(defined: offsite\)/,
    );
  });

  it("takes compression zstd with a level in its range; gzip stays the default of a config that omits it", () => {
    const job = (lines: string) =>
      parseConfig(valid(lines), "/x/config.yaml", { env }).config.jobs[0];
    assert.equal(job("")?.compression, "gzip");
    assert.equal(job("")?.compressionLevel, undefined);
    const z = job("    compression: zstd\n    compressionLevel: 19\n");
    assert.equal(z?.compression, "zstd");
    assert.equal(z?.compressionLevel, 19);
    assert.equal(job("    compression: gzip\n    compressionLevel: 9\n")?.compressionLevel, 9);
    assert.match(
      problem(valid("    compression: zstd\n    compressionLevel: 20\n")),
      /jobs\[0\] \(etc\)\.compressionLevel: must be 1 to 19 for zstd/,
    );
    assert.match(
      problem(valid("    compression: gzip\n    compressionLevel: 10\n")),
      /compressionLevel: must be 1 to 9 for gzip/,
    );
    assert.match(
      problem(valid("    compression: none\n    compressionLevel: 3\n")),
      /compressionLevel: is set, but compression is none/,
    );
    assert.match(problem(valid("    compression: lz4\n")), /jobs\[0\] \(etc\)\.compression/);
  });

  it("rejects an invalid cron expression", () => {
    assert.match(
      problem(valid().replace('"0 3 * * *"', '"0 25 * * *"')),
      /config\.yaml:16:15: jobs\[0\] \(etc\)\.schedule: invalid cron expression "0 25 \* \* \*"/,
    );
  });

  it("reports a YAML syntax error with its line", () => {
    assert.match(
      problem(valid().replace("paths: [/etc]", "paths: [/etc")),
      /config\.yaml:\d+:\d+: YAML syntax error/,
    );
  });

  it("rejects a relative catalog path", () => {
    assert.match(
      problem(valid().replace(`catalog: ${dir}/catalog.db`, "catalog: catalog.db")),
      /config\.yaml:1:10: catalog: must be an absolute path/,
    );
  });

  it("rejects two jobs with one name", () => {
    const dup = `  - name: etc\n    target: offsite\n    schedule: "@daily"\n    paths: [/srv]\n`;
    assert.match(
      problem(valid(dup)),
      /jobs\[1\] \(etc\)\.name: duplicate job name "etc" \(also jobs\[0\]\)/,
    );
  });

  it("rejects an unset environment variable, naming it", () => {
    assert.match(
      problem(valid(), {}),
      /config\.yaml:12:\d+: environment variable READER_SECRET is not set/,
    );
  });

  it("rejects plain http unless allowInsecureSseC", () => {
    const http = valid().replace("https://s3.example.com", "http://127.0.0.1:8000");
    assert.match(problem(http), /targets\.offsite\.endpoint: is plain http/);
    const allowed = http.replace("prefix: web-1", "prefix: web-1\n    allowInsecureSseC: true");
    assert.doesNotThrow(() => parseConfig(allowed, "/x/config.yaml", { env }));
  });

  it("rejects a missing or malformed master key", () => {
    const bad = join(dir, "bad.key");
    writeFileSync(bad, "too short\n", { mode: 0o600 });
    assert.match(
      problem(valid().replace(keyFile, bad)),
      /masterKeyFile: the master key must be 32 bytes/,
    );
    assert.match(
      problem(valid().replace(keyFile, join(dir, "nope.key"))),
      /cannot read .*nope\.key: ENOENT/,
    );
  });

  it("rejects a credential given both inline and as a file", () => {
    const both = valid().replace(
      `secretAccessKeyFile: ${secretFile}`,
      `secretAccessKeyFile: ${secretFile}, secretAccessKey: x`,
    );
    assert.match(
      problem(both),
      /credentials\.writer: give either secretAccessKey or secretAccessKeyFile, not both/,
    );
  });

  it("rejects a relative exclude pattern with a slash", () => {
    assert.match(problem(valid().replace('"*.swp"', '"cache/**"')), /exclude: .*cache\/\*\*/);
  });

  it("lets a plain anchor be reused any number of times (only nested aliases count)", () => {
    let jobs = "";
    for (let i = 0; i < 200; i++) {
      jobs += `  - { name: j${i}, target: offsite, schedule: "@daily", paths: [/srv], exclude: ${i ? "*ex" : '&ex ["*.tmp", "*.swp"]'} }\n`;
    }
    const { config } = parseConfig(valid(jobs), "/x/config.yaml", { env });
    assert.equal(config.jobs.length, 201);
    assert.deepEqual(config.jobs[200]?.exclude, ["*.tmp", "*.swp"]);
  });

  it("picks the path from --config, then $IMMUTD_CONFIG, then the default", () => {
    assert.equal(configPath("/a.yaml", { IMMUTD_CONFIG: "/b.yaml" }), "/a.yaml");
    assert.equal(configPath(undefined, { IMMUTD_CONFIG: "/b.yaml" }), "/b.yaml");
    assert.equal(configPath(undefined, {}), "/etc/immutd/config.yaml");
  });
});

describe("immutd config check (CLI)", () => {
  it("prints the resolved config with secrets redacted and exits 0", async () => {
    const file = join(dir, "ok.yaml");
    writeFileSync(file, valid());
    const r = await runCli(["config", "check", "--config", file], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /prefix: web-1\//);
    assert.match(r.stdout, /secretAccessKey: <redacted>/);
    assert.ok(
      !r.stdout.includes("reader-secret-value") && !r.stderr.includes("reader-secret-value"),
    );
  });

  it("shows webhook URLs (top level and per job) by their origin only, never their tokens", async () => {
    const file = join(dir, "webhooks.yaml");
    const hooks =
      "notify:\n" +
      '  - url: "https://hc-ping.example.com/7f0c-ping-uuid-token"\n' +
      '  - url: "https://ntfy.example.com"\n';
    const perJob =
      '    notify: [{ url: "https://hooks.example.com/services/T0/B0/slack-token?key=query-token" }]\n';
    writeFileSync(
      file,
      valid(hooks).replace("    paths: [/etc]\n", `    paths: [/etc]\n${perJob}`),
    );
    const r = await runCli(["config", "check", "--config", file], { env });
    assert.equal(r.code, 0, r.stderr);
    for (const token of ["7f0c-ping-uuid-token", "slack-token", "query-token", "services/T0"]) {
      assert.ok(!r.stdout.includes(token) && !r.stderr.includes(token), `prints ${token}`);
    }
    assert.match(r.stdout, /url: https:\/\/hooks\.example\.com\/<redacted>/);
    assert.match(r.stdout, /url: https:\/\/hc-ping\.example\.com\/<redacted>/);
    assert.match(r.stdout, /url: https:\/\/ntfy\.example\.com\n/);
  });

  it("accepts the ntfy, uptime-kuma and apprise notify formats; uptime-kuma without a start event", () => {
    const hooks = (format: string, events = "") =>
      valid(`notify:\n  - { url: "https://push.example/t", format: ${format}${events} }\n`);
    for (const format of ["ntfy", "uptime-kuma", "apprise"]) {
      const { config } = parseConfig(hooks(format), "/x/config.yaml", { env });
      assert.equal(config.notify[0]?.format, format);
    }
    assert.match(
      problem(hooks("uptime-kuma", ", events: [start, failure]")),
      /notify\[0\]\.events: uptime-kuma knows only up and down/,
    );
    assert.match(problem(hooks("slack")), /notify\[0\]\.format/);
  });

  it("hides the password of URLs in hook and command lines, and the path of http(s) URLs (ping tokens)", async () => {
    const file = join(dir, "commands.yaml");
    const job =
      "    hooks: { before: 'curl -fsS https://ops:hook-pass@status.example.com/start', after: 'curl -fsS \"https://hc-ping.com/0b1e2f3a-ping-token?rid=7\"' }\n" +
      '    commands: [{ name: app.sql, run: "pg_dump postgres://app:db-pass@db.internal/app" }]\n';
    writeFileSync(file, valid().replace("    paths: [/etc]\n", `    paths: [/etc]\n${job}`));
    const r = await runCli(["config", "check", "--config", file], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes("hook-pass") && !r.stdout.includes("db-pass"), r.stdout);
    assert.match(r.stdout, /pg_dump postgres:\/\/<redacted>@db\.internal\/app/);
    assert.match(r.stdout, /curl -fsS https:\/\/<redacted>@status\.example\.com\/<redacted>/);
    assert.ok(!r.stdout.includes("ping-token"), r.stdout);
    assert.match(r.stdout, /https:\/\/hc-ping\.com\/<redacted>/);
  });

  it("exits 78 with the message for a bad config, via $IMMUTD_CONFIG", async () => {
    const file = join(dir, "bad.yaml");
    writeFileSync(file, valid().replace("target: offsite", "target: nowhere"));
    const r = await runCli(["config", "check"], { env: { ...env, IMMUTD_CONFIG: file } });
    assert.equal(r.code, 78);
    assert.match(
      r.stderr,
      /bad\.yaml:15:13: jobs\[0\] \(etc\)\.target: target "nowhere" is not defined/,
    );
  });

  it("exits 78 when the config file does not exist", async () => {
    const r = await runCli(["config", "check", "--config", join(dir, "missing.yaml")]);
    assert.equal(r.code, 78);
    assert.match(r.stderr, /cannot read config file .*missing\.yaml: ENOENT/);
  });
});

describe("immutd key generate (CLI)", () => {
  it("writes 64 hex chars and a newline with mode 0600, and refuses to overwrite", async () => {
    const file = join(dir, "new.key");
    const r = await runCli(["key", "generate", file]);
    assert.equal(r.code, 0, r.stderr);
    const st = statSync(file);
    assert.equal(st.mode & 0o777, 0o600);
    const text = (await import("node:fs")).readFileSync(file, "utf8");
    assert.match(text, /^[0-9a-f]{64}\n$/);
    const again = await runCli(["key", "generate", file]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /refusing to overwrite/);
    assert.equal((await import("node:fs")).readFileSync(file, "utf8"), text);
  });
});

describe("CLI basics", () => {
  it("--version and --help exit 0; an unknown command exits 2", async () => {
    const v = await runCli(["--version"]);
    assert.equal(v.code, 0);
    assert.match(v.stdout, /^\d+\.\d+\.\d+/);
    const h = await runCli(["backup", "--help"]);
    assert.equal(h.code, 0);
    assert.match(
      h.stdout,
      /Exit codes: 0 every job succeeded without warnings, 5 every job succeeded/,
    );
    const u = await runCli(["frobnicate"]);
    assert.equal(u.code, 2);
  });
});

describe("config.example.yaml", () => {
  it("is valid and documents every key the schema knows", async () => {
    const { readFileSync } = await import("node:fs");
    const text = readFileSync(new URL("../../config.example.yaml", import.meta.url), "utf8");
    const { config } = parseConfig(text, "config.example.yaml", {
      env: {
        IMMUTD_WRITER_ACCESS_KEY_ID: "w",
        IMMUTD_READER_ACCESS_KEY_ID: "r",
        IMMUTD_READER_SECRET_ACCESS_KEY: "s",
      },
      readSecretFile: (p) =>
        p.endsWith("master.key") ? Buffer.from(`${"ab".repeat(32)}\n`) : Buffer.from("secret\n"),
    });
    assert.deepEqual(
      config.jobs.map((j) => j.name),
      ["etc", "db"],
    );
    // every key of the schema appears in the example (commented or not)
    for (const key of [
      "catalog",
      "masterKeyFile",
      "masterKey",
      "host",
      "endpoint",
      "region",
      "bucket",
      "prefix",
      "forcePathStyle",
      "caFile",
      "allowInsecureSseC",
      "retention",
      "partSizeMiB",
      "queueSize",
      "checksum",
      "lifecycleGraceDays",
      "credentials",
      "writer",
      "reader",
      "admin",
      "maxConcurrentJobs",
      "http",
      "notify",
      "verify",
      "keepLatestLocked",
      "audit",
      "slackMinutes",
      "maxAgeHours",
      "overrides",
      "schedule",
      "timezone",
      "catchUp",
      "jitter",
      "paths",
      "exclude",
      "compression",
      "hooks",
      "commands",
    ]) {
      assert.match(text, new RegExp(`\\b${key}:`), `config.example.yaml mentions ${key}`);
    }
  });
});
