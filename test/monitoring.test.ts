/**
 * monitoring/: the Prometheus alert rules pass `promtool check rules` and their
 * unit tests (`promtool test rules` on example series, including ones where
 * nothing may fire), every rule is covered there, and the rules and the Grafana
 * dashboard use only metrics and labels src/daemon/metrics.ts exports, so neither can
 * rot when a metric is renamed. promtool comes from Debian's prometheus
 * package (.ci/run installs it); without it these tests fail, never skip.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { Catalog } from "../src/catalog/catalog.js";
import { Metrics } from "../src/daemon/metrics.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const RULES = join(REPO, "monitoring/immutd.rules.yml");
const RULE_TESTS = join(REPO, "test/fixtures/monitoring/immutd.rules.test.yml");
const DASHBOARD = join(REPO, "monitoring/grafana-dashboard.json");
const work = mkdtempSync(join(tmpdir(), "immutd-monitoring-"));
after(() => rmSync(work, { recursive: true, force: true }));

function promtool(...args: string[]) {
  const r = spawnSync("promtool", args, { encoding: "utf8" });
  assert.equal(
    r.error,
    undefined,
    "promtool must be installed (Debian: apt-get install prometheus; .ci/run does)",
  );
  return r;
}

interface Rule {
  alert: string;
  expr: string;
  labels?: Record<string, string>;
}
const rules = (
  parse(readFileSync(RULES, "utf8")) as { groups: { rules: Rule[] }[] }
).groups.flatMap((g) => g.rules);

/** What the daemon's /metrics exports: each metric name with its label names. */
function exported(): Map<string, Set<string>> {
  const registry = new Metrics().registry;
  const out = new Map<string, Set<string>>();
  for (const m of registry.getMetricsAsArray()) {
    const labels = (m as unknown as { labelNames?: readonly string[] }).labelNames ?? [];
    out.set(m.name, new Set(labels));
  }
  return out;
}

/**
 * Every immutd_… selector in a PromQL expression, with the labels it matches on.
 * Prometheus adds `instance` and `job` (the scrape job's) to every series.
 */
function problems(expr: string, where: string, metrics: Map<string, Set<string>>): string[] {
  const out: string[] = [];
  for (const m of expr.matchAll(/\b(immutd_[a-z_]+)(\{([^}]*)\})?/g)) {
    const [, name = "", , matchers = ""] = m;
    const labels = metrics.get(name);
    if (!labels) {
      out.push(`${where}: ${name} is not a metric src/daemon/metrics.ts exports`);
      continue;
    }
    for (const l of matchers.matchAll(/([a-zA-Z_]+)\s*(=~|!~|!=|=)/g)) {
      const label = l[1] ?? "";
      if (!labels.has(label) && label !== "instance" && label !== "job") {
        out.push(`${where}: ${name} has no label ${label}`);
      }
    }
  }
  return out;
}

describe("Prometheus alert rules (monitoring/immutd.rules.yml)", () => {
  it("pass promtool check rules", () => {
    const r = promtool("check", "rules", RULES);
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  it("pass their promtool unit tests, which cover every rule firing and staying quiet", () => {
    const r = promtool("test", "rules", RULE_TESTS);
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    const tests = parse(readFileSync(RULE_TESTS, "utf8")) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    };
    const cases = tests.tests.flatMap((t) => t.alert_rule_test);
    for (const { alert } of rules) {
      assert.ok(
        cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0),
        `${alert} fires in a test`,
      );
    }
  });

  it("the unit tests catch a weakened rule (a stale backup alerting 4 h late)", () => {
    const rulesCopy = join(work, "weak.rules.yml");
    const text = readFileSync(RULES, "utf8");
    assert.ok(text.includes("> 26 * 3600"));
    writeFileSync(rulesCopy, text.replaceAll("> 26 * 3600", "> 30 * 3600"));
    const testsCopy = join(work, "weak.test.yml");
    writeFileSync(
      testsCopy,
      readFileSync(RULE_TESTS, "utf8").replace("../../../monitoring/immutd.rules.yml", rulesCopy),
    );
    const r = promtool("test", "rules", testsCopy);
    assert.notEqual(r.status, 0, r.stdout);
    assert.match(r.stdout + r.stderr, /alertname: ImmutdBackupStale/);
  });

  it("use only metrics and labels the daemon exports, and name a severity", () => {
    const metrics = exported();
    assert.deepEqual(
      rules.flatMap((r) => problems(r.expr, r.alert, metrics)),
      [],
    );
    for (const r of rules) {
      assert.match(r.labels?.severity ?? "", /^(critical|warning|info)$/, r.alert);
    }
  });
});

describe("Grafana dashboard (monitoring/grafana-dashboard.json)", () => {
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
    __inputs: { name: string; type: string; pluginId: string }[];
    panels: {
      id: number;
      title: string;
      datasource: { uid: string };
      targets: { expr: string; refId: string }[];
    }[];
    templating: { list: { name: string; query: { query: string } }[] };
    uid: string;
  };
  const exprs = [
    ...dash.panels.flatMap((p) => p.targets.map((t) => ({ where: p.title, expr: t.expr }))),
    ...dash.templating.list.map((v) => ({ where: `variable ${v.name}`, expr: v.query.query })),
  ];

  it("is importable: a Prometheus data source input that every panel uses, unique panel ids", () => {
    assert.deepEqual(
      dash.__inputs.map((i) => [i.name, i.type, i.pluginId]),
      [["DS_PROMETHEUS", "datasource", "prometheus"]],
    );
    const input = `\${${dash.__inputs[0]?.name}}`; // Grafana's "${DS_PROMETHEUS}", filled in at import
    for (const p of dash.panels) assert.equal(p.datasource.uid, input, p.title);
    assert.equal(new Set(dash.panels.map((p) => p.id)).size, dash.panels.length);
    assert.match(dash.uid, /^[a-z0-9-]{1,40}$/);
  });

  it("queries only metrics and labels the daemon exports", () => {
    const metrics = exported();
    assert.deepEqual(
      exprs.flatMap((e) => problems(e.expr, e.where, metrics)),
      [],
    );
    const used = new Set(
      exprs.flatMap((e) => [...e.expr.matchAll(/\bimmutd_[a-z_]+/g)].map((m) => m[0])),
    );
    // the panels the dashboard promises: last success, bytes, duration, files, warnings, verify findings, lock horizon
    for (const name of [
      "immutd_job_last_success_timestamp_seconds",
      "immutd_job_last_run_bytes",
      "immutd_job_last_run_duration_seconds",
      "immutd_job_last_run_files",
      "immutd_job_last_run_warnings",
      "immutd_verify_findings",
      "immutd_verify_last_run_timestamp_seconds",
      "immutd_job_lock_horizon_timestamp_seconds",
    ]) {
      assert.ok(used.has(name), `a panel shows ${name}`);
    }
  });

  it("the check catches a renamed metric and a label it does not have", () => {
    const metrics = exported();
    assert.deepEqual(problems('immutd_job_last_bytes{job="x"}', "p", metrics), [
      "p: immutd_job_last_bytes is not a metric src/daemon/metrics.ts exports",
    ]);
    assert.deepEqual(problems('immutd_verify_findings{status="x"}', "p", metrics), [
      "p: immutd_verify_findings has no label status",
    ]);
  });
});

describe("immutd_job_lock_horizon_timestamp_seconds", () => {
  it("is each job's newest good backup's retain-until, read from the catalog at each scrape", async () => {
    const catalog = Catalog.open(join(work, "catalog.db"));
    try {
      const add = (
        job: string,
        created: string,
        until: string,
        status: "ok" | "corrupt" | "expired",
      ) => {
        const runId = catalog.startRun({
          job,
          target: "t",
          objectKey: `${job}/${created}`,
          startedAt: new Date(created),
        });
        catalog.recordBackup({
          runId,
          job,
          target: "t",
          bucket: "b",
          key: `${job}/${created}`,
          versionId: `v-${job}-${created}`,
          size: 1,
          sha256: "00",
          compression: "none",
          sseKey: Buffer.alloc(32, 1),
          keyDerivation: "x",
          createdAt: new Date(created),
          retentionMode: "COMPLIANCE",
          retainUntil: new Date(until),
          status,
          files: 1,
        });
      };
      // etc: an older backup locked longer does not count; a newer corrupt one does not either
      add("etc", "2026-11-01T03:00:00Z", "2027-06-01T00:00:00Z", "ok");
      add("etc", "2026-11-02T03:00:00Z", "2026-12-02T03:00:00Z", "ok");
      add("etc", "2026-11-03T03:00:00Z", "2026-12-03T03:00:00Z", "corrupt");
      // db: the newest backup's lock ran out: the horizon is in the past
      add("db", "2026-10-01T03:00:00Z", "2026-10-31T03:00:00Z", "expired");
      const metrics = new Metrics();
      metrics.lockHorizonsFrom(() => catalog.lockHorizons());
      const text = await metrics.registry.metrics();
      const at = (iso: string) => String(Date.parse(iso) / 1000);
      assert.match(
        text,
        new RegExp(
          `immutd_job_lock_horizon_timestamp_seconds\\{job="etc"\\} ${at("2026-12-02T03:00:00Z")}\\n`,
        ),
      );
      assert.match(
        text,
        new RegExp(
          `immutd_job_lock_horizon_timestamp_seconds\\{job="db"\\} ${at("2026-10-31T03:00:00Z")}\\n`,
        ),
      );
      // a lock extended later (verify, keepLatestLocked) shows at the next scrape
      add("etc", "2026-11-04T03:00:00Z", "2026-12-04T03:00:00Z", "ok");
      assert.match(
        await metrics.registry.metrics(),
        new RegExp(`\\{job="etc"\\} ${at("2026-12-04T03:00:00Z")}\\n`),
      );
      // a failing catalog does not break /metrics
      metrics.lockHorizonsFrom(() => {
        throw new Error("disk I/O error");
      });
      assert.match(await metrics.registry.metrics(), /immutd_up 1/);
    } finally {
      catalog.close();
    }
  });
});
