/**
 * `encryption:` in the config (per target, replaced per job) and an age
 * backup on the in-memory store: the section's validation, the plain-http
 * rules (SSE-C needs allowInsecureSseC, age alone allowInsecureTransport),
 * the old default staying SSE-C, and a backup to a bucket that refuses every
 * SSE-C write (as AWS's new buckets do) that stores an age file and a
 * manifest whose index only an identity opens. The same on RGW is in
 * age.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import { acceptedRecipients, encryptionOf, parseConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { ConfigError } from "../src/errors.js";
import { runBackup } from "../src/flows/backup.js";
import { restore, selectFromCatalog } from "../src/flows/restore.js";
import { createLogger } from "../src/log.js";
import { AgeError, ageDecrypt } from "../src/pipeline/age.js";
import { schemeOf } from "../src/pipeline/cipher.js";
import { generateIdentity, parseIdentities } from "../src/repo/age-keys.js";
import { isSealed, openIndex } from "../src/repo/age-manifest.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest } from "../src/repo/manifest.js";
import { MemoryBucket } from "../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-age-config-"));
const keyFile = join(dir, "master.key");
writeFileSync(keyFile, `${"ab".repeat(32)}\n`, { mode: 0o600 });
const ops = generateIdentity();
const offline = generateIdentity();

function yaml(target: string[], job: string[] = [], endpoint = "https://s3.example.com"): string {
  return `catalog: ${dir}/catalog.db
masterKeyFile: ${keyFile}
host: web-1
targets:
  offsite:
    endpoint: ${endpoint}
    bucket: backups-web
    retention: { mode: COMPLIANCE, days: 30 }
${target.map((l) => `    ${l}\n`).join("")}    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: etc
    target: offsite
    paths: [/etc]
${job.map((l) => `    ${l}\n`).join("")}`;
}

function problem(text: string): string {
  try {
    parseConfig(text, "/x/config.yaml", { env: {} });
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail("config was accepted");
}

const parse = (text: string) => parseConfig(text, "/x/config.yaml", { env: {} }).config;

describe("encryption: config", () => {
  it("defaults to SSE-C; a target's age section applies to its jobs; a job's replaces it", () => {
    const plain = parse(yaml([]));
    const t0 = plain.targets.offsite;
    assert.ok(t0 && plain.jobs[0]);
    assert.equal(encryptionOf(plain.jobs[0], t0).scheme, "sse-c");

    const c = parse(
      yaml([
        `encryption: { scheme: age, recipients: [${ops.recipient}, ${offline.recipient}], identityFile: /root/id.txt }`,
      ]),
    );
    const t = c.targets.offsite;
    const [job] = c.jobs;
    assert.ok(t && job);
    assert.deepEqual(encryptionOf(job, t), {
      scheme: "age",
      recipients: [ops.recipient, offline.recipient],
      identityFile: "/root/id.txt",
    });
    const both = parse(
      yaml(
        [`encryption: { scheme: age, recipients: [${ops.recipient}] }`],
        [`encryption: { scheme: both, recipients: [${offline.recipient}] }`],
      ),
    );
    assert.ok(both.jobs[0] && both.targets.offsite);
    assert.equal(encryptionOf(both.jobs[0], both.targets.offsite).scheme, "both");
  });

  it("refuses a malformed recipient, age without recipients, recipients without age, unknown keys", () => {
    assert.match(
      problem(yaml(["encryption: { scheme: age, recipients: [age1notakey] }"])),
      /targets\.offsite\.encryption\.recipients\[0\].*is not an age X25519 recipient/,
    );
    // An identity pasted as a recipient: named as such, never echoed (it is a secret).
    const pasted = problem(yaml([`encryption: { scheme: age, recipients: [${ops.identity}] }`]));
    assert.match(pasted, /recipients\[0\].*is an age identity/);
    assert.ok(!pasted.includes(ops.identity.slice(15, 40)), pasted);
    assert.match(
      problem(yaml(["encryption: { scheme: age }"])),
      /scheme age needs at least one age recipient/,
    );
    assert.match(
      problem(yaml([`encryption: { recipients: [${ops.recipient}] }`])),
      /is sse-c, so the recipients are not used/,
    );
    assert.match(
      problem(yaml([`encryption: { scheme: age, recipients: [${ops.recipient}], key: x }`])),
      /key/,
    );
    assert.match(
      problem(yaml(["encryption: { scheme: aes }"])),
      /targets\.offsite\.encryption\.scheme/,
    );
  });

  it("formerRecipients: taken with any scheme, checked like recipients, never encrypted to", () => {
    const c = parse(
      yaml([
        `encryption: { scheme: sse-c, formerRecipients: [${ops.recipient}, ${offline.recipient}] }`,
      ]),
    );
    const t = c.targets.offsite;
    assert.ok(t && c.jobs[0]);
    const e = encryptionOf(c.jobs[0], t);
    assert.equal(e.scheme, "sse-c");
    assert.deepEqual(e.recipients, []);
    assert.deepEqual(acceptedRecipients(e), [ops.recipient, offline.recipient]);
    assert.match(
      problem(
        yaml([
          `encryption: { scheme: age, recipients: [${ops.recipient}], formerRecipients: [age1x] }`,
        ]),
      ),
      /formerRecipients\[0\].*is not an age X25519 recipient/,
    );
  });

  it("plain http: age alone needs allowInsecureTransport; any SSE-C job still needs allowInsecureSseC", () => {
    const http = "http://127.0.0.1:8000";
    const age = `encryption: { scheme: age, recipients: [${ops.recipient}] }`;
    assert.match(problem(yaml([age], [], http)), /allowInsecureTransport: true/);
    assert.doesNotThrow(() => parse(yaml([age, "allowInsecureTransport: true"], [], http)));
    // A job that replaces the target's age with SSE-C brings the SSE-C rule back.
    assert.match(
      problem(yaml([age, "allowInsecureTransport: true"], ["encryption: { scheme: sse-c }"], http)),
      /would send SSE-C encryption keys unencrypted/,
    );
    assert.match(problem(yaml([], [], http)), /allowInsecureSseC: true/);
  });
});

describe("master key with age", () => {
  const noKey = (text: string) => text.replace(/^masterKeyFile: .*\n/m, "");
  const age = `encryption: { scheme: age, recipients: [${ops.recipient}] }`;

  it("an age-only config needs no master key; an SSE-C object met anyway is a clear error", () => {
    const c = parse(noKey(yaml([age])));
    assert.equal(c.masterKeySource, "none");
    assert.equal(c.masterKey.reveal().length, 0);
    assert.throws(
      () => deriveSseKey(c.masterKey.reveal(), "backups-web", "web-1/etc/old.tar.zst"),
      (err: Error) =>
        err instanceof ConfigError &&
        /s3:\/\/backups-web\/web-1\/etc\/old\.tar\.zst is encrypted with SSE-C.*no masterKey or masterKeyFile/.test(
          err.message,
        ),
    );
    // A key given anyway is read (older SSE-C backups stay readable).
    assert.equal(parse(yaml([age])).masterKey.reveal().length, 32);
  });

  it("a config that sends SSE-C keys and has no master key fails, naming what needs it", () => {
    assert.match(
      problem(noKey(yaml([]))),
      /missing masterKey \(or masterKeyFile\): the SSE-C keys of target "offsite" \(scheme sse-c, the default\)/,
    );
    const both = problem(
      noKey(yaml([age], [`encryption: { scheme: both, recipients: [${ops.recipient}] }`])),
    );
    assert.match(both, /missing masterKey.*job "etc" \(scheme both\)/);
    assert.ok(!both.includes('target "offsite"'), both);
    assert.match(
      problem(
        yaml([age]).replace("masterKeyFile:", `masterKey: ${"cd".repeat(32)}\nmasterKeyFile:`),
      ),
      /give either masterKey or masterKeyFile, not both/,
    );
  });
});

describe("age backup (memory store)", () => {
  const tree = join(dir, "tree");
  mkdirSync(join(tree, "private"), { recursive: true });
  writeFileSync(join(tree, "private", "token.txt"), "s3cr3t\n");
  writeFileSync(join(tree, "noise.bin"), randomBytes(300_000));
  const log = createLogger({ level: "silent" });

  it("writes to a bucket that refuses SSE-C: an age file, a sealed index, and restores with an identity only", async () => {
    const bucket = new MemoryBucket("age-mem");
    bucket.blocksSseC = true;
    const tc = targetConfig({
      name: "memory",
      bucket: bucket.name,
      encryption: { scheme: "age", recipients: [ops.recipient, offline.recipient] },
    });
    const job = jobConfig({ name: "tree", target: "memory", paths: [tree] });
    const catalog = Catalog.open(join(dir, "age-mem.db"));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { memory: tc },
      jobs: [job],
    });
    const r = await runBackup(job, {
      config,
      catalog,
      target: bucket.target("memory"),
      targetConfig: tc,
      log,
    });
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(r.warnings, 0, "the manifest was written too");
    const [archive, manifest] = bucket.versions;
    assert.ok(archive && manifest);
    assert.equal(archive.keyHash, undefined, "stored without SSE-C");
    assert.equal(manifest.keyHash, undefined);
    assert.equal(archive.data.subarray(0, 21).toString(), "age-encryption.org/v1");
    assert.equal(archive.data.indexOf("token.txt"), -1);
    assert.equal(schemeOf(catalog.backupKeyDerivation(r.backupId as number) ?? ""), "age");

    const m = decodeManifest(manifest.data);
    assert.ok(isSealed(m));
    assert.equal(manifest.data.indexOf("token"), -1);
    assert.throws(
      () => openIndex(m, parseIdentities(generateIdentity().identity, "x"), "manifest"),
      AgeError,
    );
    const opened = openIndex(m, parseIdentities(offline.identity, "offline"), "manifest");
    assert.ok(opened.files.some((f) => f.path.endsWith("private/token.txt")));
    assert.equal(
      ageDecrypt(archive.data, parseIdentities(ops.identity, "ops"), "archive").length > 300_000,
      true,
    );

    const src = selectFromCatalog(catalog, "tree", {});
    assert.equal(src.sseKey, undefined);
    const names: string[] = [];
    const list = { kind: "list" as const, onEntry: (e: { name: string }) => names.push(e.name) };
    const reader = bucket.target("memory").reader;
    await assert.rejects(restore(reader, src, list), /age-encrypted: an age identity is needed/);
    await assert.rejects(
      restore(reader, src, list, {
        identities: parseIdentities(generateIdentity().identity, "stranger"),
      }),
      (err: Error) => err instanceof AgeError && /nothing was restored/.test(err.message),
    );
    assert.equal(names.length, 0, "nothing listed");
    const s = await restore(reader, src, list, {
      identities: parseIdentities(ops.identity, "ops"),
    });
    assert.equal(s.sha256, catalog.backup(r.backupId as number)?.sha256);
    assert.ok(names.some((n) => n.endsWith("private/token.txt")));
  });

  it("an SSE-C job to a bucket that refuses SSE-C fails with the server's 403, nothing recorded as good", async () => {
    const bucket = new MemoryBucket("sse-blocked");
    bucket.blocksSseC = true;
    const tc = targetConfig({ name: "memory", bucket: bucket.name });
    const job = jobConfig({ name: "tree", target: "memory", paths: [tree] });
    const catalog = Catalog.open(join(dir, "sse-blocked.db"));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { memory: tc },
      jobs: [job],
    });
    const r = await runBackup(job, {
      config,
      catalog,
      target: bucket.target("memory"),
      targetConfig: tc,
      log,
    });
    assert.equal(r.status, "failed");
    assert.match(r.error ?? "", /blocks SSE-C.*AccessDenied, HTTP 403/);
    assert.deepEqual(catalog.listBackups(), []);
  });
});
