/**
 * systemd/immutd-backup@.{service,timer} and immutd-verify.{service,timer}, the
 * alternative to the daemon: they pass `systemd-analyze verify`, run the
 * commands README names with the daemon unit's binary and config, carry the
 * daemon unit's hardening setting for setting (so the two cannot drift), and
 * the timers fire daily, spread out, catching up after downtime.
 * test/systemd-timer.rgw.test.ts runs their ExecStart lines against the RGW.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CLI } from "./support/cli.js";
import { settings } from "./support/unit-file.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const text = (name: string) => readFileSync(join(REPO, "systemd", name), "utf8");
const work = mkdtempSync(join(tmpdir(), "immutd-timer-"));
after(() => rmSync(work, { recursive: true, force: true }));

const daemon = settings(text("immutd.service"));
const units = {
  backup: settings(text("immutd-backup@.service")),
  verify: settings(text("immutd-verify.service")),
};

/** The unit files as systemd would load them for job `etc`, ExecStart pointing at this build. */
function installed(): string[] {
  const bin = join(work, "immutd");
  writeFileSync(bin, `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
  return [
    ["immutd-backup@.service", "immutd-backup@etc.service"],
    ["immutd-backup@.timer", "immutd-backup@etc.timer"],
    ["immutd-verify.service", "immutd-verify.service"],
    ["immutd-verify.timer", "immutd-verify.timer"],
  ].map(([from = "", to = ""]) => {
    const file = join(work, to);
    writeFileSync(file, text(from).replaceAll("/usr/local/bin/immutd", bin));
    return file;
  });
}

describe("systemd timers instead of the daemon", () => {
  it("pass systemd-analyze verify without a warning (a job instance, both timers)", () => {
    const r = spawnSync("systemd-analyze", ["verify", ...installed()], { encoding: "utf8" });
    assert.equal(r.error, undefined, "systemd-analyze must be installed (Debian: systemd)");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(`${r.stdout}${r.stderr}`.trim(), "");
  });

  it("run `immutd backup JOB` (the instance name) and `immutd verify` as oneshots, as the daemon's user with its config", () => {
    const exec = (u: Map<string, string[]>) => (u.get("ExecStart") ?? []).join("\n").split(" ");
    const [bin, ...daemonArgs] = exec(daemon);
    assert.deepEqual(exec(units.backup), [bin, ...daemonArgs.slice(0, -1), "backup", "%i"]);
    assert.deepEqual(exec(units.verify), [bin, ...daemonArgs.slice(0, -1), "verify"]);
    for (const u of Object.values(units)) {
      assert.deepEqual(u.get("Type"), ["oneshot"]);
      assert.deepEqual(u.get("User"), daemon.get("User"));
      assert.deepEqual(u.get("Group"), daemon.get("Group"));
      // exit 5 (warnings) and 4 (findings) fail the unit: README tells how to accept 5
      assert.equal(u.get("SuccessExitStatus"), undefined);
      // a backup that takes hours is not killed by a start timeout
      assert.deepEqual(u.get("TimeoutStartSec"), ["infinity"]);
      assert.deepEqual(u.get("KillMode"), daemon.get("KillMode"));
      assert.deepEqual(u.get("TimeoutStopSec"), daemon.get("TimeoutStopSec"));
    }
  });

  it("carry every hardening setting of the daemon unit, with the same value", () => {
    const own = new Set([
      "Type",
      "ExecStart",
      "ExecReload",
      "Restart",
      "RestartSec",
      "RestartPreventExitStatus",
      "KillMode",
      "TimeoutStopSec",
    ]);
    for (const [name, u] of Object.entries(units)) {
      for (const [key, values] of daemon) {
        if (!own.has(key)) assert.deepEqual(u.get(key), values, `${name}: ${key}`);
      }
      for (const key of u.keys()) {
        assert.ok(daemon.has(key) || key === "TimeoutStartSec", `${name}: ${key} is extra`);
      }
    }
  });

  it("have the daemon unit's exposure score", () => {
    const score = (file: string) => {
      const r = spawnSync("systemd-analyze", ["security", "--offline=true", file], {
        encoding: "utf8",
      });
      assert.equal(r.status, 0, r.stderr);
      const s = /Overall exposure level for \S+: (\d+\.\d)/.exec(r.stdout)?.[1];
      assert.ok(s, r.stdout);
      return Number(s);
    };
    const files = installed();
    const daemonFile = join(work, "immutd.service");
    writeFileSync(
      daemonFile,
      text("immutd.service").replaceAll("/usr/local/bin/immutd", join(work, "immutd")),
    );
    const expected = score(daemonFile);
    for (const f of files.filter((f) => f.endsWith(".service")))
      assert.equal(score(f), expected, f);
  });

  it("fire daily at a spread-out time, and catch up a run missed while the machine was off", () => {
    for (const name of ["immutd-backup@.timer", "immutd-verify.timer"]) {
      const timer = settings(text(name), "Timer");
      const cal = timer.get("OnCalendar") ?? [];
      assert.equal(cal.length, 1, name);
      const r = spawnSync("systemd-analyze", ["calendar", "--iterations=2", cal[0] ?? ""], {
        encoding: "utf8",
      });
      assert.equal(r.status, 0, r.stderr);
      const next = [...r.stdout.matchAll(/(?:Next elapse|Iter\. #2): \w+ (\S+ \S+)/g)].map((m) =>
        Date.parse(`${m[1]?.replace(" ", "T")}Z`),
      );
      // a day apart (the calendar is in local time: compare the gap, not the hour)
      assert.equal(next.length, 2, r.stdout);
      assert.equal((next[1] ?? 0) - (next[0] ?? 0), 86_400_000, r.stdout);
      assert.deepEqual(timer.get("Persistent"), ["true"], name);
      assert.match(timer.get("RandomizedDelaySec")?.[0] ?? "", /^\d+(h|min)$/, name);
      assert.equal(timer.get("Unit"), undefined, `${name} starts the service of its own name`);
      assert.deepEqual(settings(text(name), "Install").get("WantedBy"), ["timers.target"]);
    }
    // the verify timer runs after the backups (03:00 + up to 1 h), so it sees them
    const at = (name: string) => settings(text(name), "Timer").get("OnCalendar")?.[0] ?? "";
    assert.ok(at("immutd-verify.timer") > at("immutd-backup@.timer"));
  });
});
