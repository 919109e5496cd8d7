/**
 * The local catalog (SQLite through better-sqlite3): every run attempt, and one
 * row per stored backup version with its version ID, SHA-256 and SSE-C key.
 *
 * It holds key material, so the file (and its -wal/-shm companions, which SQLite
 * creates with the database file's mode) is created 0600 in a directory that is
 * not world-writable. immutd never changes the mode of a file or directory it
 * did not create: an existing catalog readable by others is a warning naming
 * the chmod that fixes it. WAL mode with synchronous=FULL: a backup row, once
 * written, survives a crash or power loss. Migrations are keyed by PRAGMA
 * user_version.
 *
 * A catalog that cannot be used (a directory, a special file, a file on /proc,
 * a damaged database, a full disk, an I/O error) is a CatalogError naming the
 * file and what to do, from any query: see guard(). A catalog that exists but
 * cannot be written (a read-only mount, a copy on a restore machine) is opened
 * as an in-memory copy that refuses writes, so list, status and restore work
 * and commands that record say why they cannot.
 */
import {
  accessSync,
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readlinkSync,
  type Stats,
  statfsSync,
  statSync,
} from "node:fs";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import type { Compression, RetentionMode } from "../config/config.js";
import { CatalogError, ConfigError, describeError, LockHeldError } from "../errors.js";
import { fileKind } from "../pipeline/file-kind.js";

export type RunStatus = "running" | "succeeded" | "failed" | "interrupted";
/**
 * ok: stored, size checked, locked as configured. corrupt: the stored bytes are
 * not what was sent. missing: the version is gone. expired: its lock has ended.
 * unlocked: the version exists but its retention could not be set or read back
 * as configured (it is recorded so that it is never forgotten, and verify keeps
 * reporting it). unverified: found by crash recovery at a run's key; size and
 * retention come from the server, the SHA-256 is unknown until `verify --deep`.
 */
export type BackupStatus = "ok" | "corrupt" | "missing" | "expired" | "unlocked" | "unverified";

export interface RunRow {
  id: number;
  job: string;
  target: string;
  objectKey: string | null;
  uploadId: string | null;
  startedAt: string;
  finishedAt: string | null;
  status: RunStatus;
  bytes: number;
  files: number;
  warnings: number;
  error: string | null;
}

export interface NewBackup {
  runId: number;
  job: string;
  target: string;
  bucket: string;
  key: string;
  versionId: string;
  size: number;
  /** null only for a backup found by crash recovery ("unverified") until verify --deep settles it. */
  sha256: string | null;
  compression: Compression;
  sseKey: Buffer;
  keyDerivation: string;
  createdAt: Date;
  retentionMode: RetentionMode | null;
  retainUntil: Date | null;
  status: BackupStatus;
  files: number;
  /** The backup an incremental builds on (src/repo/chain.ts); absent or null for a full backup. */
  parentId?: number | null;
}

/** A backup rebuilt from its manifest (src/catalog/rebuild.ts): no run, since runs live only in the catalog. */
export type ImportedBackup = Omit<NewBackup, "runId"> & {
  manifestKey: string;
  manifestVersionId: string;
  /** An incremental's parent archive as its manifest names it; linked to that backup's row once both are imported. */
  parent?: { key: string; versionId: string } | null;
};

/** A backup as shown to people and scripts: everything but the key. */
export interface BackupRow {
  id: number;
  runId: number | null;
  job: string;
  target: string;
  bucket: string;
  key: string;
  versionId: string;
  size: number;
  sha256: string | null;
  compression: Compression;
  createdAt: string;
  retentionMode: RetentionMode | null;
  retainUntil: string | null;
  status: BackupStatus;
  files: number;
  /** The manifest object beside the archive (src/repo/manifest.ts); null for a backup made before manifests. A key without a version: the manifest could not be written. */
  manifestKey: string | null;
  manifestVersionId: string | null;
  /** The keep-policy tiers it stands for ("daily,weekly"; "" none); null: made before tiers, or not decided yet (src/retention/tiers.ts). */
  tiers?: string | null;
  /** The immutd-keep tag immutd set on it ("weekly-8"); null: none set (made without a policy, or tagging failed). */
  keepTag?: string | null;
  /** The backup this incremental builds on; null for a full backup (every backup before chains). */
  parentId: number | null;
  /** The id of its chain's full backup (its own for a full). */
  chainId: number;
}

/** Warnings stored per run; the count in runs.warnings is always complete. */
export const MAX_STORED_WARNINGS = 1000;

const MIGRATIONS: string[] = [
  `
  CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    job         TEXT NOT NULL,
    target      TEXT NOT NULL,
    object_key  TEXT,
    upload_id   TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    status      TEXT NOT NULL CHECK (status IN ('running','succeeded','failed','interrupted')),
    bytes       INTEGER NOT NULL DEFAULT 0,
    files       INTEGER NOT NULL DEFAULT 0,
    warnings    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    pid         INTEGER
  );
  CREATE INDEX runs_job_started ON runs (job, started_at);
  CREATE TABLE run_warnings (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    path    TEXT NOT NULL,
    message TEXT NOT NULL
  );
  CREATE INDEX run_warnings_run ON run_warnings (run_id);
  CREATE TABLE backups (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER REFERENCES runs (id),
    job            TEXT NOT NULL,
    target         TEXT NOT NULL,
    bucket         TEXT NOT NULL,
    object_key     TEXT NOT NULL,
    version_id     TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    compression    TEXT NOT NULL CHECK (compression IN ('none','gzip')),
    sse_key        BLOB NOT NULL,
    key_derivation TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    retention_mode TEXT,
    retain_until   TEXT,
    status         TEXT NOT NULL CHECK (status IN ('ok','corrupt','missing','expired')),
    files          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (bucket, object_key, version_id)
  );
  CREATE INDEX backups_job_created ON backups (job, created_at);
  `,
  // 2: verification (immutd verify) and lock extension (keepLatestLocked).
  `
  CREATE TABLE lock_extensions (
    id               INTEGER PRIMARY KEY,
    backup_id        INTEGER NOT NULL REFERENCES backups (id),
    old_retain_until TEXT,
    new_retain_until TEXT NOT NULL,
    mode             TEXT NOT NULL CHECK (mode IN ('COMPLIANCE','GOVERNANCE')),
    extended_at      TEXT NOT NULL
  );
  CREATE INDEX lock_extensions_backup ON lock_extensions (backup_id, extended_at);
  CREATE TABLE verify_runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    deep        INTEGER NOT NULL,
    job         TEXT,
    checked     INTEGER NOT NULL,
    findings    INTEGER NOT NULL,
    report      TEXT NOT NULL
  );
  CREATE INDEX verify_runs_started ON verify_runs (started_at);
  `,
  // 3: backups that could not be locked as configured ("unlocked") and backups
  // found by crash recovery whose SHA-256 is not known yet ("unverified", sha256
  // NULL). SQLite cannot change a CHECK in place: the table is rebuilt (with
  // foreign keys off, see #migrate) and every row kept.
  `
  CREATE TABLE backups_v3 (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER REFERENCES runs (id),
    job            TEXT NOT NULL,
    target         TEXT NOT NULL,
    bucket         TEXT NOT NULL,
    object_key     TEXT NOT NULL,
    version_id     TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT,
    compression    TEXT NOT NULL CHECK (compression IN ('none','gzip')),
    sse_key        BLOB NOT NULL,
    key_derivation TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    retention_mode TEXT,
    retain_until   TEXT,
    status         TEXT NOT NULL CHECK (status IN ('ok','corrupt','missing','expired','unlocked','unverified')),
    files          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (bucket, object_key, version_id),
    CHECK (sha256 IS NOT NULL OR status IN ('unverified','corrupt','missing','expired','unlocked'))
  );
  INSERT INTO backups_v3 SELECT id, run_id, job, target, bucket, object_key, version_id, size, sha256,
    compression, sse_key, key_derivation, created_at, retention_mode, retain_until, status, files FROM backups;
  DROP TABLE backups;
  ALTER TABLE backups_v3 RENAME TO backups;
  CREATE INDEX backups_job_created ON backups (job, created_at);
  `,
  // 4: the manifest written beside each archive (src/repo/manifest.ts). NULL for
  // backups made before manifests existed, and for one whose manifest could not be written.
  `
  ALTER TABLE backups ADD COLUMN manifest_key TEXT;
  ALTER TABLE backups ADD COLUMN manifest_version_id TEXT;
  `,
  // 5: compression zstd. The CHECK is rebuilt as in 3, every row kept.
  `
  CREATE TABLE backups_v5 (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER REFERENCES runs (id),
    job            TEXT NOT NULL,
    target         TEXT NOT NULL,
    bucket         TEXT NOT NULL,
    object_key     TEXT NOT NULL,
    version_id     TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT,
    compression    TEXT NOT NULL CHECK (compression IN ('none','gzip','zstd')),
    sse_key        BLOB NOT NULL,
    key_derivation TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    retention_mode TEXT,
    retain_until   TEXT,
    status         TEXT NOT NULL CHECK (status IN ('ok','corrupt','missing','expired','unlocked','unverified')),
    files          INTEGER NOT NULL DEFAULT 0,
    manifest_key   TEXT,
    manifest_version_id TEXT,
    UNIQUE (bucket, object_key, version_id),
    CHECK (sha256 IS NOT NULL OR status IN ('unverified','corrupt','missing','expired','unlocked'))
  );
  INSERT INTO backups_v5 SELECT id, run_id, job, target, bucket, object_key, version_id, size, sha256,
    compression, sse_key, key_derivation, created_at, retention_mode, retain_until, status, files,
    manifest_key, manifest_version_id FROM backups;
  DROP TABLE backups;
  ALTER TABLE backups_v5 RENAME TO backups;
  CREATE INDEX backups_job_created ON backups (job, created_at);
  `,
  // 6: keep-policy tiers (src/retention/tiers.ts) and the tag the lifecycle rules
  // key on. NULL for every backup made before: no tier, no tag, never expired by a rule.
  `
  ALTER TABLE backups ADD COLUMN tiers TEXT;
  ALTER TABLE backups ADD COLUMN keep_tag TEXT;
  `,
  // 7: incremental backups (src/repo/chain.ts): the backup each builds on. NULL,
  // a full backup, for every row before: old catalogs hold only full backups.
  `
  ALTER TABLE backups ADD COLUMN parent_id INTEGER REFERENCES backups (id);
  ALTER TABLE backups ADD COLUMN chain_id INTEGER;
  CREATE INDEX backups_parent ON backups (parent_id);
  CREATE TABLE IF NOT EXISTS run_parents (
    run_id    INTEGER PRIMARY KEY REFERENCES runs (id),
    parent_id INTEGER NOT NULL
  );
  `,
];

const RUN_COLUMNS = `id, job, target, object_key AS objectKey, upload_id AS uploadId, started_at AS startedAt,
  finished_at AS finishedAt, status, bytes, files, warnings, error`;

/**
 * The error startRun records on a dead run it finds in its way. It marks the
 * run as not reconciled yet: crash recovery still has to look at its key.
 */
export const UNRECONCILED_RUN = "the process running it ended without finishing it";

/**
 * Ends the error of a failed run whose upload request was sent but that has no
 * backup row: the server may have stored the version after all (the answer to
 * CompleteMultipartUpload or PutObject was lost, or timed out while the server
 * assembled the parts). Such a run is not reconciled yet either: crash recovery
 * looks for a version at its key and records what it finds.
 */
export const UPLOAD_UNSETTLED =
  " (the upload may have completed on the server all the same: the next backup, verify or daemon start looks for a version at its key)";

/** Runs crash recovery has still to look at, besides abandoned "running" ones (two parameters: UNRECONCILED_RUN, "%" + UPLOAD_UNSETTLED). */
const UNRECONCILED_SQL = `((status = 'interrupted' AND error = ?) OR (status IN ('interrupted','failed') AND error LIKE ?))`;

function unreconciled(row: { status: RunStatus; error: string | null }): boolean {
  if (row.status !== "interrupted" && row.status !== "failed") return false;
  return (
    (row.status === "interrupted" && row.error === UNRECONCILED_RUN) ||
    (row.error?.endsWith(UPLOAD_UNSETTLED) ?? false)
  );
}

const BACKUP_COLUMNS = `id, run_id AS runId, job, target, bucket, object_key AS key, version_id AS versionId,
  size, sha256, compression, created_at AS createdAt, retention_mode AS retentionMode,
  retain_until AS retainUntil, status, files, manifest_key AS manifestKey,
  manifest_version_id AS manifestVersionId, tiers, keep_tag AS keepTag, parent_id AS parentId,
  coalesce(chain_id, id) AS chainId`;

/**
 * The runs this process started, as "catalog path#run id". A run is only
 * ours if it is in here: its recorded pid equal to ours is not enough, since
 * a new container (tini as PID 1, immutd as PID 7 on every start) or a
 * rebooted host hands the same pid to the next immutd. A run leaves it once
 * its end is recorded, so a daemon running for months does not keep one
 * entry per run it ever made.
 */
const startedHere = new Set<string>();

/** How many runs this process started whose end is not recorded yet (tests: nothing is kept per finished run). */
export function runsInProgressHere(): number {
  return startedHere.size;
}

export class Catalog {
  readonly path: string;
  readonly db: Database.Database;
  /** Why the catalog cannot be written (it was opened as a read-only copy); undefined when it can. */
  readonly readOnly: string | undefined;
  /** Problems worth a log line that do not stop immutd (an existing catalog readable by others). */
  readonly warnings: readonly string[];

  private constructor(
    path: string,
    db: Database.Database,
    prepared: { readOnly: string | undefined; warnings: string[] },
  ) {
    this.path = path;
    this.db = db;
    this.readOnly = prepared.readOnly;
    this.warnings = prepared.warnings;
    guard(db, (err) => catalogFailure(path, err, this.readOnly));
  }

  /**
   * Opens (creating if missing) the catalog at `path`. Throws CatalogError
   * (exit 78) for a catalog that cannot be used, naming it; never changes
   * the mode of anything it did not create.
   */
  static open(path: string): Catalog {
    const prepared = prepareCatalog(path);
    let db: Database.Database | undefined;
    try {
      if (prepared.readOnly === undefined) {
        db = new Database(path, { timeout: 10_000 });
        db.pragma("journal_mode = WAL");
        db.pragma("synchronous = FULL");
      } else {
        db = readOnlyCopy(path, prepared.readOnly);
      }
      db.pragma("foreign_keys = ON");
      // A damaged catalog is found here, in one clear line, and not by
      // whichever query first reads the damaged page. It reads the whole
      // file: 0.3-0.4 s for 100,000 backups (47 MiB) here, far less for the
      // few thousand a catalog usually holds.
      const check = String(db.pragma("quick_check", { simple: true }));
      if (check !== "ok") {
        const first = check.split("\n").find((l) => l !== "" && !l.startsWith("***"));
        throw new CatalogError(damaged(path, first ?? check));
      }
    } catch (err) {
      db?.close();
      const failure = catalogFailure(path, err, prepared.readOnly);
      if (failure instanceof CatalogError || failure instanceof LockHeldError) throw failure;
      throw new CatalogError(`cannot open catalog ${path}: ${describeError(err)}`, { cause: err });
    }
    const catalog = new Catalog(path, db, prepared);
    try {
      catalog.#migrate();
      // The copy of a read-only catalog is migrated in memory, then frozen:
      // writes fail (SQLITE_READONLY) instead of vanishing with the copy.
      if (prepared.readOnly !== undefined) db.pragma("query_only = ON");
    } catch (err) {
      db.close();
      throw err;
    }
    return catalog;
  }

  #migrate(): void {
    const version = this.db.pragma("user_version", { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new ConfigError(
        `catalog ${this.path} has schema version ${version}, newer than this immutd understands (${MIGRATIONS.length}); upgrade immutd`,
      );
    }
    if (version === MIGRATIONS.length) return;
    // A table rebuild (migration 3) must not cascade or check references while
    // the old table is dropped; the check runs once it is complete. The pragma
    // has no effect inside a transaction, so it is switched around them.
    this.db.pragma("foreign_keys = OFF");
    try {
      for (let v = version; v < MIGRATIONS.length; v++) {
        this.db.transaction(() => {
          this.db.exec(MIGRATIONS[v] as string);
          const broken = this.db.pragma("foreign_key_check") as unknown[];
          if (broken.length)
            throw new Error(`migration ${v + 1} left ${broken.length} broken references`);
          this.db.pragma(`user_version = ${v + 1}`);
        })();
      }
    } finally {
      this.db.pragma("foreign_keys = ON");
    }
  }

  close(): void {
    this.db.close();
  }

  /**
   * Records a run as started, and is the job's lock: a job that another live
   * process is running (a daemon, or `immutd backup`) cannot start twice. A
   * run left "running" by a process that is gone (a crash) is marked
   * interrupted here. Checked and written in one IMMEDIATE transaction.
   */
  startRun(r: { job: string; target: string; objectKey: string; startedAt: Date }): number {
    return this.db
      .transaction(() => {
        const open = this.db
          .prepare(`SELECT id, pid FROM runs WHERE job = ? AND status = 'running'`)
          .all(r.job) as { id: number; pid: number | null }[];
        for (const run of open) {
          if (this.#ours(run.id)) continue;
          if (run.pid !== null && run.pid !== process.pid && processAlive(run.pid)) {
            throw new LockHeldError(
              `job ${r.job} is already running (run ${run.id}, pid ${run.pid}); not starting it twice`,
            );
          }
          // Interrupted, not reconciled: src/daemon/recovery.ts still looks for a version at its key.
          this.#interrupt(run.id, UNRECONCILED_RUN);
        }
        const info = this.db
          .prepare(
            `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES (?, ?, ?, ?, 'running', ?)`,
          )
          .run(r.job, r.target, r.objectKey, r.startedAt.toISOString(), process.pid);
        const id = Number(info.lastInsertRowid);
        startedHere.add(`${this.path}#${id}`);
        return id;
      })
      .immediate();
  }

  /**
   * Runs left "running" by processes that no longer exist (crash, kill -9,
   * power loss): not started by this process, and recorded with no pid, a
   * pid that is gone, or our own pid (reused after a restart).
   */
  abandonedRuns(): RunRow[] {
    const rows = this.db
      .prepare(`SELECT ${RUN_COLUMNS}, pid FROM runs WHERE status = 'running'`)
      .all() as (RunRow & { pid: number | null })[];
    return rows.filter((r) => this.#dead(r.id, r.pid));
  }

  /**
   * Runs of dead processes that crash recovery (src/daemon/recovery.ts) has not
   * reconciled yet: abandoned "running" rows, and rows that startRun marked
   * interrupted (UNRECONCILED_RUN) when it found them in its way. Optionally
   * only those of one job.
   */
  deadRuns(job?: string): RunRow[] {
    const unreconciled = this.db
      .prepare(
        `SELECT ${RUN_COLUMNS} FROM runs WHERE ${UNRECONCILED_SQL} ${job !== undefined ? "AND job = ?" : ""}`,
      )
      .all(
        UNRECONCILED_RUN,
        `%${UPLOAD_UNSETTLED}`,
        ...(job !== undefined ? [job] : []),
      ) as RunRow[];
    const abandoned = this.abandonedRuns().filter((r) => job === undefined || r.job === job);
    return [...abandoned, ...unreconciled].sort((a, b) => a.id - b.id);
  }

  /** Whether the run is one deadRuns() would return right now (re-checked before acting on it). */
  runIsDead(runId: number): boolean {
    const row = this.db.prepare(`SELECT status, pid, error FROM runs WHERE id = ?`).get(runId) as
      | { status: RunStatus; pid: number | null; error: string | null }
      | undefined;
    if (!row) return false;
    if (row.status === "interrupted" || row.status === "failed") return unreconciled(row);
    return row.status === "running" && this.#dead(runId, row.pid);
  }

  /** Ends a dead run after recovery: interrupted, with what recovery found. Only a run still dead and unreconciled. */
  closeDeadRun(runId: number, reason: string): void {
    const row = this.db.prepare(`SELECT status, error FROM runs WHERE id = ?`).get(runId) as
      | { status: RunStatus; error: string | null }
      | undefined;
    if (row?.error?.endsWith(UPLOAD_UNSETTLED) && row.status !== "running") {
      // A run that ended on its own keeps its status and error; what recovery found at its key is added.
      const own = row.error.slice(0, -UPLOAD_UNSETTLED.length);
      const at = reason.indexOf("; ");
      const found = at >= 0 ? reason.slice(at) : ": no version there";
      this.db
        .prepare(`UPDATE runs SET error = ? WHERE id = ? AND error = ?`)
        .run(`${own}; crash recovery checked its key${found}`, runId, row.error);
      return;
    }
    this.db
      .prepare(
        `UPDATE runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?), error = ?
         WHERE id = ? AND (status = 'running' OR (status = 'interrupted' AND error = ?))`,
      )
      .run(new Date().toISOString(), reason, runId, UNRECONCILED_RUN);
  }

  /**
   * Who owns an object key, for deciding whether a multipart upload at it may
   * be aborted. A run's row (with its key) is written before its upload is
   * created, so every upload of this catalog's runs has a row by the time it
   * can be listed. live: a run at the key is running in this process or in a
   * live one. dead: runs at the key exist and all have finished or died.
   * unknown: no run of this catalog has used the key.
   */
  keyOwner(key: string): { state: "live" | "dead" | "unknown"; runId?: number } {
    const rows = this.db
      .prepare(`SELECT id, status, pid FROM runs WHERE object_key = ? ORDER BY id`)
      .all(key) as { id: number; status: RunStatus; pid: number | null }[];
    const last = rows.at(-1);
    if (!last) return { state: "unknown" };
    const live = rows.find((r) => r.status === "running" && !this.#dead(r.id, r.pid));
    return live ? { state: "live", runId: live.id } : { state: "dead", runId: last.id };
  }

  /** A "running" row is dead unless this process started it or its pid is another live process. */
  #dead(runId: number, pid: number | null): boolean {
    return !this.#ours(runId) && (pid === null || pid === process.pid || !processAlive(pid));
  }

  #ours(runId: number): boolean {
    return startedHere.has(`${this.path}#${runId}`);
  }

  #interrupt(runId: number, reason: string): void {
    this.db
      .prepare(
        `UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ? AND status = 'running'`,
      )
      .run(new Date().toISOString(), reason, runId);
    startedHere.delete(`${this.path}#${runId}`);
  }

  /** Each job's latest run and latest successful run, for status and catch-up. */
  jobSummary(job: string): { lastRun: RunRow | undefined; lastSuccess: RunRow | undefined } {
    const cols = `id, job, target, object_key AS objectKey, upload_id AS uploadId, started_at AS startedAt,
      finished_at AS finishedAt, status, bytes, files, warnings, error`;
    const lastRun = this.db
      .prepare(`SELECT ${cols} FROM runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT 1`)
      .get(job) as RunRow | undefined;
    const lastSuccess = this.db
      .prepare(
        `SELECT ${cols} FROM runs WHERE job = ? AND status = 'succeeded' ORDER BY started_at DESC, id DESC LIMIT 1`,
      )
      .get(job) as RunRow | undefined;
    return { lastRun, lastSuccess };
  }

  /**
   * Each job's lock horizon: the retain-until of its newest backup that was
   * good (ok, or expired: its lock has run out), the earliest if several share
   * that time. For /metrics, whoever made the backup or extended its lock.
   */
  lockHorizons(): { job: string; retainUntil: string }[] {
    return this.db
      .prepare(
        `SELECT job, MIN(retain_until) AS retainUntil FROM backups b
         WHERE status IN ('ok', 'expired') AND retain_until IS NOT NULL
           AND created_at = (SELECT MAX(created_at) FROM backups
                             WHERE job = b.job AND status IN ('ok', 'expired'))
         GROUP BY job`,
      )
      .all() as { job: string; retainUntil: string }[];
  }

  /**
   * For /metrics, in one query: per named job its last finished run (status,
   * start, duration, bytes, files, warnings), the start of its last success
   * and whether a live process (this one, a daemon or `immutd backup`) runs it
   * now. Whoever ran the job: the catalog is the record, not the process that
   * scrapes it. Walks the (job, started_at) index backwards per job, a few rows
   * each: a live run is among a job's newest, since startRun lets no run of the
   * job start while another live one runs (older "running" rows are dead ones
   * left by a crash; a scan of all of them took 10 ms per job at 20,000 runs).
   */
  jobStates(jobs: readonly string[]): JobState[] {
    const rows = this.db
      .prepare(
        `SELECT j.value AS job, r.status, r.started_at AS startedAt, r.finished_at AS finishedAt,
           r.bytes, r.files, r.warnings,
           (SELECT started_at FROM runs WHERE job = j.value AND status = 'succeeded'
              ORDER BY started_at DESC, id DESC LIMIT 1) AS lastSuccess,
           (SELECT json_group_array(json_array(id, pid)) FROM
              (SELECT id, pid, status FROM runs WHERE job = j.value
               ORDER BY started_at DESC, id DESC LIMIT 8)
              WHERE status = 'running') AS open
         FROM json_each(?) j
         LEFT JOIN runs r ON r.id = (SELECT id FROM runs WHERE job = j.value AND status != 'running'
                                     ORDER BY started_at DESC, id DESC LIMIT 1)`,
      )
      .all(JSON.stringify(jobs)) as (Omit<JobState, "lastRun" | "running"> & {
      status: Exclude<RunStatus, "running"> | null;
      startedAt: string | null;
      finishedAt: string | null;
      bytes: number | null;
      files: number | null;
      warnings: number | null;
      open: string;
    })[];
    return rows.map((r) => ({
      job: r.job,
      lastRun:
        r.status && r.startedAt
          ? {
              status: r.status,
              startedAt: r.startedAt,
              durationMs: r.finishedAt ? Date.parse(r.finishedAt) - Date.parse(r.startedAt) : 0,
              bytes: r.bytes ?? 0,
              files: r.files ?? 0,
              warnings: r.warnings ?? 0,
            }
          : null,
      lastSuccess: r.lastSuccess,
      running: (JSON.parse(r.open) as [number, number | null][]).some(
        ([id, pid]) => !this.#dead(id, pid),
      ),
    }));
  }

  /** Whether the catalog can be written now (for /healthz). */
  writable(): boolean {
    try {
      this.db.prepare(`UPDATE runs SET id = id WHERE 0`).run();
      this.db.pragma("quick_check(1)");
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Records that a run is an incremental on `parentId`, before its upload: a
   * version crash recovery finds at its key is then recorded with that parent
   * (an incremental's archive alone is not the tree).
   */
  setRunParent(runId: number, parentId: number): void {
    this.db
      .prepare(`INSERT OR REPLACE INTO run_parents (run_id, parent_id) VALUES (?, ?)`)
      .run(runId, parentId);
  }

  /** The parent setRunParent recorded, or null for a full backup's run. */
  runParent(runId: number): number | null {
    const row = this.db
      .prepare(`SELECT parent_id AS p FROM run_parents WHERE run_id = ?`)
      .get(runId) as { p: number | null } | undefined;
    return row?.p ?? null;
  }

  setUploadId(runId: number, uploadId: string): void {
    this.db.prepare(`UPDATE runs SET upload_id = ? WHERE id = ?`).run(uploadId, runId);
  }

  addWarnings(runId: number, warnings: readonly { path: string; message: string }[]): void {
    if (warnings.length === 0) return;
    const stored = this.db
      .prepare(`SELECT count(*) AS n FROM run_warnings WHERE run_id = ?`)
      .get(runId) as {
      n: number;
    };
    const room = Math.max(0, MAX_STORED_WARNINGS - stored.n);
    const insert = this.db.prepare(
      `INSERT INTO run_warnings (run_id, path, message) VALUES (?, ?, ?)`,
    );
    try {
      this.db.transaction(() => {
        for (const w of warnings.slice(0, room)) insert.run(runId, w.path, w.message);
      })();
    } catch (err) {
      // On a full disk the details are given up so that finishRun, which
      // records the outcome and the complete count, still gets the room.
      if (sqliteCode(err) !== "SQLITE_FULL") throw err;
    }
  }

  finishRun(
    runId: number,
    r: {
      status: Exclude<RunStatus, "running">;
      bytes: number;
      files: number;
      warnings: number;
      error?: string;
    },
  ): void {
    const record = () =>
      this.db
        .prepare(
          `UPDATE runs SET status = ?, finished_at = ?, bytes = ?, files = ?, warnings = ?, error = ? WHERE id = ?`,
        )
        .run(
          r.status,
          new Date().toISOString(),
          r.bytes,
          r.files,
          r.warnings,
          r.error ?? null,
          runId,
        );
    try {
      this.#recordEnd(runId, record, r);
    } finally {
      // Not ours any more, recorded or not: a row the catalog could not close reads
      // as dead (our pid), so this daemon's next verify or backup reconciles it
      // instead of treating it as a live run of its own for as long as it runs.
      startedHere.delete(`${this.path}#${runId}`);
    }
  }

  #recordEnd(runId: number, record: () => void, r: { status: string; error?: string }): void {
    try {
      record();
    } catch (err) {
      if (sqliteCode(err) !== "SQLITE_FULL") throw err;
      // A run's outcome is worth one more try on a full disk: a TRUNCATE
      // checkpoint copies the WAL into the database file (which already has
      // those pages) and hands the WAL's blocks back, usually room enough for
      // this one-page update.
      try {
        this.db.pragma("wal_checkpoint(TRUNCATE)");
        record();
      } catch {
        const unrecorded = `it shows as running until the next backup of the job, verify (also the daemon's) or daemon start reconciles it`;
        // When the run failed because the catalog is full, its error already says so.
        throw new CatalogError(
          r.error?.startsWith(`catalog ${this.path}: `)
            ? `${r.error}; nor could run ${runId} be recorded as ${r.status}: ${unrecorded}`
            : `${describeError(err)}: run ${runId} ended ${r.status}${r.error ? ` (${r.error})` : ""} but the catalog could not record that; ${unrecorded}`,
          { cause: err },
        );
      }
    }
  }

  recordBackup(b: NewBackup): number {
    try {
      return Number(this.#insertBackup(b, "").lastInsertRowid);
    } catch (err) {
      if (!(err instanceof CatalogError)) throw err;
      throw new CatalogError(
        `${err.message}; job ${b.job}'s backup s3://${b.bucket}/${b.key} version ${b.versionId} is in the bucket but not in the catalog`,
        { cause: err.cause },
      );
    }
  }

  /**
   * Records a version crash recovery found, unless the catalog already holds
   * it (another process recovered it first, or the run recorded it after all).
   * Returns the new row's id, or undefined if it was already there.
   */
  recordRecovered(b: NewBackup): number | undefined {
    const info = this.#insertBackup(b, "ON CONFLICT (bucket, object_key, version_id) DO NOTHING");
    return info.changes ? Number(info.lastInsertRowid) : undefined;
  }

  /** How many backups and runs the catalog holds: `catalog rebuild` fills only an empty one unless told to merge. */
  counts(): { backups: number; runs: number } {
    const n = (table: string) =>
      (this.db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    return { backups: n("backups"), runs: n("runs") };
  }

  /**
   * Records backups rebuilt from the bucket, all in one transaction (a failure
   * leaves the catalog as it was). A version the catalog already holds is left
   * exactly as recorded: rows are added, never changed. Returns how many were added.
   */
  importBackups(rows: readonly ImportedBackup[]): number {
    const manifest = this.db.prepare(
      `UPDATE backups SET manifest_key = ?, manifest_version_id = ? WHERE id = ?`,
    );
    return this.db
      .transaction(() => {
        let added = 0;
        for (const b of rows) {
          const info = this.#insertBackup(
            { ...b, runId: null },
            "ON CONFLICT (bucket, object_key, version_id) DO NOTHING",
          );
          if (!info.changes) continue;
          manifest.run(b.manifestKey, b.manifestVersionId, Number(info.lastInsertRowid));
          added++;
        }
        // Chains: each incremental's parent, once every row is in (a parent is found
        // by its bucket, key and version; one not imported leaves the link NULL
        // and the chain broken, which restore and verify report).
        const parentOf = this.db.prepare(
          `SELECT id FROM backups WHERE bucket = ? AND object_key = ? AND version_id = ?`,
        );
        const link = this.db.prepare(
          `UPDATE backups SET parent_id = ?, chain_id = (SELECT coalesce(chain_id, id) FROM backups WHERE id = ?)
           WHERE bucket = ? AND object_key = ? AND version_id = ? AND parent_id IS NULL`,
        );
        // Oldest first, so a parent's own chain is linked before its children take it.
        const byAge = [...rows].sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime());
        for (const b of byAge) {
          if (!b.parent) continue;
          const p = parentOf.get(b.bucket, b.parent.key, b.parent.versionId) as
            | { id: number }
            | undefined;
          if (p) link.run(p.id, p.id, b.bucket, b.key, b.versionId);
        }
        return added;
      })
      .immediate();
  }

  /** Deep verify settled an unverified backup: it downloaded, decrypted and read to its end; this is its SHA-256. */
  settleUnverified(id: number, sha256: string): void {
    this.db
      .prepare(
        `UPDATE backups SET sha256 = ?, status = 'ok' WHERE id = ? AND status = 'unverified'`,
      )
      .run(sha256, id);
  }

  #insertBackup(
    b: Omit<NewBackup, "runId"> & { runId: number | null },
    onConflict: string,
  ): Database.RunResult {
    return this.db
      .prepare(
        `INSERT INTO backups (run_id, job, target, bucket, object_key, version_id, size, sha256, compression,
           sse_key, key_derivation, created_at, retention_mode, retain_until, status, files, parent_id,
           chain_id)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
           (SELECT coalesce(chain_id, id) FROM backups WHERE id = ?)) ${onConflict}`,
      )
      .run(
        b.runId,
        b.job,
        b.target,
        b.bucket,
        b.key,
        b.versionId,
        b.size,
        b.sha256,
        b.compression,
        b.sseKey,
        b.keyDerivation,
        b.createdAt.toISOString(),
        b.retentionMode,
        b.retainUntil?.toISOString() ?? null,
        b.status,
        b.files,
        b.parentId ?? null,
        b.parentId ?? null,
      );
  }

  run(id: number): RunRow | undefined {
    return this.db
      .prepare(
        `SELECT id, job, target, object_key AS objectKey, upload_id AS uploadId, started_at AS startedAt,
           finished_at AS finishedAt, status, bytes, files, warnings, error FROM runs WHERE id = ?`,
      )
      .get(id) as RunRow | undefined;
  }

  runWarnings(runId: number): { path: string; message: string }[] {
    return this.db
      .prepare(`SELECT path, message FROM run_warnings WHERE run_id = ? ORDER BY rowid`)
      .all(runId) as { path: string; message: string }[];
  }

  listBackups(filter: { job?: string } = {}): BackupRow[] {
    const where = filter.job !== undefined ? "WHERE job = ?" : "";
    const args = filter.job !== undefined ? [filter.job] : [];
    return this.db
      .prepare(`SELECT ${BACKUP_COLUMNS} FROM backups ${where} ORDER BY created_at, id`)
      .all(...args) as BackupRow[];
  }

  backup(id: number): BackupRow | undefined {
    return this.db.prepare(`SELECT ${BACKUP_COLUMNS} FROM backups WHERE id = ?`).get(id) as
      | BackupRow
      | undefined;
  }

  /** The SSE-C key of one backup: only for the code that sends it to the server. */
  backupKey(id: number): Buffer | undefined {
    const row = this.db.prepare(`SELECT sse_key AS k FROM backups WHERE id = ?`).get(id) as
      | { k: Buffer }
      | undefined;
    return row?.k;
  }

  /**
   * How one backup is encrypted, as its key-derivation id (src/pipeline/cipher.ts
   * schemeOf: SSE-C, age, or both); undefined for no such backup.
   */
  backupKeyDerivation(id: number): string | undefined {
    const row = this.db.prepare(`SELECT key_derivation AS d FROM backups WHERE id = ?`).get(id) as
      | { d: string }
      | undefined;
    return row?.d;
  }

  // Verification and lock extension (src/flows/verify.ts). Statuses only move as
  // verify observes the server: ok -> missing/corrupt/expired, missing -> ok if
  // the version is back; nothing here deletes a row.

  setBackupStatus(id: number, status: BackupStatus): void {
    this.db.prepare(`UPDATE backups SET status = ? WHERE id = ?`).run(status, id);
  }

  /** Records the manifest written beside a backup's archive (src/repo/manifest.ts). */
  setBackupManifest(id: number, key: string, versionId: string | null): void {
    this.db
      .prepare(`UPDATE backups SET manifest_key = ?, manifest_version_id = ? WHERE id = ?`)
      .run(key, versionId, id);
  }

  /**
   * Records the retention a new backup's lock ended with, and whether it is as
   * configured ("ok") or not ("unlocked"): the backup run's last word on its
   * own row, read back from the server.
   */
  setBackupLock(
    id: number,
    lock: { mode: RetentionMode; retainUntil: Date } | undefined,
    status: "ok" | "unlocked",
  ): void {
    this.db
      .prepare(`UPDATE backups SET retention_mode = ?, retain_until = ?, status = ? WHERE id = ?`)
      .run(lock?.mode ?? null, lock?.retainUntil.toISOString() ?? null, status, id);
  }

  /** Records the tiers a backup stands for and the keep tag set on it (null: not set); a promotion records them again. */
  setBackupTiers(id: number, tiers: readonly string[], keepTag: string | null): void {
    this.db
      .prepare(`UPDATE backups SET tiers = ?, keep_tag = ? WHERE id = ?`)
      .run(tiers.join(","), keepTag, id);
  }

  /** Marks good backups whose retain-until is at or before `now` as expired; returns them as they were. */
  markExpired(now: Date, job?: string): BackupRow[] {
    return this.db.transaction(() => {
      const rows = this.db
        .prepare(
          `SELECT ${BACKUP_COLUMNS} FROM backups
           WHERE status = 'ok' AND retain_until IS NOT NULL AND retain_until <= ? ${job !== undefined ? "AND job = ?" : ""}
           ORDER BY created_at, id`,
        )
        .all(now.toISOString(), ...(job !== undefined ? [job] : [])) as BackupRow[];
      const mark = this.db.prepare(`UPDATE backups SET status = 'expired' WHERE id = ?`);
      for (const r of rows) mark.run(r.id);
      return rows;
    })();
  }

  /** Adopts a later retain-until the server reports (a retention someone else extended). Never moves it earlier. */
  adoptRetainUntil(id: number, retainUntil: Date, mode: RetentionMode): void {
    this.db
      .prepare(
        `UPDATE backups SET retain_until = ?, retention_mode = ?
         WHERE id = ? AND (retain_until IS NULL OR retain_until < ?)`,
      )
      .run(retainUntil.toISOString(), mode, id, retainUntil.toISOString());
  }

  /** Records one lock extension made by immutd and the backup's new retain-until, together. */
  recordLockExtension(e: {
    backupId: number;
    from: Date | null;
    to: Date;
    mode: RetentionMode;
    at: Date;
  }): void {
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO lock_extensions (backup_id, old_retain_until, new_retain_until, mode, extended_at)
           VALUES (?, ?, ?, ?, ?)`,
        )
        .run(
          e.backupId,
          e.from?.toISOString() ?? null,
          e.to.toISOString(),
          e.mode,
          e.at.toISOString(),
        );
      this.adoptRetainUntil(e.backupId, e.to, e.mode);
    })();
  }

  lockExtensions(backupId?: number): LockExtensionRow[] {
    return this.db
      .prepare(
        `SELECT id, backup_id AS backupId, old_retain_until AS oldRetainUntil,
           new_retain_until AS newRetainUntil, mode, extended_at AS extendedAt
         FROM lock_extensions ${backupId !== undefined ? "WHERE backup_id = ?" : ""} ORDER BY extended_at, id`,
      )
      .all(...(backupId !== undefined ? [backupId] : [])) as LockExtensionRow[];
  }

  recordVerifyRun(r: {
    startedAt: Date;
    finishedAt: Date;
    deep: boolean;
    job: string | null;
    checked: number;
    findings: number;
    report: unknown;
  }): number {
    const info = this.db
      .prepare(
        `INSERT INTO verify_runs (started_at, finished_at, deep, job, checked, findings, report)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        r.startedAt.toISOString(),
        r.finishedAt.toISOString(),
        r.deep ? 1 : 0,
        r.job,
        r.checked,
        r.findings,
        JSON.stringify(r.report),
      );
    return Number(info.lastInsertRowid);
  }

  /** The latest verify run (of the deep kind, if asked), with its report parsed. */
  lastVerifyRun(opts: { deep?: boolean } = {}): VerifyRunRow | undefined {
    const row = this.db
      .prepare(
        `SELECT ${VERIFY_COLUMNS} FROM verify_runs ${opts.deep ? "WHERE deep = 1" : ""}
         ORDER BY started_at DESC, id DESC LIMIT 1`,
      )
      .get() as StoredVerifyRun | undefined;
    return row ? verifyRun(row) : undefined;
  }

  /** For /metrics, in one query: the latest verify run of each kind (deep or not), newest first. */
  lastVerifyRuns(): VerifyRunRow[] {
    const latest = (deep: number) =>
      `SELECT id FROM verify_runs WHERE deep = ${deep} ORDER BY started_at DESC, id DESC LIMIT 1`;
    return (
      this.db
        .prepare(
          `SELECT ${VERIFY_COLUMNS} FROM verify_runs
           WHERE id IN (${latest(0)}) OR id IN (${latest(1)}) ORDER BY started_at DESC, id DESC`,
        )
        .all() as StoredVerifyRun[]
    ).map(verifyRun);
  }
}

/** The kind of each finding a recorded verify run's report holds (src/flows/verify.ts records them). */
export function findingKinds(run: VerifyRunRow): string[] {
  const report = run.report as { findings?: { kind?: unknown }[] } | null;
  return (report?.findings ?? []).map((f) => String(f.kind ?? "unknown"));
}

const VERIFY_COLUMNS = `id, started_at AS startedAt, finished_at AS finishedAt, deep, job, checked, findings, report`;
type StoredVerifyRun = Omit<VerifyRunRow, "deep" | "report"> & { deep: number; report: string };
function verifyRun(row: StoredVerifyRun): VerifyRunRow {
  return { ...row, deep: row.deep === 1, report: JSON.parse(row.report) as unknown };
}

/** A job as /metrics shows it (Catalog.jobStates). */
export interface JobState {
  job: string;
  lastRun: {
    status: Exclude<RunStatus, "running">;
    startedAt: string;
    durationMs: number;
    bytes: number;
    files: number;
    warnings: number;
  } | null;
  lastSuccess: string | null;
  running: boolean;
}

export interface LockExtensionRow {
  id: number;
  backupId: number;
  oldRetainUntil: string | null;
  newRetainUntil: string;
  mode: RetentionMode;
  extendedAt: string;
}

export interface VerifyRunRow {
  id: number;
  startedAt: string;
  finishedAt: string;
  deep: boolean;
  job: string | null;
  checked: number;
  findings: number;
  report: unknown;
}

/** True if a process with this pid exists (EPERM: it exists but belongs to another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Filesystems whose files are not storage (statfs f_type, linux/magic.h). A
 * catalog there is refused before SQLite touches it: a /proc file can spin
 * SQLite's reads and locks without end.
 */
const PSEUDO_FILESYSTEMS = new Map<number, string>([
  [0x9fa0, "proc"],
  [0x62656572, "sysfs"],
  [0x1cd1, "devpts"],
  [0x27e0eb, "cgroup"],
  [0x63677270, "cgroup2"],
  [0x64626720, "debugfs"],
  [0x74726163, "tracefs"],
  [0x73636673, "securityfs"],
  [0x62656570, "configfs"],
  [0x6165676c, "pstore"],
  [0xcafe4a11, "bpf"],
  [0xde5e81e4, "efivarfs"],
  [0x42494e4d, "binfmt_misc"],
  [0x65735543, "fusectl"],
]);

/**
 * Checks the catalog's path and creates what is missing: the directory
 * (0700, with its missing parents) and an empty file (0600). Never changes the
 * mode of what exists. Returns why the catalog cannot be written (undefined if
 * it can) and warnings; with `write`, a catalog that cannot be written is an
 * error (the daemon, which takes a lock file beside it first).
 */
export function prepareCatalog(
  path: string,
  opts: { write?: boolean } = {},
): { readOnly: string | undefined; warnings: string[] } {
  const dir = dirname(path);
  const code = (err: unknown) => (err as NodeJS.ErrnoException).code ?? describeError(err);
  let st = statOrMissing(path, (err) => {
    if (code(err) === "ENOTDIR")
      return `catalog ${path}: ${nearestNonDirectory(dir)} is not a directory`;
    return `cannot reach catalog ${path}: ${code(err)}`;
  });
  if (!st) {
    const link = lstatOrMissing(path);
    if (link?.isSymbolicLink()) {
      throw new CatalogError(
        `catalog ${path} is a symlink to ${readlinkSync(path)}, which does not exist`,
      );
    }
  } else if (st.isDirectory()) {
    throw new CatalogError(
      `catalog ${path} is a directory; catalog: names the database file, e.g. ${join(path, "catalog.db")}`,
    );
  } else if (!st.isFile()) {
    throw new CatalogError(
      `catalog ${path} is a ${fileKind(st)}; it must be a regular file (a SQLite database) or not exist yet`,
    );
  }
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new CatalogError(`cannot create catalog directory ${dir}: ${code(err)}`, { cause: err });
  }
  const d = statSync(dir);
  if (d.mode & 0o002 && !(d.mode & 0o1000)) {
    throw new CatalogError(
      `catalog directory ${dir} is world-writable; the catalog holds encryption keys`,
    );
  }
  const fs = PSEUDO_FILESYSTEMS.get(Number(statfsSync(dir).type));
  if (fs) {
    throw new CatalogError(
      `catalog ${path} is on a ${fs} filesystem, which cannot hold a database; put it on a disk, e.g. /var/lib/immutd/catalog.db`,
    );
  }
  if (!st) {
    try {
      closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
    } catch (err) {
      if (code(err) !== "EEXIST")
        throw new CatalogError(`cannot create catalog ${path}: ${code(err)}`, { cause: err });
    }
    st = statSync(path);
  }
  try {
    accessSync(path, constants.R_OK);
  } catch (err) {
    throw new CatalogError(
      `cannot read catalog ${path}: ${code(err)}; run immutd as its owner (uid ${st.uid})`,
      { cause: err },
    );
  }
  // SQLite writes the database file and creates -wal, -shm and -journal beside it.
  const notWritable = (p: string, what: string): string | undefined => {
    try {
      accessSync(p, constants.W_OK);
      return undefined;
    } catch (err) {
      return `${what} is not writable: ${code(err)}`;
    }
  };
  const readOnly = notWritable(path, path) ?? notWritable(dir, `its directory ${dir}`);
  if (readOnly !== undefined && opts.write) {
    throw new CatalogError(`catalog ${path} cannot be written (${readOnly})`);
  }
  const warnings: string[] = [];
  for (const f of [path, `${path}-wal`, `${path}-shm`]) {
    const fst = f === path ? st : statOrMissing(f, () => undefined);
    if (fst && fst.mode & 0o077) {
      warnings.push(
        `catalog file ${f} has mode ${(fst.mode & 0o777).toString(8).padStart(4, "0")}, open to other users, and holds encryption keys; immutd leaves modes it did not set alone: chmod 600 ${f}`,
      );
    }
  }
  return { readOnly, warnings };
}

/** stat(2), undefined for a path that does not exist; any other failure is a CatalogError with `why`'s message. */
function statOrMissing(path: string, why: (err: unknown) => string | undefined): Stats | undefined {
  try {
    return statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    const message = why(err);
    if (message === undefined) return undefined;
    throw new CatalogError(message, { cause: err });
  }
}

function lstatOrMissing(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** The first component of `dir` that exists but is not a directory (for ENOTDIR). */
function nearestNonDirectory(dir: string): string {
  for (let d = dir; d !== dirname(d); d = dirname(d)) {
    const st = lstatOrMissing(d);
    if (st && !st.isDirectory()) return d;
  }
  return dir;
}

/**
 * A read-only catalog as an in-memory copy. SQLite cannot open a WAL database
 * read-only without creating -shm beside it; the copy needs nothing from the
 * directory. The header is switched to rollback mode (bytes 18-19), which an
 * in-memory database needs. Changes still in a -wal file would be missing
 * from the copy, so such a catalog is refused, saying what to do.
 */
function readOnlyCopy(path: string, why: string): Database.Database {
  const wal = statOrMissing(`${path}-wal`, () => undefined);
  if (wal && wal.size > 0) {
    throw new CatalogError(
      `catalog ${path} cannot be written (${why}) and its last changes are still in ${path}-wal, which SQLite only merges with write access: copy ${dirname(path)} somewhere writable and point catalog: there`,
    );
  }
  const image = readFileSync(path);
  if (image.length >= 20 && image.subarray(0, 16).toString("latin1") === "SQLite format 3\0") {
    image[18] = 1;
    image[19] = 1;
  }
  return new Database(image);
}

/** The SQLite result code behind a failure (also when a CatalogError wraps it). */
function sqliteCode(err: unknown): string | undefined {
  const e = err instanceof CatalogError ? err.cause : err;
  return e instanceof Database.SqliteError ? e.code : undefined;
}

function damaged(path: string, detail: string): string {
  return `catalog ${path} is damaged (SQLite: ${detail}). immutd cannot rebuild it yet: restore it from a copy, or move it aside (a new, empty one is then created) and restore backups with immutd restore JOB --from-bucket, which does not need the catalog`;
}

/**
 * What a SQLite failure on the catalog means for the operator, as a
 * CatalogError (LockHeldError for a catalog another process keeps locked).
 * Errors that are not SQLite's, and SQLite errors that are bugs of immutd
 * (constraints, SQL errors), are returned unchanged.
 */
function catalogFailure(path: string, err: unknown, readOnly: string | undefined): unknown {
  if (!(err instanceof Database.SqliteError)) return err;
  const primary = /^SQLITE_[A-Z]+/.exec(err.code)?.[0];
  const opts = { cause: err };
  switch (primary) {
    case "SQLITE_CORRUPT":
    case "SQLITE_NOTADB":
      return new CatalogError(damaged(path, err.message), opts);
    case "SQLITE_FULL":
      return new CatalogError(
        `catalog ${path}: the disk is full (SQLite: ${err.message}); free space on the filesystem of ${dirname(path)}`,
        opts,
      );
    case "SQLITE_READONLY":
      return new CatalogError(
        `catalog ${path} is read-only${readOnly ? ` (${readOnly})` : ""}: list, status and restore can read it, but this command records to it; run it where the catalog is writable`,
        opts,
      );
    case "SQLITE_BUSY":
    case "SQLITE_LOCKED":
      return new LockHeldError(
        `catalog ${path} stayed locked by another process for 10 s (SQLite: ${err.message}); try again`,
        opts,
      );
    case "SQLITE_IOERR":
    case "SQLITE_CANTOPEN":
    case "SQLITE_PERM":
    case "SQLITE_NOLFS":
    case "SQLITE_PROTOCOL":
      return new CatalogError(
        `catalog ${path}: ${err.message} (${err.code}); check the disk, the file's permissions and the kernel log`,
        opts,
      );
    default:
      return err;
  }
}

/**
 * Routes every SQLite failure of this connection through `explain`, whatever
 * the query: the methods of Catalog, and any added later, get one clear error
 * naming the catalog. better-sqlite3 throws from prepare, from a statement's
 * run/get/all/iterate, from transactions (COMMIT: a full disk), pragma and exec.
 */
function guard(db: Database.Database, explain: (err: unknown) => unknown): void {
  const wrap =
    <A extends unknown[], R>(fn: (...args: A) => R) =>
    (...args: A): R => {
      try {
        return fn(...args);
      } catch (err) {
        throw explain(err);
      }
    };
  const prepare = db.prepare.bind(db);
  db.prepare = ((source: string) => {
    const stmt = wrap(prepare)(source);
    stmt.run = wrap(stmt.run.bind(stmt));
    stmt.get = wrap(stmt.get.bind(stmt));
    stmt.all = wrap(stmt.all.bind(stmt));
    stmt.iterate = wrap(stmt.iterate.bind(stmt));
    return stmt;
  }) as typeof db.prepare;
  const transaction = db.transaction.bind(db);
  db.transaction = ((fn: (...args: unknown[]) => unknown) => {
    const t = transaction(fn);
    return Object.assign(wrap(t), {
      default: wrap(t.default),
      deferred: wrap(t.deferred),
      immediate: wrap(t.immediate),
      exclusive: wrap(t.exclusive),
    });
  }) as typeof db.transaction;
  db.pragma = wrap(db.pragma.bind(db)) as typeof db.pragma;
  db.exec = wrap(db.exec.bind(db));
}
