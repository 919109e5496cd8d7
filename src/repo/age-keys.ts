/**
 * age keys: X25519 recipients (`age1…`, what a backed-up host holds) and
 * identities (`AGE-SECRET-KEY-1…`, what only a restoring machine holds), in
 * the text forms `age-keygen` writes, and the identity file immutd writes
 * (`immutd key generate --age FILE`). bech32 is @scure/base's: age's keys are
 * longer than bech32's 90-character limit, and Node has no bech32.
 */

import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from "node:crypto";
import { readFileSync } from "node:fs";
import { bech32 } from "@scure/base";
import { ExitCode, ImmutdError } from "../errors.js";
import { writeKeyFile } from "./private-file.js";

const RECIPIENT_HRP = "age";
const IDENTITY_HRP = "age-secret-key-";
/** age's own keys are longer than bech32's 90-character limit. */
const BECH32_LIMIT = 1024;

/** DER prefixes around a raw 32-byte X25519 key (RFC 8410), for Node's KeyObject. */
const PKCS8_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b656e032100", "hex");

/**
 * A file or archive could not be decrypted: no identity matches, or its bytes
 * are not what was encrypted (tampered, truncated, not age). Exit 3, as a
 * failed restore.
 */
export class AgeError extends ImmutdError {
  override readonly exitCode = ExitCode.jobsFailed;
}

/** A recipient (`age1…`): who can decrypt. */
export interface AgeRecipient {
  /** The `age1…` text, as configured. */
  text: string;
  publicKey: Buffer;
}

/** An identity (`AGE-SECRET-KEY-1…`): what decrypts. Never logged. */
export interface AgeIdentity {
  privateKey: KeyObject;
  /** Its recipient's raw public key. */
  publicKey: Buffer;
}

/** Parses an `age1…` X25519 recipient; throws one line naming it when it is not one. */
export function parseRecipient(text: string): AgeRecipient {
  const t = text.trim();
  // An identity pasted where a recipient belongs must not be echoed into a
  // config error (stderr, journald, the daemon's log): name it, never quote it.
  if (/^age-secret-key-/i.test(t))
    throw new Error(
      "is an age identity (AGE-SECRET-KEY-1…), the secret half of a key pair, not a recipient: put its recipient (age1…, `age-keygen -y FILE` prints it) here and keep the identity off this host",
    );
  let data: Uint8Array;
  try {
    const d = bech32.decode(t as `${string}1${string}`, BECH32_LIMIT);
    if (d.prefix !== RECIPIENT_HRP) throw new Error(`prefix ${d.prefix}`);
    data = bech32.fromWords(d.words);
  } catch (err) {
    throw new Error(
      `${JSON.stringify(t.slice(0, 80))} is not an age X25519 recipient (age1…): ${(err as Error).message}`,
    );
  }
  if (data.length !== 32 || t !== t.toLowerCase())
    throw new Error(`${JSON.stringify(t.slice(0, 80))} is not an age X25519 recipient (age1…)`);
  return { text: t, publicKey: Buffer.from(data) };
}

/**
 * Parses an identity file as age writes it: one `AGE-SECRET-KEY-1…` a line,
 * `#` comments and blank lines ignored. `what` names the file in errors,
 * which never quote a line (it would be a secret).
 */
export function parseIdentities(contents: string, what: string): AgeIdentity[] {
  const ids: AgeIdentity[] = [];
  const lines = contents.split(/\r?\n/);
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    let data: Uint8Array | undefined;
    try {
      const d = bech32.decode(line as `${string}1${string}`, BECH32_LIMIT);
      if (d.prefix === IDENTITY_HRP && line === line.toUpperCase())
        data = bech32.fromWords(d.words);
    } catch {
      data = undefined;
    }
    if (data?.length !== 32)
      throw new AgeError(
        `${what}: line ${i + 1} is not an age X25519 identity (AGE-SECRET-KEY-1…); passphrase and plugin identities are not supported`,
      );
    ids.push(identityOf(Buffer.from(data)));
  }
  if (!ids.length) throw new AgeError(`${what} holds no age identity (AGE-SECRET-KEY-1…)`);
  return ids;
}

function identityOf(secret: Buffer): AgeIdentity {
  const privateKey = createPrivateKey({
    key: Buffer.concat([PKCS8_PREFIX, secret]),
    format: "der",
    type: "pkcs8",
  });
  return { privateKey, publicKey: rawPublic(createPublicKey(privateKey)) };
}

export function rawPublic(k: KeyObject): Buffer {
  return (k.export({ format: "der", type: "spki" }) as Buffer).subarray(SPKI_PREFIX.length);
}

export function publicKeyObject(raw: Buffer): KeyObject {
  return createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" });
}

/** A new identity: the identity file's line and its recipient. */
export function generateIdentity(): { identity: string; recipient: string } {
  const { privateKey } = generateKeyPairSync("x25519");
  const der = privateKey.export({ format: "der", type: "pkcs8" }) as Buffer;
  const secret = der.subarray(PKCS8_PREFIX.length);
  const identity = bech32.encode(IDENTITY_HRP, bech32.toWords(secret), BECH32_LIMIT).toUpperCase();
  return { identity, recipient: recipientText(identityOf(Buffer.from(secret)).publicKey) };
}

/** The `age1…` text of an identity's recipient. */
export function recipientOf(id: AgeIdentity): string {
  return recipientText(id.publicKey);
}

function recipientText(publicKey: Buffer): string {
  return bech32.encode(RECIPIENT_HRP, bech32.toWords(publicKey), BECH32_LIMIT);
}

/** Reads an identity file; an unreadable file is an AgeError naming it (exit 3). */
export function readIdentityFile(path: string): AgeIdentity[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new AgeError(
      `cannot read the age identity file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
  return parseIdentities(text, path);
}

/**
 * Writes a new identity file (mode 0600, as age-keygen writes it: a created
 * comment, the recipient comment, the identity) and returns its recipient.
 * Refuses to replace an existing file: it may be the only key to backups.
 */
export function generateIdentityFile(path: string, now: Date = new Date()): string {
  const { identity, recipient } = generateIdentity();
  writeKeyFile(
    path,
    `# created: ${now.toISOString()} by immutd\n# public key: ${recipient}\n${identity}\n`,
    "the identity",
  );
  return recipient;
}
