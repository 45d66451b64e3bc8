//! The schema and its versioned migrations (`PRAGMA user_version`).

use rusqlite::Connection;

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
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the file up to [`SCHEMA_VERSION`], each migration in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the store has schema version {current}, newer than this tokentrace understands ({SCHEMA_VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Connection settings for the writer: WAL, `synchronous=NORMAL`.
pub fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}
