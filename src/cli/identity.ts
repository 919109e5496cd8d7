/**
 * Where the CLI finds the age identity that reads an age-encrypted backup:
 * `--identity FILE`, else the `encryption.identityFile` of the job (or its
 * target). The backed-up host normally has neither: backup, verify (without
 * --deep) and keepLatestLocked never need one.
 */
import type { EncryptionConfig } from "../config/config.js";
import { UsageError } from "../errors.js";
import { type AgeIdentity, readIdentityFile } from "../repo/age-keys.js";

/** The identities to use, or undefined when none is given or configured. */
export function identitiesFrom(
  flag: string | undefined,
  enc: EncryptionConfig | undefined,
): AgeIdentity[] | undefined {
  const file = flag ?? enc?.identityFile;
  return file === undefined ? undefined : readIdentityFile(file);
}

/** The identities, or a usage error saying how to give one; `what` names the backup. */
export function requireIdentities(
  flag: string | undefined,
  enc: EncryptionConfig | undefined,
  what: string,
): AgeIdentity[] {
  const ids = identitiesFrom(flag, enc);
  if (ids) return ids;
  throw new UsageError(
    `${what} is age-encrypted: give --identity FILE (the age identity of one of its recipients) or set encryption.identityFile on a machine that restores`,
  );
}
