/**
 * What every command that reads the configuration shares: the loaded config,
 * a logger, and the catalog, opened on first use and closed by the CLI. A
 * command that never asks for the catalog (restore --from-bucket) works
 * whatever state the catalog is in: missing, damaged or unreadable.
 */
import { Catalog } from "../catalog/catalog.js";
import { type Config, configPath, loadConfig } from "../config/config.js";
import { createLogger, type LogFormat, type Logger } from "../log.js";

export interface GlobalOptions {
  config?: string;
  logLevel?: string;
  logFormat?: LogFormat;
}

/**
 * What a command's registration (its `registerX(p, cli)`, listed in
 * src/cli/program.ts) gets besides the root command.
 */
export interface Cli {
  /** The global options (--config, --log-level, --log-format) as parsed. */
  globals(): GlobalOptions;
  /** Runs `fn` with a Context opened from the global options, and closes it after, also on error. */
  withContext(fn: (ctx: Context) => Promise<void> | void): Promise<void>;
}

export interface Context {
  config: Config;
  log: Logger;
  catalog(): Catalog;
  close(): void;
}

export function makeLogger(
  g: GlobalOptions,
  destination: NodeJS.WritableStream = process.stderr,
): Logger {
  const tty = (destination as NodeJS.WriteStream).isTTY === true;
  // At a terminal the one-off commands print their own progress and summary,
  // so routine info lines would only repeat them; warnings and errors still show.
  const quietDefault = tty && destination === process.stderr ? "warn" : "info";
  return createLogger({
    level: g.logLevel ?? process.env.IMMUTD_LOG_LEVEL ?? quietDefault,
    format: g.logFormat ?? (tty ? "pretty" : "json"),
    destination,
  });
}

export function openContext(g: GlobalOptions): Context {
  const log = makeLogger(g);
  const { config, warnings } = loadConfig(configPath(g.config));
  for (const w of warnings) log.warn(w);
  let catalog: Catalog | undefined;
  return {
    config,
    log,
    catalog: () => {
      if (!catalog) {
        catalog = Catalog.open(config.catalog);
        for (const w of catalog.warnings) log.warn(w);
        if (catalog.readOnly !== undefined) {
          log.warn(
            `catalog ${catalog.path} cannot be written (${catalog.readOnly}): reading it as it is; commands that record runs refuse`,
          );
        }
      }
      return catalog;
    },
    close: () => catalog?.close(),
  };
}
