/**
 * A corpus of broken and hostile configuration files, each run through the
 * real CLI (`immutd config check` and `immutd backup`) as an operator or an
 * attacker would: every one must end with exit 78 and exactly one line on
 * stderr that says what is wrong, never a stack trace, never a secret, and
 * in time linear in the file's size (a generous bound catches quadratic
 * behaviour and hangs, it does not measure speed).
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { logRecords, runCli } from "./support/cli.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-corpus-"));
const keyFile = join(dir, "master.key");
writeFileSync(keyFile, `${"cd".repeat(32)}\n`, { mode: 0o600 });
mkdirSync(join(dir, "a-directory"));

/** A valid config; each case breaks one thing in it. */
const VALID = `catalog: ${dir}/catalog.db
masterKeyFile: ${keyFile}
host: web-1
targets:
  offsite:
    endpoint: https://s3.example.com
    bucket: backups-web
    retention: { mode: COMPLIANCE, days: 30 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: writer-secret }
      reader: { accessKeyId: AKR, secretAccessKey: reader-secret }
jobs:
  - name: etc
    target: offsite
    schedule: "0 3 * * *"
    paths: [/etc]
`;

function edit(from: string, to: string): string {
  assert.ok(VALID.includes(from), `the valid config contains ${from}`);
  return VALID.replace(from, to);
}

function manyKeys(n: number): string {
  let extra = "";
  for (let i = 0; i < n; i++) extra += `    unknown${i}: 1\n`;
  return edit("    bucket: backups-web\n", `    bucket: backups-web\n${extra}`);
}

function aliasBomb(): string {
  let s = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
  let prev = "a";
  for (const n of "bcdefghi") {
    s += `${n}: &${n} [${Array(9).fill(`*${prev}`).join(",")}]\n`;
    prev = n;
  }
  return s;
}

interface Case {
  name: string;
  /** The file's contents; a function for the big ones, so they are built only when run. */
  file?: string | Buffer | (() => string | Buffer);
  /** Instead of a file: the path given to --config. */
  path?: string;
  /** The one line immutd prints after "immutd: " and, where it names one, the file. */
  message: RegExp;
  /** Strings that must not appear in the output (secrets). */
  never?: string[];
}

const CASES: Case[] = [
  // Resource exhaustion: must fail fast, not hang or crash.
  {
    name: "alias bomb (billion laughs)",
    file: aliasBomb(),
    message:
      /^FILE: YAML aliases \(\*name\) expand to more than 100000 extra nodes: an alias bomb \("billion laughs"\)\?/,
  },
  {
    name: "20,000 unknown keys in one target",
    file: () => manyKeys(20_000),
    message:
      /^FILE:8:5: targets\.offsite: 20000 unknown keys: "unknown0" \(line 8\), .* and 19997 more/,
  },
  {
    name: "a 50 MB file",
    file: () => `# ${"x".repeat(50 * 1024 * 1024)}\n${VALID}`,
    message: /^config file FILE is larger than 1 MiB, the limit for a config/,
  },
  {
    name: "--config /dev/zero (no end)",
    path: "/dev/zero",
    message: /^config file FILE is larger than 1 MiB/,
  },
  {
    name: "30,000 anchors and aliases",
    file: () => {
      let s = "";
      for (let i = 0; i < 30_000; i++) s += `a${i}: &a${i} x\nb${i}: *a${i}\n`;
      return s;
    },
    message: /^FILE:1001:13: more than 1000 YAML anchors \(&name\) and aliases \(\*name\)/,
  },
  {
    name: "an alias inside its own anchor",
    file: edit("paths: [/etc]", "paths: &p [/etc, *p]"),
    message: /^FILE:16:22: alias \*p is inside its own anchor: it would never end$/,
  },
  {
    name: "nested 50,000 levels deep",
    file: `a: ${"[".repeat(50_000)}${"]".repeat(50_000)}\n`,
    message: /^FILE:1:\d+: YAML syntax error: nested too deeply/,
  },
  {
    name: "masterKeyFile: /dev/zero",
    file: edit(`masterKeyFile: ${keyFile}`, "masterKeyFile: /dev/zero"),
    message: /masterKeyFile: cannot read \/dev\/zero: larger than 64 KiB/,
  },
  {
    name: "a 900 KB key",
    file: `? ${"k".repeat(900_000)}\n: 1\n${VALID}`,
    message: /^FILE:1:3: k{60}…\(900000 characters\): unknown key \(known keys: catalog, /,
  },

  // Prototype names: must not pass `check` and then crash `backup`.
  {
    name: "target: toString",
    file: edit("target: offsite", "target: toString"),
    message:
      /^FILE:14:13: jobs\[0\] \(etc\)\.target: target "toString" is not defined under targets \(defined: offsite\)$/,
  },
  {
    name: "target: constructor",
    file: edit("target: offsite", "target: constructor"),
    message: /jobs\[0\] \(etc\)\.target: target "constructor" is not defined under targets/,
  },
  {
    name: "target: hasOwnProperty",
    file: edit("target: offsite", "target: hasOwnProperty"),
    message: /target "hasOwnProperty" is not defined under targets/,
  },
  {
    name: "target: __proto__",
    file: edit("target: offsite", "target: __proto__"),
    message: /target "__proto__" is not defined under targets/,
  },
  {
    name: "a target named __proto__",
    file: edit("  offsite:", "  __proto__:"),
    message: /^FILE:5:3: __proto__: not allowed as a key or name$/,
  },
  {
    name: "__proto__ as a key inside retention",
    file: edit("{ mode: COMPLIANCE, days: 30 }", "{ __proto__: { days: 3 }, days: 30 }"),
    message: /^FILE:8:18: __proto__: not allowed as a key or name$/,
  },
  {
    name: "constructor as a top-level key",
    file: `${VALID}constructor: 1\n`,
    message: /^FILE:17:1: constructor: unknown key \(known keys: catalog, /,
  },

  // Not a mapping at all.
  {
    name: "a top-level list",
    file: "- a\n- b\n- c\n",
    message: /^FILE:1:1: the config must be a mapping .*, not a list$/,
  },
  {
    name: "a top-level list of 96 mappings",
    file: Array.from({ length: 96 }, (_, i) => `- name: job${i}\n  target: x\n`).join(""),
    message: /^FILE:1:1: the config must be a mapping .*, not a list$/,
  },
  {
    name: "a bare string",
    file: "hello world\n",
    message: /^FILE:1:1: the config must be a mapping .*, not a string/,
  },
  { name: "a bare number", file: "42\n", message: /the config must be a mapping .*, not a number/ },
  {
    name: "an empty file",
    file: "",
    message: /^FILE: the config is empty; it needs at least masterKeyFile, targets and jobs/,
  },
  { name: "only comments", file: "# nothing here\n\n", message: /^FILE: the config is empty/ },
  {
    name: "a binary file",
    file: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0xff, 0xfe, 0x0a]),
    message:
      /^config file FILE is not UTF-8 text \(a NUL byte at offset 7\): a config is a YAML text file$/,
  },
  {
    name: "a Latin-1 file",
    file: Buffer.concat([Buffer.from(VALID), Buffer.from("# caf\xe9\n", "latin1")]),
    message: /^config file FILE is not UTF-8 text: a config is a YAML text file$/,
  },
  {
    name: "a directory",
    path: join(dir, "a-directory"),
    message: /^cannot read config file FILE: EISDIR$/,
  },

  // Wrong types: say what was expected and what is there, never the value.
  {
    name: "bucket: a number",
    file: edit("bucket: backups-web", "bucket: 5"),
    message: /^FILE:7:13: targets\.offsite\.bucket: expected a string, got a number$/,
  },
  {
    name: "schedule: a number",
    file: edit('schedule: "0 3 * * *"', "schedule: 3"),
    message: /jobs\[0\] \(etc\)\.schedule: expected a string, got a number$/,
  },
  {
    name: "schedule: empty",
    file: edit('schedule: "0 3 * * *"', "schedule:"),
    message: /jobs\[0\] \(etc\)\.schedule: expected a string, got an empty value$/,
  },
  {
    name: "paths: a string",
    file: edit("paths: [/etc]", "paths: /etc"),
    message: /jobs\[0\] \(etc\)\.paths: expected a list, got a string$/,
  },
  {
    name: "jobs: a mapping",
    file: edit("jobs:\n  - name: etc", "jobs:\n  etc:\n    name: etc"),
    message: /jobs: expected a list, got a mapping$/,
  },
  {
    name: "targets: a list",
    file: edit("targets:\n  offsite:\n", "targets:\n - offsite\n - x:\n"),
    message: /targets: expected a mapping \(name: …\), got a list$/,
  },
  {
    name: "a secret given as a number",
    file: edit("secretAccessKey: writer-secret", "secretAccessKey: 8675309123"),
    message:
      /targets\.offsite\.credentials\.writer\.secretAccessKey: expected a string, got a number$/,
    never: ["8675309123"],
  },
  {
    name: "forcePathStyle: yes (a string in YAML 1.2)",
    file: edit("    bucket: backups-web\n", "    bucket: backups-web\n    forcePathStyle: yes\n"),
    message: /targets\.offsite\.forcePathStyle: expected true or false, got a string$/,
  },
  {
    name: "partSizeMiB: 1e400 (infinity)",
    file: edit("    bucket: backups-web\n", "    bucket: backups-web\n    partSizeMiB: 1e400\n"),
    message: /targets\.offsite\.partSizeMiB: expected a number, got an infinite number$/,
  },
  {
    name: "partSizeMiB: !!binary",
    file: edit(
      "    bucket: backups-web\n",
      "    bucket: backups-web\n    partSizeMiB: !!binary aGVsbG8=\n",
    ),
    message: /targets\.offsite\.partSizeMiB: expected a number, got binary data \(!!binary\)$/,
  },
  {
    name: "partSizeMiB: 16.5",
    file: edit("    bucket: backups-web\n", "    bucket: backups-web\n    partSizeMiB: 16.5\n"),
    message: /targets\.offsite\.partSizeMiB: expected a whole number, got 16\.5$/,
  },

  // Limits: name the key's own limit, not 2^53.
  {
    name: "partSizeMiB: 10^20",
    file: edit(
      "    bucket: backups-web\n",
      "    bucket: backups-web\n    partSizeMiB: 100000000000000000000\n",
    ),
    message: /^FILE:8:18: targets\.offsite\.partSizeMiB: must be at most 5120$/,
  },
  {
    name: "retention days: 2^60",
    file: edit("days: 30", "days: 1152921504606846976"),
    message: /targets\.offsite\.retention\.days: must be at most 36500$/,
  },
  {
    name: "retention days: 0",
    file: edit("days: 30", "days: 0"),
    message: /targets\.offsite\.retention\.days: must be at least 1$/,
  },
  {
    name: "a command's timeoutSeconds: 10^30",
    file: edit(
      "paths: [/etc]",
      'paths: [/etc]\n    commands: [{ name: x, run: "true", timeoutSeconds: 1000000000000000000000000000000 }]',
    ),
    message: /jobs\[0\] \(etc\)\.commands\[0\] \(x\)\.timeoutSeconds: must be at most 604800$/,
  },
  {
    name: "retention mode misspelt",
    file: edit("mode: COMPLIANCE", "mode: COMPLIANT"),
    message: /targets\.offsite\.retention\.mode: must be one of COMPLIANCE, GOVERNANCE$/,
  },
  {
    name: "jobs: []",
    file: edit(
      'jobs:\n  - name: etc\n    target: offsite\n    schedule: "0 3 * * *"\n    paths: [/etc]\n',
      "jobs: []\n",
    ),
    message: /jobs: must define at least one job$/,
  },
  {
    name: "a job with nothing to back up",
    file: edit("paths: [/etc]", "paths: []"),
    message:
      /^FILE:16:12: jobs\[0\] \(etc\)\.paths: must list at least one path \(or give commands\)$/,
  },
  {
    name: "a target name with a space",
    file: edit("  offsite:", '  "off site":'),
    message: /targets\.off site: is not a valid name: must be 1-64 characters/,
  },

  // Keys and YAML.
  {
    name: "a typo in a key",
    file: edit("schedule:", "shedule:"),
    message: /^FILE:15:5: jobs\[0\] \(etc\)\.shedule: unknown key \(did you mean "schedule"\?\)$/,
  },
  {
    name: "a duplicate key",
    file: `${VALID}host: again\n`,
    message: /^FILE:17:1: host: duplicate key \(first at line 3\)$/,
  },
  {
    name: "an unclosed bracket",
    file: edit("paths: [/etc]", "paths: [/etc"),
    message: /^FILE:\d+:\d+: YAML syntax error: /,
  },
  {
    name: "a tab for indentation",
    file: edit("    paths: [/etc]", "\tpaths: [/etc]"),
    message: /^FILE:\d+:\d+: YAML syntax error: /,
  },
  {
    name: "two YAML documents",
    file: `${VALID}---\nfoo: 1\n`,
    message: /^FILE:\d+:\d+: YAML syntax error: /,
  },
  {
    name: "an alias to no anchor",
    file: edit("paths: [/etc]", "paths: *nowhere"),
    message: /YAML (syntax )?error: .*nowhere/,
  },

  // URLs and secrets.
  {
    name: "an endpoint with user:password@",
    file: edit("https://s3.example.com", "https://admin:hunter2@s3.example.com"),
    message:
      /targets\.offsite\.endpoint: must not contain user:password@ \(the credentials go under credentials:\)$/,
    never: ["hunter2"],
  },
  {
    name: "a webhook with user:password@",
    file: `${VALID}notify: [{ url: "https://bob:s3cret-token@ntfy.example.com/backups" }]\n`,
    message: /notify\[0\]\.url: must not contain user:password@/,
    never: ["s3cret-token"],
  },
  {
    name: "an endpoint that is not a URL",
    file: edit("https://s3.example.com", "s3.example.com"),
    message: /targets\.offsite\.endpoint: must be an http:\/\/ or https:\/\/ URL$/,
  },
  {
    name: "plain http",
    file: edit("https://s3.example.com", "http://s3.example.com"),
    message: /targets\.offsite\.endpoint: is plain http/,
  },
  {
    name: "masterKeyFile: a directory",
    file: edit(`masterKeyFile: ${keyFile}`, `masterKeyFile: ${dir}/a-directory`),
    message: /masterKeyFile: cannot read [^ ]+a-directory: EISDIR$/,
  },
  {
    name: "a relative catalog",
    file: edit(`catalog: ${dir}/catalog.db`, "catalog: catalog.db"),
    message: /^FILE:1:10: catalog: must be an absolute path$/,
  },
  {
    name: "an unknown time zone",
    file: edit("paths: [/etc]", "paths: [/etc]\n    timezone: Mars/Olympus_Mons"),
    message: /jobs\[0\] \(etc\)\.timezone: is not a known IANA time zone/,
  },
  {
    name: "an invalid cron expression",
    file: edit('"0 3 * * *"', '"61 3 * * *"'),
    message: /jobs\[0\] \(etc\)\.schedule: invalid cron expression "61 3 \* \* \*"/,
  },
];

/** Runs the CLI on a case and checks exit 78, one line, no stack, no secret. */
async function expectOneLine(c: Case, file: string, args: string[]): Promise<void> {
  const r = await runCli(["--config", file, ...args], { timeoutMs: 10_000 });
  const what = `${args.join(" ")} on "${c.name}"`;
  assert.equal(r.signal, null, `${what} did not finish within 10 s (hung or quadratic)`);
  assert.equal(r.code, 78, `${what}: exit ${r.code}; stderr: ${r.stderr.slice(0, 2000)}`);
  const lines = r.stderr.split("\n").filter((l) => l !== "");
  assert.equal(lines.length, 1, `${what}: one line, got:\n${r.stderr.slice(0, 2000)}`);
  const line = lines[0] as string;
  assert.ok(line.startsWith("immutd: "), line);
  assert.doesNotMatch(r.stderr, /unexpected error|\n\s+at |"stack"/, `${what}: a stack trace`);
  const text = line.slice("immutd: ".length).replaceAll(file, "FILE");
  assert.match(text, c.message, `${what}`);
  assert.equal(r.stdout, "", `${what}: nothing on stdout`);
  for (const s of c.never ?? [])
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), `${what} shows ${s}`);
}

describe("broken and hostile configs (CLI): exit 78, one accurate line, in linear time", {
  concurrency: 2,
}, () => {
  it(`the corpus has at least 40 cases (${CASES.length})`, () => {
    assert.ok(CASES.length >= 40);
  });
  CASES.forEach((c, i) => {
    it(c.name, async () => {
      let file = c.path;
      if (file === undefined) {
        file = join(dir, `case-${i}.yaml`);
        writeFileSync(file, typeof c.file === "function" ? c.file() : (c.file ?? ""));
      }
      await expectOneLine(c, file, ["config", "check"]);
      await expectOneLine(c, file, ["backup"]);
    });
  });
});

describe("target names on the command line (CLI)", () => {
  it("init and doctor take toString or constructor for an unknown target, not a crash", async () => {
    const file = join(dir, "valid.yaml");
    writeFileSync(file, VALID);
    for (const args of [
      ["init", "toString", "--dry-run"],
      ["doctor", "constructor"],
      ["init", "__proto__", "--dry-run"],
    ]) {
      const r = await runCli(["--config", file, ...args], { timeoutMs: 30_000 });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(
        r.stderr,
        new RegExp(`^immutd: unknown target ${args[1]}; configured targets: offsite\n$`),
      );
    }
  });
});

describe("config check warnings", () => {
  it("warns that GOVERNANCE retention can be bypassed, and not for COMPLIANCE", async () => {
    const gov = join(dir, "governance.yaml");
    writeFileSync(gov, edit("mode: COMPLIANCE", "mode: GOVERNANCE"));
    const r = await runCli(["config", "check", "--config", gov]);
    assert.equal(r.code, 0, r.stderr);
    const warns = logRecords(r.stderr).filter((l) => l.level === "warn");
    assert.equal(warns.length, 1, r.stderr);
    assert.match(
      String(warns[0]?.msg),
      /:8:24: targets\.offsite\.retention\.mode: GOVERNANCE can be bypassed by anyone with s3:BypassGovernanceRetention/,
    );

    const ok = join(dir, "compliance.yaml");
    writeFileSync(ok, VALID);
    const c = await runCli(["config", "check", "--config", ok]);
    assert.equal(c.code, 0, c.stderr);
    assert.equal(logRecords(c.stderr).filter((l) => l.level === "warn").length, 0, c.stderr);
  });

  it("lists at most 10 problems and counts the rest, for 12,000 broken jobs", async () => {
    const job = (i: number) => `- {name: j${i}, target: offsite, schedule: "@daily", paths: [x]}\n`;
    let jobs = "jobs:\n";
    for (let i = 0; i < 12_000; i++) jobs += job(i);
    const file = join(dir, "many-jobs.yaml");
    writeFileSync(file, VALID.slice(0, VALID.indexOf("jobs:\n")) + jobs);
    const r = await runCli(["config", "check", "--config", file], { timeoutMs: 10_000 });
    assert.equal(r.signal, null, "finished within 10 s");
    assert.equal(r.code, 78);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 11, r.stderr.slice(0, 3000));
    assert.match(lines[0] ?? "", /jobs\[0\] \(j0\)\.paths\[0\]: must be an absolute path$/);
    assert.equal(lines[10], "… and 11990 more problems");
  });
});
