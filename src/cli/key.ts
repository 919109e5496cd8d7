/**
 * `immutd key generate`: a new master key, from which every backup's SSE-C key
 * is derived; with --age, a new age identity (the recipient goes into the
 * config of the hosts that back up, the identity stays on the machines that
 * restore).
 */
import type { Command } from "commander";
import { generateIdentityFile } from "../repo/age-keys.js";
import { generateMasterKeyFile } from "../repo/keys.js";

const generateHelp = `
Every backup's SSE-C key is derived from the master key. Keep a copy offline:
without it (and without the catalog) backups cannot be decrypted. A config
whose every target and job has encryption scheme: age needs no master key.

With --age, FILE gets a new age X25519 identity (AGE-SECRET-KEY-1…, mode
0600, in age-keygen's format) and its recipient (age1…) is printed on stdout.
Put the recipient under encryption.recipients of the hosts that back up; keep
the identity off those hosts (on the machine that restores, and a copy
offline): a host with only recipients cannot read its own backups. The
standard age tool reads the same file: age -d -i FILE.

Examples:
  immutd key generate /etc/immutd/master.key
  immutd key generate --age /root/immutd-recovery.age.txt
`;

export function registerKey(p: Command): void {
  const key = p.command("key").description("master key and age identity tools");
  key
    .command("generate")
    .description(
      "write a new random master key (64 hex characters, mode 0600) to FILE, or with --age a new age identity",
    )
    .argument("<file>", "where to write it; an existing file is never overwritten")
    .option("--age", "write an age identity (mode 0600) and print its recipient (age1…)")
    .addHelpText("after", generateHelp)
    .action((file: string, o: { age?: boolean }) => {
      if (o.age) {
        const recipient = generateIdentityFile(file);
        process.stdout.write(`${recipient}\n`);
        process.stderr.write(
          `wrote a new age identity to ${file} (mode 0600); its recipient is printed above: put it under encryption.recipients, keep the identity off the hosts that back up and a copy offline\n`,
        );
        return;
      }
      generateMasterKeyFile(file);
      process.stderr.write(
        `wrote a new master key to ${file} (mode 0600); keep a copy somewhere safe and offline\n`,
      );
    });
}
