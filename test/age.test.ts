/**
 * The age v1 format (src/pipeline/age.ts) against the standard `age` tool:
 * what immutd encrypts decrypts with `age -d -i`, what `age -r` encrypts
 * decrypts here, with identities from either side; and the attacks a reader
 * must catch: a tampered chunk, a stream cut at a chunk boundary (the
 * final-chunk flag), a header swapped from another file, a header edited
 * under its MAC, a wrong identity.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, it } from "node:test";
import {
  AGE_CHUNK,
  AgeDecrypt,
  AgeEncrypt,
  AgeError,
  ageDecrypt,
  ageEncrypt,
} from "../src/pipeline/age.js";
import {
  generateIdentity,
  parseIdentities,
  parseRecipient,
  recipientOf,
} from "../src/repo/age-keys.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-age-"));

function age(args: string[], input?: Buffer): Buffer {
  const r = spawnSync("age", args, { input, maxBuffer: 1 << 30 });
  assert.equal(r.status, 0, `age ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** A fresh identity from our generator, written as an identity file. */
function ours(): { file: string; identity: string; recipient: string } {
  const g = generateIdentity();
  const file = join(dir, `id-${randomBytes(4).toString("hex")}.txt`);
  writeFileSync(file, `# test\n${g.identity}\n`, { mode: 0o600 });
  return { file, ...g };
}

/** A fresh identity from age-keygen. */
function theirs(): { file: string; recipient: string } {
  const file = join(dir, `kg-${randomBytes(4).toString("hex")}.txt`);
  const r = spawnSync("age-keygen", ["-o", file]);
  assert.equal(r.status, 0, String(r.stderr));
  const recipient = /age1[0-9a-z]+/.exec(readFileSync(file, "utf8"))?.[0];
  assert.ok(recipient);
  return { file, recipient };
}

async function streamEncrypt(plain: Buffer, recipients: string[], piece = 10_000): Promise<Buffer> {
  const out: Buffer[] = [];
  const pieces = function* () {
    for (let i = 0; i < plain.length; i += piece) yield plain.subarray(i, i + piece);
  };
  await pipeline(
    Readable.from(pieces()),
    new AgeEncrypt(recipients.map(parseRecipient)),
    async (src: AsyncIterable<Buffer>) => {
      for await (const b of src) out.push(b);
    },
  );
  return Buffer.concat(out);
}

async function streamDecrypt(data: Buffer, idFile: string, piece = 7_777): Promise<Buffer> {
  const out: Buffer[] = [];
  const pieces = function* () {
    for (let i = 0; i < data.length; i += piece) yield data.subarray(i, i + piece);
  };
  await pipeline(
    Readable.from(pieces()),
    new AgeDecrypt(parseIdentities(readFileSync(idFile, "utf8"), idFile), "test object"),
    async (src: AsyncIterable<Buffer>) => {
      for await (const b of src) out.push(b);
    },
  );
  return Buffer.concat(out);
}

// Around a chunk, and around the 16-chunk batches the payload worker seals (and several of them).
const SIZES = [
  0,
  1,
  AGE_CHUNK - 1,
  AGE_CHUNK,
  AGE_CHUNK + 1,
  3 * AGE_CHUNK,
  200_001,
  16 * AGE_CHUNK,
  16 * AGE_CHUNK + 1,
  37 * AGE_CHUNK + 4_321,
];
const FAULTY = new URL("./age-faulty-worker.js", import.meta.url);

describe("age v1 format", () => {
  it("keys: ours parse as age's, age-keygen's parse as ours, recipients agree", () => {
    const o = ours();
    const kg = spawnSync("age-keygen", ["-y", o.file]);
    assert.equal(kg.status, 0, String(kg.stderr));
    assert.equal(String(kg.stdout).trim(), o.recipient);
    const t = theirs();
    const [id] = parseIdentities(readFileSync(t.file, "utf8"), t.file);
    assert.ok(id);
    assert.equal(recipientOf(id), t.recipient);
    assert.equal(parseRecipient(t.recipient).text, t.recipient);
  });

  it("immutd encrypts, `age -d -i` decrypts, at chunk boundaries and to two recipients", async () => {
    const a = ours();
    const b = theirs();
    for (const n of SIZES) {
      const plain = randomBytes(n);
      const enc = await streamEncrypt(plain, [a.recipient, b.recipient]);
      assert.deepEqual(age(["-d", "-i", a.file], enc), plain, `size ${n}, our identity`);
      assert.deepEqual(age(["-d", "-i", b.file], enc), plain, `size ${n}, age-keygen identity`);
      assert.deepEqual(
        ageDecrypt(
          ageEncrypt(plain, [parseRecipient(a.recipient)]),
          parseIdentities(a.identity, "id"),
          "x",
        ),
        plain,
      );
    }
  });

  it("`age -r` encrypts, immutd decrypts (streamed in odd pieces and whole)", async () => {
    const a = ours();
    const b = theirs();
    for (const n of SIZES) {
      const plain = randomBytes(n);
      const enc = age(["-r", b.recipient, "-r", a.recipient], plain);
      assert.deepEqual(await streamDecrypt(enc, a.file), plain, `size ${n}`);
      assert.deepEqual(await streamDecrypt(enc, b.file, 1 << 20), plain, `size ${n}`);
      assert.deepEqual(
        ageDecrypt(enc, parseIdentities(readFileSync(b.file, "utf8"), "f"), "x"),
        plain,
      );
    }
  });

  it("a wrong identity is an AgeError naming the object, and nothing is output", async () => {
    const a = ours();
    const wrong = ours();
    const enc = await streamEncrypt(randomBytes(3 * AGE_CHUNK), [a.recipient]);
    const out: Buffer[] = [];
    await assert.rejects(
      pipeline(
        Readable.from([enc]),
        new AgeDecrypt(parseIdentities(wrong.identity, "wrong.txt"), "s3://b/k version v"),
        async (src: AsyncIterable<Buffer>) => {
          for await (const b of src) out.push(b);
        },
      ),
      (err: Error) =>
        err instanceof AgeError &&
        /s3:\/\/b\/k version v: no identity given matches/.test(err.message) &&
        err.exitCode === 3,
    );
    assert.equal(out.length, 0);
  });

  it("a tampered chunk fails; age agrees", async () => {
    const a = ours();
    const enc = await streamEncrypt(randomBytes(3 * AGE_CHUNK + 5), [a.recipient]);
    const bad = Buffer.from(enc);
    const at = bad.length - 2 * AGE_CHUNK;
    bad[at] = (bad[at] ?? 0) ^ 1;
    await assert.rejects(streamDecrypt(bad, a.file), /does not authenticate/);
    assert.notEqual(spawnSync("age", ["-d", "-i", a.file], { input: bad }).status, 0);
  });

  it("a stream cut after a full chunk (the last one dropped) fails by the final-chunk flag", async () => {
    const a = ours();
    const plain = randomBytes(3 * AGE_CHUNK + 100);
    const enc = await streamEncrypt(plain, [a.recipient]);
    const cut = enc.subarray(0, enc.length - (100 + 16));
    await assert.rejects(streamDecrypt(cut, a.file), /chunk 2 does not authenticate/);
    // A cut inside a chunk fails too, and an exact multiple minus its final chunk.
    await assert.rejects(streamDecrypt(enc.subarray(0, enc.length - 50), a.file), AgeError);
    const even = await streamEncrypt(randomBytes(2 * AGE_CHUNK), [a.recipient]);
    await assert.rejects(
      streamDecrypt(even.subarray(0, even.length - (AGE_CHUNK + 16)), a.file),
      /does not authenticate/,
    );
    // And with the header alone.
    await assert.rejects(
      streamDecrypt(enc.subarray(0, enc.indexOf("\n---") + 60), a.file),
      AgeError,
    );
  });

  it("a header swapped in from another file, or edited under its MAC, fails", async () => {
    const a = ours();
    const one = await streamEncrypt(randomBytes(1000), [a.recipient]);
    const two = await streamEncrypt(randomBytes(1000), [a.recipient]);
    const end = (b: Buffer) => b.indexOf("\n", b.indexOf("\n---") + 1) + 1;
    const swapped = Buffer.concat([two.subarray(0, end(two)), one.subarray(end(one))]);
    await assert.rejects(streamDecrypt(swapped, a.file), /does not authenticate/);
    // A second recipient's stanza added: the MAC no longer matches.
    const extra = theirs();
    const other = age(["-r", extra.recipient], Buffer.from("x"));
    const stanza = other.subarray(other.indexOf("\n") + 1, other.indexOf("\n---") + 1);
    const first = one.indexOf("\n") + 1;
    const edited = Buffer.concat([one.subarray(0, first), stanza, one.subarray(first)]);
    await assert.rejects(streamDecrypt(edited, a.file), /header MAC does not match/);
  });

  it("hostile input: not age, a passphrase file, a malformed identity file", async () => {
    const a = ours();
    await assert.rejects(
      streamDecrypt(Buffer.from("\x1f\x8b not age"), a.file),
      /does not start with/,
    );
    await assert.rejects(streamDecrypt(Buffer.alloc(0), a.file), AgeError);
    assert.throws(
      () => parseIdentities("AGE-SECRET-KEY-1QQQQ\n", "id.txt"),
      /id.txt: line 1 is not/,
    );
    assert.throws(() => parseIdentities("# only a comment\n", "id.txt"), /holds no age identity/);
    assert.throws(() => parseRecipient("age1notarecipient"), /is not an age X25519 recipient/);
    // A passphrase file's header (age -p needs a terminal, so it is written here).
    const scrypt = Buffer.from(
      `age-encryption.org/v1\n-> scrypt ${randomBytes(16).toString("base64").replace(/=+$/, "")} 18\n${randomBytes(32).toString("base64").replace(/=+$/, "")}\n--- ${randomBytes(32).toString("base64").replace(/=+$/, "")}\n${"x".repeat(40)}`,
    );
    await assert.rejects(streamDecrypt(scrypt, a.file), /passphrase/);
  });

  for (const mode of ["answer", "throw", "exit"] as const) {
    it(`a payload worker that ${mode === "answer" ? "answers with an error" : mode === "throw" ? "throws" : "exits"} fails the stream; nothing sealed after it is output`, async () => {
      const a = ours();
      process.env.IMMUTD_TEST_AGE_FAULT = `${mode}:3`;
      const out: Buffer[] = [];
      try {
        const plain = randomBytes(10 * 16 * AGE_CHUNK);
        await assert.rejects(
          pipeline(
            Readable.from([plain.subarray(0, plain.length / 2), plain.subarray(plain.length / 2)]),
            new AgeEncrypt([parseRecipient(a.recipient)], { worker: FAULTY }),
            async (src: AsyncIterable<Buffer>) => {
              for await (const b of src) out.push(b);
            },
          ),
          (err: Error) => {
            assert.match(
              err.message,
              mode === "answer"
                ? /^age encryption failed: injected failure/
                : /^age encryption worker (exited \(code 7\)|failed \(injected crash\)).*the archive is incomplete and is not stored/,
            );
            return true;
          },
        );
      } finally {
        delete process.env.IMMUTD_TEST_AGE_FAULT;
      }
      // The header and at most the two batches before the failing one.
      const sealed = Buffer.concat(out);
      assert.ok(sealed.length < 3 * 16 * (AGE_CHUNK + 16), `${sealed.length} bytes output`);
    });
  }
});
