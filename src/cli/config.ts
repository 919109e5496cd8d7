/** `immutd config check`: validate the configuration and print it resolved, secrets redacted. */

import type { Command } from "commander";
import { stringify } from "yaml";
import { configPath, loadConfig, redactedView } from "../config/config.js";
import { type Cli, type GlobalOptions, makeLogger } from "./context.js";

export const configCheckHelp = `
Reads every referenced secret file and environment variable, so it also proves
they are readable. Secrets print as <redacted>; webhook URLs (which carry their
token in the path or query) print as their origin, then /<redacted>.

Exit 0 if valid (warnings, e.g. GOVERNANCE retention, go to the log), 78 with
one line per problem otherwise (at most 10, then "… and N more problems").
`;

export function configCheckCommand(g: GlobalOptions): void {
  const file = configPath(g.config);
  const { config, warnings } = loadConfig(file);
  const log = makeLogger(g);
  for (const w of warnings) log.warn(w);
  process.stdout.write(`# ${file}: valid\n${stringify(redactedView(config))}`);
}

export function registerConfig(p: Command, cli: Cli): void {
  const config = p.command("config").description("configuration tools");
  config
    .command("check")
    .description("validate the configuration and print it resolved, with secrets redacted")
    .addHelpText("after", configCheckHelp)
    .action(() => configCheckCommand(cli.globals()));
}
