/**
 * The local catalog (SQLite through better-sqlite3): every run attempt, and one
 * row per stored backup version with its version ID, SHA-256 and SSE-C key.
 *
 * It holds key material, so the file (and its -wal/-shm companions, which SQLite
 * creates with the database file's mode) is created 0600 in a directory that is
 * not world-writable. WAL mode with synchronous=FULL: a backup row, once written,
 * survives a crash or power loss. Migrations are keyed by PRAGMA user_version.
 */
import { chmodSync, closeSync, constants, mkdirSync, openSync, statSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import type { Compression, RetentionMode } from "./config.js";
import { ConfigError, LockHeldError } from "./errors.js";

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
}

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
];

const BACKUP_COLUMNS = `id, run_id AS runId, job, target, bucket, object_key AS key, version_id AS versionId,
  size, sha256, compression, created_at AS createdAt, retention_mode AS retentionMode,
  retain_until AS retainUntil, status, files`;

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

  private constructor(path: string, db: Database.Database) {
    this.path = path;
    this.db = db;
  }

  static open(path: string): Catalog {
    prepareFile(path);
    let db: Database.Database;
    try {
      db = new Database(path, { timeout: 10_000 });
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = FULL");
      db.pragma("foreign_keys = ON");
    } catch (err) {
      throw new ConfigError(`cannot open catalog ${path}: ${(err as Error).message}`);
    }
    const catalog = new Catalog(path, db);
    catalog.#migrate();
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
          this.#interrupt(run.id, "the process running it ended without finishing it");
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
      .prepare(
        `SELECT id, job, target, object_key AS objectKey, upload_id AS uploadId, started_at AS startedAt,
           finished_at AS finishedAt, status, bytes, files, warnings, error, pid FROM runs WHERE status = 'running'`,
      )
      .all() as (RunRow & { pid: number | null })[];
    return rows.filter(
      (r) => !this.#ours(r.id) && (r.pid === null || r.pid === process.pid || !processAlive(r.pid)),
    );
  }

  #ours(runId: number): boolean {
    return startedHere.has(`${this.path}#${runId}`);
  }

  markInterrupted(runId: number, reason: string): void {
    this.#interrupt(runId, reason);
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
    this.db.transaction(() => {
      for (const w of warnings.slice(0, room)) insert.run(runId, w.path, w.message);
    })();
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
    startedHere.delete(`${this.path}#${runId}`); // only once recorded: until then the row is still ours
  }

  recordBackup(b: NewBackup): number {
    const info = this.db
      .prepare(
        `INSERT INTO backups (run_id, job, target, bucket, object_key, version_id, size, sha256, compression,
           sse_key, key_derivation, created_at, retention_mode, retain_until, status, files)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
      );
    return Number(info.lastInsertRowid);
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

  // Verification and lock extension (src/verify.ts). Statuses only move as
  // verify observes the server: ok -> missing/corrupt/expired, missing -> ok if
  // the version is back; nothing here deletes a row.

  setBackupStatus(id: number, status: BackupStatus): void {
    this.db.prepare(`UPDATE backups SET status = ? WHERE id = ?`).run(status, id);
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
        `SELECT id, started_at AS startedAt, finished_at AS finishedAt, deep, job, checked, findings, report
         FROM verify_runs ${opts.deep ? "WHERE deep = 1" : ""} ORDER BY started_at DESC, id DESC LIMIT 1`,
      )
      .get() as
      | (Omit<VerifyRunRow, "deep" | "report"> & { deep: number; report: string })
      | undefined;
    return row
      ? { ...row, deep: row.deep === 1, report: JSON.parse(row.report) as unknown }
      : undefined;
  }
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

/** Creates the catalog's directory and file private to this user, and tightens an existing file that is not. */
function prepareFile(path: string): void {
  const dir = dirname(path);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const d = statSync(dir);
    if (d.mode & 0o002 && !(d.mode & 0o1000)) {
      throw new ConfigError(
        `catalog directory ${dir} is world-writable; the catalog holds encryption keys`,
      );
    }
    try {
      closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    for (const f of [path, `${path}-wal`, `${path}-shm`]) {
      try {
        if (statSync(f).mode & 0o077) chmodSync(f, 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(
      `cannot create catalog ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}
