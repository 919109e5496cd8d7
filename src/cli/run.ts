import type { Command } from "commander";
import { configPath, loadConfig } from "../config/config.js";
import { Daemon } from "../daemon/daemon.js";
import type { Cli, GlobalOptions } from "./context.js";
import { makeLogger } from "./context.js";
import { onStopSignals } from "./signals.js";

export const runHelp = `
Runs the scheduling daemon: each job on its schedule (cron, in its timezone),
never overlapping itself, at most maxConcurrentJobs at once. At start it
recovers what a crash left (as immutd backup does, see its --help: dead runs
closed as interrupted, a version one left recorded as "unverified", uploads
of dead runs aborted, a running manual backup's left alone), and runs once
every job whose last scheduled run was missed (catchUp, default true). One daemon per catalog: a second exits with 75.

Logs are JSON lines on stdout (journald and Docker collect them).

Signals:
  SIGTERM, SIGINT  stop scheduling, cancel running backups (their uploads are
                   aborted, the runs recorded as interrupted), exit; a second
                   signal more than 1 s later exits at once (signals within
                   1 s, as systemd or timeout(1) send them to the process
                   group, are one request)
  SIGHUP           reload the config, all or nothing: an invalid one, a changed
                   catalog or an http.listen that cannot be bound is logged as
                   an error and the running config kept; a changed http.listen
                   is re-bound. /metrics: immutd_config_last_reload_successful

With http.listen set: GET /healthz (200 while the scheduler is alive and the
catalog writable, else 503) and GET /metrics (Prometheus).

Verification runs on verify.schedule (default daily at 04:00; it also keeps
the newest backup of each job locked); with "schedule: off" the daemon warns
at start that it never verifies.

Exit codes: 0 stopped by a signal, 75 another daemon holds the catalog,
78 configuration error or a catalog that cannot be used (a directory,
damaged, not writable, on a full disk; the message names it).
`;

export async function runCommand(g: GlobalOptions): Promise<void> {
  const log = makeLogger(g, process.stdout);
  const file = configPath(g.config);
  const { config, warnings } = loadConfig(file);
  for (const w of warnings) log.warn(w);
  const daemon = new Daemon({ configFile: file, config, log });

  // Handlers go in before start(), so a signal during startup (or right after
  // the "started" line) stops the daemon cleanly instead of killing it.
  let started = false;
  let requested: NodeJS.Signals | undefined;
  const stop = (sig: NodeJS.Signals): Promise<void> => {
    // Watchdog: if a graceful stop hangs (a stuck request), exit anyway.
    setTimeout(() => {
      log.error("shutdown took too long; exiting");
      process.exit(1);
    }, 45_000).unref();
    return daemon.stop(`received ${sig}`).catch((err: unknown) => {
      log.error({ err }, "error while stopping");
    });
  };
  let done: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    done = resolve;
  });
  onStopSignals({
    log,
    stop: (sig) => {
      if (!started) requested = sig;
      else stop(sig).then(done);
    },
  });
  let reloadAfterStart = false;
  process.on("SIGHUP", () => {
    if (!started) {
      reloadAfterStart = true; // the file may have changed after it was read
      return;
    }
    log.info("SIGHUP: reloading the config");
    void daemon.reload();
  });

  await daemon.start();
  started = true;
  if (requested) {
    await stop(requested);
    return;
  }
  if (reloadAfterStart) {
    log.info("SIGHUP during startup: reloading the config");
    void daemon.reload();
  }
  await finished;
}

export function registerRun(p: Command, cli: Cli): void {
  p.command("run")
    .description("run the scheduling daemon (what systemd and containers start)")
    .addHelpText("after", runHelp)
    .action(() => runCommand(cli.globals()));
}
