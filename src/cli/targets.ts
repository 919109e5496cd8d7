/**
 * Opening a config's targets for the commands that work on several at once
 * (init, verify, doctor), and closing their connections afterwards.
 */
import { byName, type Config, type TargetConfig } from "../config/config.js";
import { UsageError } from "../errors.js";
import { closeTarget, openTarget } from "../store/s3.js";
import type { Target } from "../store/store.js";

/** The named target, or all of them; an unknown name is a usage error. */
export function selectTargets(config: Config, name: string | undefined): TargetConfig[] {
  const all = Object.values(config.targets);
  if (name === undefined) return all;
  const t = config.targets[name];
  if (!t) {
    throw new UsageError(
      `unknown target ${name}; configured targets: ${all.map((x) => x.name).join(", ")}`,
    );
  }
  return [t];
}

export interface OpenTargets {
  targets: Record<string, Target>;
  close(): void;
}

/** `parallel`: requests run at once besides uploads (verify.concurrency). */
export function openTargets(list: readonly TargetConfig[], parallel = 0): OpenTargets {
  const targets = byName<Target>();
  for (const tc of list) targets[tc.name] = openTarget(tc, { parallel });
  return {
    targets,
    close() {
      for (const t of Object.values(targets)) closeTarget(t);
    },
  };
}
