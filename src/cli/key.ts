/** `immutd key generate`: a new master key, from which every backup's SSE-C key is derived. */
import type { Command } from "commander";
import { generateMasterKeyFile } from "../repo/keys.js";

export function registerKey(p: Command): void {
  const key = p.command("key").description("master key tools");
  key
    .command("generate")
    .description("write a new random master key (64 hex characters, mode 0600) to FILE")
    .argument("<file>", "where to write it; an existing file is never overwritten")
    .addHelpText(
      "after",
      "\nEvery backup's SSE-C key is derived from the master key. Keep a copy offline:\nwithout it (and without the catalog) backups cannot be decrypted.\n",
    )
    .action((file: string) => {
      generateMasterKeyFile(file);
      process.stderr.write(
        `wrote a new master key to ${file} (mode 0600); keep a copy somewhere safe and offline\n`,
      );
    });
}
