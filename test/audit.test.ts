/**
 * The auditor's pure parts: when a newest backup is too old (maxAge), and the
 * config of an auditor (no jobs, no writer credential, an audit: section whose
 * unknown keys are errors). The bucket side is proven in audit.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AuditConfig, parseConfig } from "../src/config/config.js";
import { ConfigError } from "../src/errors.js";
import { maxAge } from "../src/flows/audit.js";

const audit = (o: Partial<AuditConfig> = {}): AuditConfig => ({
  slackMinutes: 60,
  overrides: [],
  ...o,
});
const monday3 = new Date("2026-11-30T03:00:00Z");
const due = (a: AuditConfig, m?: { schedule?: string | null; timezone?: string }) =>
  maxAge(a, "web1", "etc", m)?.(monday3).toISOString();

describe("audit: when the newest backup is too old", () => {
  it("a nightly job: past the second scheduled time after it, plus the slack", () => {
    assert.equal(due(audit(), { schedule: "0 3 * * *" }), "2026-12-02T04:00:00.000Z");
    assert.equal(
      due(audit({ slackMinutes: 0 }), { schedule: "0 3 * * *" }),
      "2026-12-02T03:00:00.000Z",
    );
    // In the job's time zone: 03:00 in Berlin is 02:00 UTC in winter (Monday 03:00 UTC is 04:00 there).
    assert.equal(
      due(audit({ slackMinutes: 0 }), { schedule: "0 3 * * *", timezone: "Europe/Berlin" }),
      "2026-12-02T02:00:00.000Z",
    );
  });

  it("overrides win (host and job before host), null turns the age check off", () => {
    const a = audit({
      maxAgeHours: 5,
      overrides: [
        { host: "web1", maxAgeHours: 100 },
        { host: "web1", job: "etc", maxAgeHours: 10 },
        { host: "web2", maxAgeHours: null },
      ],
    });
    assert.equal(due(a, { schedule: "0 3 * * *" }), "2026-11-30T13:00:00.000Z");
    assert.equal(
      maxAge(a, "web1", "other", undefined)?.(monday3).toISOString(),
      "2026-12-04T07:00:00.000Z",
    );
    assert.equal(maxAge(a, "web2", "etc", { schedule: "0 3 * * *" }), undefined);
  });

  it("without a recorded schedule: audit.maxAgeHours, else not judged", () => {
    assert.equal(due(audit({ maxAgeHours: 48 }), { schedule: null }), "2026-12-02T03:00:00.000Z");
    assert.equal(due(audit({ maxAgeHours: 48 }), {}), "2026-12-02T03:00:00.000Z");
    assert.equal(due(audit(), { schedule: null }), undefined);
  });
});

const base = `masterKey: "${"ab".repeat(32)}"
targets:
  t:
    endpoint: https://s3.example.net
    bucket: backups
    credentials:
      reader: { accessKeyId: r, secretAccessKey: s }
`;

describe("audit: config", () => {
  it("an auditor needs no jobs and no writer credential", () => {
    const { config } = parseConfig(
      `${base}audit:\n  schedule: "30 6 * * *"\n  overrides:\n    - { host: db1, job: wal, maxAgeHours: null }\n`,
      "a.yaml",
    );
    assert.deepEqual(config.jobs, []);
    assert.equal(config.targets.t?.credentials.writer, undefined);
    assert.deepEqual(config.audit, {
      schedule: "30 6 * * *",
      slackMinutes: 60,
      overrides: [{ host: "db1", job: "wal", maxAgeHours: null }],
    });
  });

  it("unknown audit keys, bad crons, jobs on a writer-less target and no jobs without audit are config errors", () => {
    const bad = (text: string, re: RegExp) =>
      assert.throws(
        () => parseConfig(text, "a.yaml"),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
      );
    bad(`${base}audit:\n  maxAgeHour: 5\n`, /maxAgeHour.*did you mean "maxAgeHours"/);
    bad(`${base}audit:\n  overrides: [{ host: a, maxAge: 3 }]\n`, /maxAge/);
    bad(`${base}audit:\n  schedule: "every day"\n`, /invalid cron expression/);
    bad(base, /jobs: must define at least one job/);
    bad(
      `${base}jobs:\n  - { name: etc, target: t, paths: [/etc] }\n`,
      /target "t" has no writer credential/,
    );
  });
});
