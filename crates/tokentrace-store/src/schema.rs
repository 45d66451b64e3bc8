//! The schema and its versioned migrations (`PRAGMA user_version`).

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

/// Migrations in order; migration `i` brings the file to `user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: traces, spans, span events, metrics, datasets.
    r#"
CREATE TABLE traces (
    trace_id          TEXT PRIMARY KEY,
    service_name      TEXT,
    root_span_id      TEXT NOT NULL,
    root_is_true_root INTEGER NOT NULL DEFAULT 0,
    start_time        TEXT NOT NULL,
    end_time          TEXT,
    timestamp         TEXT NOT NULL,
    expires_at        INTEGER
);
CREATE INDEX traces_start_time ON traces (start_time);
CREATE INDEX traces_timestamp ON traces (timestamp);
CREATE INDEX traces_expires_at ON traces (expires_at);

CREATE TABLE spans (
    trace_id       TEXT NOT NULL,
    span_id        TEXT NOT NULL,
    parent_span_id TEXT,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    start_time     TEXT NOT NULL,
    end_time       TEXT,
    duration_ms    REAL,
    status         TEXT,
    status_message TEXT,
    attributes     TEXT NOT NULL,
    links          TEXT,
    service_name   TEXT,
    expires_at     INTEGER,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_span_id ON spans (span_id);
CREATE INDEX spans_parent_span_id ON spans (parent_span_id);
CREATE INDEX spans_start_time ON spans (start_time);
CREATE INDEX spans_name ON spans (name);
CREATE INDEX spans_expires_at ON spans (expires_at);

CREATE TABLE span_events (
    id         INTEGER PRIMARY KEY,
    trace_id   TEXT,
    span_id    TEXT,
    timestamp  TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    severity   TEXT,
    message    TEXT,
    value      REAL,
    unit       TEXT,
    attributes TEXT NOT NULL,
    expires_at INTEGER
);
CREATE INDEX span_events_span ON span_events (trace_id, span_id);
CREATE INDEX span_events_expires_at ON span_events (expires_at);

CREATE TABLE metrics (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    timestamp  TEXT NOT NULL,
    ts_nanos   INTEGER NOT NULL,
    value      REAL NOT NULL,
    unit       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    trace_id   TEXT,
    span_id    TEXT,
    expires_at INTEGER
);
CREATE INDEX metrics_name_time ON metrics (name, ts_nanos);
CREATE INDEX metrics_expires_at ON metrics (expires_at);

CREATE TABLE datasets (
    dataset_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    row_count  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE dataset_rows (
    dataset_id TEXT NOT NULL,
    row_index  INTEGER NOT NULL,
    row        TEXT NOT NULL,
    PRIMARY KEY (dataset_id, row_index)
) WITHOUT ROWID;
"#,
    // 2: per-minute rollups of every metric series, written with the points; filled from the
    // points already stored by `backfill_rollups`.
    r#"
CREATE TABLE IF NOT EXISTS metric_series (
    id     INTEGER PRIMARY KEY,
    name   TEXT NOT NULL,
    unit   TEXT NOT NULL,
    labels TEXT NOT NULL,
    UNIQUE (name, labels)
);
CREATE TABLE IF NOT EXISTS metric_rollups (
    series     INTEGER NOT NULL,
    minute     INTEGER NOT NULL,
    sum        REAL NOT NULL,
    count      INTEGER NOT NULL,
    min        REAL NOT NULL,
    max        REAL NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (series, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_rollups_expires_at ON metric_rollups (expires_at);
CREATE TABLE IF NOT EXISTS migration_progress (
    version    INTEGER PRIMARY KEY,
    done_up_to INTEGER NOT NULL
);
"#,
    // 3: the attribute index: for each indexed key (`attribute_keys`, complete once every span
    // stored before the key was configured has been indexed), the traces that have a span with
    // each value. Within a key and value, entries are ordered by the span's start, so that new
    // entries land at the end of their value's range rather than at random places (trace ids
    // are random). Filled by `crate::index` when the store opens.
    r#"
CREATE TABLE IF NOT EXISTS attribute_keys (
    id       INTEGER PRIMARY KEY,
    key      TEXT NOT NULL UNIQUE,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attribute_index (
    key        INTEGER NOT NULL,
    value      NOT NULL,
    start_ns   INTEGER NOT NULL,
    trace_id   TEXT NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (key, value, start_ns, trace_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attribute_index_expires_at ON attribute_index (expires_at);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version of a file (0 for a new one). Reading it does not modify the file.
pub fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Refuses a file written by a newer tokentrace, before anything touches it.
pub fn check_version(conn: &Connection) -> Result<(), StoreError> {
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the store has schema version {current}, newer than this tokentrace understands ({SCHEMA_VERSION}); it was left untouched: use a newer tokentrace, or another sqlite_db_path"
        )));
    }
    Ok(())
}

/// Metric points turned into rollups per migration transaction.
const BACKFILL_BATCH: i64 = 100_000;

/// Brings the file up to [`SCHEMA_VERSION`]. Each migration's tables are created in one
/// transaction; one that must fill them from existing rows does so in batches, each its own
/// transaction that records how far it got, so an interrupted migration resumes where it
/// stopped. The version is raised when a migration is complete.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    check_version(conn)?;
    let current = version(conn)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let to = (i + 1) as i64;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if to == 1 {
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()?;
            continue;
        }
        tx.commit()?;
        if to == 2 {
            backfill_rollups(conn)?;
        }
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM migration_progress WHERE version = ?1", [to])?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        if current > 0 {
            tracing::info!("trace store: migrated to schema version {to}");
        }
    }
    Ok(())
}

/// Migration 2: per-minute rollups of the metric points already stored, in batches of points.
fn backfill_rollups(conn: &mut Connection) -> Result<(), StoreError> {
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM metrics",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done: i64 = conn
        .query_row(
            "SELECT done_up_to FROM migration_progress WHERE version = 2",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if total > 0 {
        tracing::info!(
            "trace store: migrating to schema version 2: rollups of {total} metric points"
        );
    }
    while done < last {
        let upto = done.saturating_add(BACKFILL_BATCH).min(last);
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO metric_series (name, unit, labels)
             SELECT name, MIN(unit), labels FROM metrics WHERE id > ?1 AND id <= ?2
             GROUP BY name, labels
             ON CONFLICT (name, labels) DO NOTHING",
            params![done, upto],
        )?;
        tx.execute(
            "INSERT INTO metric_rollups (series, minute, sum, count, min, max, expires_at)
             SELECT s.id, (m.ts_nanos - ((m.ts_nanos % 60000000000) + 60000000000) % 60000000000) / 60000000000,
                    SUM(m.value), COUNT(*), MIN(m.value), MAX(m.value),
                    CASE WHEN COUNT(m.expires_at) < COUNT(*) THEN NULL ELSE MAX(m.expires_at) END
             FROM metrics m JOIN metric_series s ON s.name = m.name AND s.labels = m.labels
             WHERE m.id > ?1 AND m.id <= ?2
             GROUP BY 1, 2
             ON CONFLICT (series, minute) DO UPDATE SET
                 sum = sum + excluded.sum, count = count + excluded.count,
                 min = MIN(min, excluded.min), max = MAX(max, excluded.max),
                 expires_at = CASE WHEN expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
                                   ELSE MAX(expires_at, excluded.expires_at) END",
            params![done, upto],
        )?;
        tx.execute(
            "INSERT INTO migration_progress (version, done_up_to) VALUES (2, ?1)
             ON CONFLICT (version) DO UPDATE SET done_up_to = excluded.done_up_to",
            [upto],
        )?;
        tx.commit()?;
        done = upto;
        tracing::info!(
            "trace store: schema version 2: rollups up to metric point {done} of {last}"
        );
    }
    Ok(())
}

/// Connection settings for the writer: WAL, `synchronous=NORMAL`; and for a new file,
/// `auto_vacuum = INCREMENTAL`, so the pages retention frees go back to the file system (in
/// steps, after each retention run). That can only be chosen before anything, WAL mode
/// included, has written the file; older files reuse their free pages for new rows instead.
pub fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages == 0 {
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}
