//! The schema and its versioned migrations (`PRAGMA user_version`).

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::upgrade::table_exists;

/// Version 2, for files of version 1: per-minute rollups of every metric series, written with
/// the points; filled from the points already stored by `backfill_rollups`.
const V2: &str = r#"
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
    sum        NUMERIC NOT NULL,
    count      INTEGER NOT NULL,
    min        NUMERIC NOT NULL,
    max        NUMERIC NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (series, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS migration_progress (
    version    INTEGER PRIMARY KEY,
    done_up_to INTEGER NOT NULL
);
"#;

/// Version 3, for files of version 2: the attribute index of version 3 (dropped again by
/// version 4, whose index lives in the sorted runs of `lookup`).
const V3: &str = r#"
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
"#;

/// The current schema (version 8), created in a new file after [`V2`] (metric series, rollups
/// and migration progress, unchanged since).
///
/// Rows live in rowid tables whose keys grow with arrival (`trace_rows.id`, `span_rows.id`,
/// `event_rows.id`), so that a batch's insertions land at the right edge of every B-tree
/// rather than on random pages. Ids are stored as blobs, times as unix nanoseconds. Lookups by
/// random keys (span id, trace id, attribute value) go through sorted runs (`lookup_runs`, their entries in blocks: `lookup_blocks`), each
/// written in one piece and merged in steps (see `crate::lookup`). An event keeps its trace
/// id itself (it may outlive its trace's spans), and its trace key for the lookup by span. A
/// trace row is created when its id is first seen, from an event too; until a span comes it
/// has no start and is no trace for queries and views. The views `traces`, `spans`
/// and `span_events` give the tables of earlier versions back, with hex ids and text times.
///
/// A trace belongs to one project (`trace_rows.project`, an id of `projects`; 0 is `default`):
/// the same trace id sent by two projects is two trace rows, each project's spans and events
/// under its own, so a trace never mixes projects and a read limited to some projects only
/// ever joins their trace rows. Metric points carry their project as a label.
const CURRENT: &str = r#"
CREATE TABLE IF NOT EXISTS trace_rows (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id          BLOB NOT NULL,
    service_name      TEXT,
    root_span_id      BLOB,
    root_is_true_root INTEGER NOT NULL DEFAULT 0,
    start_ns          INTEGER,
    end_ns            INTEGER,
    expires_at        INTEGER,
    project           INTEGER NOT NULL DEFAULT 0,
    last_start_ns     INTEGER
);
CREATE INDEX IF NOT EXISTS trace_rows_start ON trace_rows (start_ns);
CREATE INDEX IF NOT EXISTS trace_rows_project_start ON trace_rows (project, start_ns);

CREATE TABLE IF NOT EXISTS projects (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT OR IGNORE INTO projects (id, name) VALUES (0, 'default');
CREATE INDEX IF NOT EXISTS trace_rows_expires_at ON trace_rows (expires_at);

CREATE TABLE IF NOT EXISTS span_rows (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    trace          INTEGER NOT NULL,
    span_id        BLOB NOT NULL,
    parent_span_id BLOB,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER,
    status         TEXT,
    status_message TEXT,
    attributes     TEXT NOT NULL,
    links          TEXT,
    service_name   TEXT,
    expires_at     INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS span_rows_trace ON span_rows (trace, span_id);

CREATE TABLE IF NOT EXISTS event_rows (
    id         INTEGER PRIMARY KEY,
    trace      INTEGER,
    trace_id   BLOB,
    span_id    BLOB,
    ts_ns      INTEGER NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    severity   TEXT,
    message    TEXT,
    value      REAL,
    unit       TEXT,
    attributes TEXT NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS event_rows_span ON event_rows (trace, span_id);
CREATE INDEX IF NOT EXISTS event_rows_expires_at ON event_rows (expires_at);

-- A metric value (and a rollup's sum, min and max) is NUMERIC: one without a fraction is stored
-- as an integer, in the bytes it needs (a token count: 2), any other as a real (8). Files created
-- before version 11 declare them REAL, which SQLite keeps in 8 bytes in a table with an index.
CREATE TABLE IF NOT EXISTS metric_points (
    id         INTEGER PRIMARY KEY,
    series     INTEGER NOT NULL,
    ts_ns      INTEGER NOT NULL,
    value      NUMERIC NOT NULL,
    trace_id   BLOB,
    span_id    BLOB,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS metric_points_series_time ON metric_points (series, ts_ns);

CREATE TABLE IF NOT EXISTS datasets (
    dataset_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    row_count  INTEGER NOT NULL DEFAULT 0,
    project    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dataset_rows (
    dataset_id TEXT NOT NULL,
    row_index  INTEGER NOT NULL,
    row        TEXT NOT NULL,
    PRIMARY KEY (dataset_id, row_index)
) WITHOUT ROWID;


CREATE TABLE IF NOT EXISTS dataset_expiry (
    dataset_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dataset_expiry_at ON dataset_expiry (expires_at);

CREATE TABLE IF NOT EXISTS attribute_keys (
    id       INTEGER PRIMARY KEY,
    key      TEXT NOT NULL UNIQUE,
    complete INTEGER NOT NULL DEFAULT 0
);

-- The names of span attributes, by the id a span row keys its attributes with (see
-- `crate::names`): given once, never changed.
CREATE TABLE IF NOT EXISTS attribute_names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS attribute_values (
    kind  INTEGER NOT NULL,
    value NOT NULL,
    trace INTEGER NOT NULL,
    PRIMARY KEY (kind, value, trace)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS lookup_runs (
    run        INTEGER PRIMARY KEY,
    level      INTEGER NOT NULL,
    state      INTEGER NOT NULL,
    entries    INTEGER NOT NULL,
    traces     INTEGER NOT NULL,
    span_max   INTEGER,
    trace_max  INTEGER
);

CREATE TABLE IF NOT EXISTS migration_steps (
    name       TEXT PRIMARY KEY,
    done_up_to INTEGER NOT NULL
);

CREATE VIEW IF NOT EXISTS traces AS
SELECT lower(hex(t.trace_id)) AS trace_id,
       t.service_name,
       lower(hex(t.root_span_id)) AS root_span_id,
       t.root_is_true_root,
       strftime('%Y-%m-%d %H:%M:%S', t.start_ns / 1000000000, 'unixepoch') || printf('.%09d', t.start_ns % 1000000000) AS start_time,
       strftime('%Y-%m-%d %H:%M:%S', t.end_ns / 1000000000, 'unixepoch') || printf('.%09d', t.end_ns % 1000000000) AS end_time,
       strftime('%Y-%m-%d %H:%M:%S', t.start_ns / 1000000000, 'unixepoch') || printf('.%09d', t.start_ns % 1000000000) AS timestamp,
       t.expires_at,
       (SELECT p.name FROM projects p WHERE p.id = t.project) AS project
FROM trace_rows t WHERE t.start_ns IS NOT NULL;

-- Trace rows first (CROSS JOIN keeps that order): a filter on the hex trace id then reads the
-- trace rows and that trace's spans, not every span. The attributes get their names back
-- (a key that is an id of `attribute_names` written out; else, starting with `~`, the name
-- after it; else the name), each value as stored: a real by its path, which keeps its digits
-- (a name holding `"` has no path: its value comes from `json_each`).
CREATE VIEW IF NOT EXISTS spans AS
SELECT lower(hex(t.trace_id)) AS trace_id,
       lower(hex(s.span_id)) AS span_id,
       CASE WHEN s.parent_span_id IS NULL THEN NULL ELSE lower(hex(s.parent_span_id)) END AS parent_span_id,
       s.name,
       CASE s.kind WHEN '1' THEN 'internal' WHEN '2' THEN 'server' WHEN '3' THEN 'client'
                   WHEN '4' THEN 'producer' WHEN '5' THEN 'consumer' ELSE s.kind END AS kind,
       strftime('%Y-%m-%d %H:%M:%S', s.start_ns / 1000000000, 'unixepoch') || printf('.%09d', s.start_ns % 1000000000) AS start_time,
       strftime('%Y-%m-%d %H:%M:%S', s.end_ns / 1000000000, 'unixepoch') || printf('.%09d', s.end_ns % 1000000000) AS end_time,
       (s.end_ns - s.start_ns) / 1e6 AS duration_ms,
       s.status,
       s.status_message,
       (SELECT json_group_object(
                   coalesce(n.name, CASE WHEN substr(j.key, 1, 1) = '~' THEN substr(j.key, 2) ELSE j.key END),
                   CASE j.type WHEN 'real' THEN coalesce(s.attributes -> j.fullkey, j.value)
                               WHEN 'true' THEN json('true') WHEN 'false' THEN json('false')
                               WHEN 'object' THEN json(j.value) WHEN 'array' THEN json(j.value)
                               ELSE j.value END)
          FROM json_each(s.attributes) j
          LEFT JOIN attribute_names n ON n.id = CAST(j.key AS INTEGER) AND CAST(n.id AS TEXT) = j.key) AS attributes,
       s.links,
       CASE WHEN s.service_name IS NULL THEN t.service_name ELSE NULLIF(s.service_name, '') END AS service_name,
       t.expires_at
FROM trace_rows t CROSS JOIN span_rows s ON s.trace = t.id;

CREATE VIEW IF NOT EXISTS span_events AS
SELECT e.id,
       CASE WHEN e.trace_id IS NULL THEN NULL ELSE lower(hex(e.trace_id)) END AS trace_id,
       CASE WHEN e.span_id IS NULL THEN NULL ELSE lower(hex(e.span_id)) END AS span_id,
       strftime('%Y-%m-%d %H:%M:%S', e.ts_ns / 1000000000, 'unixepoch') || printf('.%09d', e.ts_ns % 1000000000) AS timestamp,
       e.name,
       e.kind,
       e.severity,
       e.message,
       e.value,
       e.unit,
       e.attributes,
       e.expires_at
FROM event_rows e;
"#;

/// The `metrics` table of versions 1 to 5, given back over the compact points of version 6: a
/// point keeps its series (name, unit, labels: `metric_series`), its time in nanoseconds and
/// its ids as blobs; the text columns are computed, and the value is a real as it was (a
/// NUMERIC column holds an integral value as an integer). Created apart from [`CURRENT`] because on
/// an older file the table of that name exists until migration 6 replaces it.
const METRICS_VIEW: &str = r#"
CREATE VIEW IF NOT EXISTS metrics AS
SELECT p.id,
       s.name,
       strftime('%Y-%m-%d %H:%M:%S', p.ts_ns / 1000000000, 'unixepoch') || printf('.%09d', p.ts_ns % 1000000000) AS timestamp,
       p.ts_ns AS ts_nanos,
       CAST(p.value AS REAL) AS value,
       s.unit,
       s.labels,
       CASE typeof(p.trace_id) WHEN 'blob' THEN lower(hex(p.trace_id)) ELSE p.trace_id END AS trace_id,
       CASE typeof(p.span_id) WHEN 'blob' THEN lower(hex(p.span_id)) ELSE p.span_id END AS span_id,
       p.expires_at
FROM metric_points p JOIN metric_series s ON s.id = p.series;
"#;

/// Spans of a trace that start further apart than this make it a long trace (see
/// [`LONG_TRACES`]).
pub(crate) const LONG_TRACE_NS: i64 = 60_000_000_000;

/// Version 8: the traces whose spans start more than [`LONG_TRACE_NS`] apart (`last_start_ns`,
/// the latest start of a trace's spans, against `start_ns`, the earliest), by start. The spans
/// that start in a time window belong to the traces that start in it or up to a minute before,
/// and to the long traces that span it: a window is found from trace rows (one a trace), not
/// from an index of every span's start. Created apart from [`CURRENT`] because on a file older
/// than version 8 `trace_rows` has no `last_start_ns` until migration 8 adds it.
const LONG_TRACES: &str = "CREATE INDEX IF NOT EXISTS trace_rows_long ON trace_rows (start_ns)
    WHERE last_start_ns - start_ns > 60000000000;";

/// Version 9: per-hour rollups of every metric series beside the per-minute ones, written with
/// the points, so that a range over days by hours (or an instant query over days) reads a row
/// per series and hour, not one per minute. Filled from the minute rollups by migration 9.
/// (Its index of expiries, like the minutes' and the points', was dropped by version 11.)
const HOURLY_ROLLUPS: &str = r#"
CREATE TABLE IF NOT EXISTS metric_rollups_hourly (
    series     INTEGER NOT NULL,
    hour       INTEGER NOT NULL,
    sum        NUMERIC NOT NULL,
    count      INTEGER NOT NULL,
    min        NUMERIC NOT NULL,
    max        NUMERIC NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (series, hour)
) WITHOUT ROWID;
"#;

/// Version 11: where the metric points that expire in each hour are (the smallest and largest
/// id of a point expiring in it), so that retention finds expired points without an index of
/// every point's expiry; rollups go when the last point in them does (`crate::expiry`).
const POINT_EXPIRY: &str = r#"
CREATE TABLE IF NOT EXISTS metric_point_expiry (
    hour  INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    last  INTEGER NOT NULL
);
"#;

/// Version 12: the sorted runs' entries packed into blocks, a row a block (`crate::lookup`),
/// where versions 4 to 11 kept an entry a row in `lookup` (run, kind, key, target). Created
/// apart from [`CURRENT`] because migration 4 writes runs through the writer's code, before
/// migration 12 converts the runs of `lookup` that a file has.
const LOOKUP_BLOCKS: &str = r#"
CREATE TABLE IF NOT EXISTS lookup_blocks (
    id      INTEGER PRIMARY KEY,
    run     INTEGER NOT NULL,
    kind    INTEGER NOT NULL,
    key     NOT NULL,
    entries BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS lookup_blocks_run ON lookup_blocks (run, kind, key);
"#;

/// The schema version this build writes. Version 10 changed no table: the attribute index
/// keeps texts under 4-byte keys (`crate::index::index_value`) and the runs key span ids by
/// their first 4 bytes (`crate::lookup::span_key`); migration 10 converts the entries. Version 11
/// replaced the expiry indexes of metric points and rollups by `metric_point_expiry`; version 12
/// packed the runs' entries into blocks (`lookup_blocks`).
pub const SCHEMA_VERSION: i64 = 12;

/// The schema version of a file (0 for a new one). Reading it does not modify the file.
pub fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// How far the batched migration step `name` got (`migration_steps`; 0: not started).
pub(crate) fn step_done(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT done_up_to FROM migration_steps WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Records, in the transaction of a batch, that the migration step `name` is done up to `upto`.
pub(crate) fn record_step(tx: &Connection, name: &str, upto: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO migration_steps (name, done_up_to) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET done_up_to = excluded.done_up_to",
        params![name, upto],
    )?;
    Ok(())
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

/// Migration 5: projects. Every trace and dataset stored so far is the project `default`;
/// adding a column with a default rewrites no row, so this takes no time whatever the size.
fn add_projects(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for table in ["trace_rows", "datasets"] {
        let has: bool = tx.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = 'project'",
            [table],
            |r| r.get(0),
        )?;
        if !has {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN project INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    // The view gains the project's name.
    tx.execute_batch("DROP VIEW IF EXISTS traces")?;
    tx.execute_batch(CURRENT)?;
    tx.commit()?;
    Ok(())
}

/// Metric points copied per migration transaction.
const POINTS_BATCH: i64 = 50_000;

/// Migration 6: metric points become rows of `metric_points` (their series by id, ids as
/// blobs, no text time) and `metrics` a view of them. The table of version 5 is renamed, copied
/// in batches by id (each batch a transaction that records how far it got), then dropped.
/// Every series already has its row (the writer has kept `metric_series` since version 2);
/// one a point lacks is added. A stored id that is not hex stays as it was, as text.
fn compact_metric_points(conn: &mut Connection) -> Result<(), StoreError> {
    let renamed = table_exists(conn, "v5_metrics")?;
    if !renamed {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "DROP INDEX IF EXISTS metrics_name_time;
             DROP INDEX IF EXISTS metrics_expires_at;
             ALTER TABLE metrics RENAME TO v5_metrics;",
        )?;
        tx.execute_batch(CURRENT)?;
        tx.commit()?;
    }
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM v5_metrics",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done = step_done(conn, "v6 metrics")?;
    if total > 0 {
        tracing::info!(
            "trace store: migrating to schema version 6: compacting {total} metric points"
        );
    }
    while done < last {
        let upto = done.saturating_add(POINTS_BATCH).min(last);
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO metric_series (name, unit, labels)
             SELECT name, MIN(unit), labels FROM v5_metrics WHERE id > ?1 AND id <= ?2
             GROUP BY name, labels
             ON CONFLICT (name, labels) DO NOTHING",
            params![done, upto],
        )?;
        tx.execute(
            "INSERT INTO metric_points (id, series, ts_ns, value, trace_id, span_id, expires_at)
             SELECT m.id, s.id, m.ts_nanos, m.value,
                    COALESCE(unhex(m.trace_id), m.trace_id), COALESCE(unhex(m.span_id), m.span_id),
                    m.expires_at
             FROM v5_metrics m JOIN metric_series s ON s.name = m.name AND s.labels = m.labels
             WHERE m.id > ?1 AND m.id <= ?2",
            params![done, upto],
        )?;
        record_step(&tx, "v6 metrics", upto)?;
        tx.commit()?;
        done = upto;
        tracing::info!("trace store: schema version 6: metric points up to {done} of {last}");
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "DROP TABLE v5_metrics; DELETE FROM migration_steps WHERE name = 'v6 metrics';",
    )?;
    tx.execute_batch(METRICS_VIEW)?;
    tx.commit()?;
    Ok(())
}

/// Span rows converted per migration transaction.
const SPANS_BATCH: i64 = 50_000;

/// Migration 7: span attributes keyed by the ids of their names (`crate::names`), and spans
/// expired with their trace (the index of span expiries is dropped). Every span row is
/// rewritten in place, in batches by id, each a transaction that records how far it
/// got; the `spans` view is replaced by one that puts the names back. The rows shrink where
/// they are: the pages they free inside stay the file's until retention deletes those spans.
fn name_attributes(conn: &mut Connection) -> Result<(), StoreError> {
    {
        let tx = conn.transaction()?;
        // Spans expire with their trace (`trace_rows_expires_at`), not by an index of their own.
        tx.execute_batch("DROP VIEW IF EXISTS spans; DROP INDEX IF EXISTS span_rows_expires_at;")?;
        tx.execute_batch(CURRENT)?;
        tx.commit()?;
    }
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM span_rows",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done = step_done(conn, "v7 attributes")?;
    if total > 0 && done < last {
        tracing::info!(
            "trace store: migrating to schema version 7: attribute names of {total} spans"
        );
    }
    let mut names = crate::names::NameIds::load(conn)?;
    while done < last {
        let upto = done.saturating_add(SPANS_BATCH).min(last);
        let tx = conn.transaction()?;
        let rows: Vec<(i64, String)> = tx
            .prepare_cached("SELECT id, attributes FROM span_rows WHERE id > ?1 AND id <= ?2")?
            .query_map(params![done, upto], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        {
            let mut update =
                tx.prepare_cached("UPDATE span_rows SET attributes = ?2 WHERE id = ?1")?;
            for (id, stored) in rows {
                let named = crate::names::SpanAttributes::parse(&stored).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "migrating to schema version 7: span row {id}: {e}; the file was left as it was before this batch"
                    ))
                })?;
                update.execute(params![id, names.encode(&tx, &named)?])?;
            }
        }
        record_step(&tx, "v7 attributes", upto)?;
        tx.commit()?;
        done = upto;
        tracing::info!("trace store: schema version 7: spans up to {done} of {last}");
    }
    conn.execute(
        "DELETE FROM migration_steps WHERE name = 'v7 attributes'",
        [],
    )?;
    Ok(())
}

/// Trace rows given their latest span start per migration transaction.
const TRACES_BATCH: i64 = 20_000;

/// Migration 8: time windows of spans found through their traces. Every trace row gets the
/// latest start of its spans (`last_start_ns`), and a span without a service name in a trace
/// with one gets `''`, in batches by trace key, each a transaction that records how far it
/// got; then the index of long traces is built, the index of every span's start
/// (`span_rows_start`) dropped and the `spans` view replaced.
fn trace_span_extents(conn: &mut Connection) -> Result<(), StoreError> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('trace_rows') WHERE name = 'last_start_ns'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE trace_rows ADD COLUMN last_start_ns INTEGER")?;
    }
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM trace_rows",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done = step_done(conn, "v8 span starts")?;
    if total > 0 && done < last {
        tracing::info!(
            "trace store: migrating to schema version 8: the latest span start of {total} traces"
        );
    }
    while done < last {
        let upto = done.saturating_add(TRACES_BATCH).min(last);
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE trace_rows SET last_start_ns =
                 (SELECT MAX(s.start_ns) FROM span_rows s WHERE s.trace = trace_rows.id)
             WHERE id > ?1 AND id <= ?2",
            params![done, upto],
        )?;
        // A span without a service name in a trace with one: `''`, so that it does not read as
        // its trace's (what NULL says since version 8).
        tx.execute(
            "UPDATE span_rows SET service_name = ''
             WHERE trace > ?1 AND trace <= ?2 AND service_name IS NULL
               AND (SELECT t.service_name FROM trace_rows t WHERE t.id = span_rows.trace) IS NOT NULL",
            params![done, upto],
        )?;
        record_step(&tx, "v8 span starts", upto)?;
        tx.commit()?;
        done = upto;
        tracing::info!("trace store: schema version 8: traces up to {done} of {last}");
    }
    let tx = conn.transaction()?;
    tx.execute_batch(LONG_TRACES)?;
    // The view reads kinds stored as codes, and spans' expiry from their trace.
    tx.execute_batch(
        "DROP INDEX IF EXISTS span_rows_start;
         DROP VIEW IF EXISTS spans;
         DELETE FROM migration_steps WHERE name = 'v8 span starts';",
    )?;
    tx.execute_batch(CURRENT)?;
    tx.commit()?;
    Ok(())
}

/// Metric points turned into rollups per migration transaction.
const BACKFILL_BATCH: i64 = 100_000;

/// Brings the file up to [`SCHEMA_VERSION`]. A new file gets the current schema at once. An
/// older one is migrated step by step; a step that must fill tables from existing rows does so
/// in batches, each its own transaction that records how far it got, so an interrupted
/// migration resumes where it stopped. The version is raised when a step is complete.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    check_version(conn)?;
    let current = version(conn)?;
    if current == 0 {
        let tx = conn.transaction()?;
        tx.execute_batch(V2)?;
        tx.execute_batch(CURRENT)?;
        tx.execute_batch(METRICS_VIEW)?;
        tx.execute_batch(LONG_TRACES)?;
        tx.execute_batch(HOURLY_ROLLUPS)?;
        tx.execute_batch(POINT_EXPIRY)?;
        tx.execute_batch(LOOKUP_BLOCKS)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        return Ok(());
    }
    if current == SCHEMA_VERSION {
        // Every statement of the schema is `IF NOT EXISTS`: this adds what a file written by an
        // earlier build of this version lacks (an index), and touches nothing else.
        conn.execute_batch(CURRENT)?;
        conn.execute_batch(METRICS_VIEW)?;
        conn.execute_batch(LONG_TRACES)?;
        conn.execute_batch(HOURLY_ROLLUPS)?;
        conn.execute_batch(POINT_EXPIRY)?;
        conn.execute_batch(LOOKUP_BLOCKS)?;
    }
    if current < SCHEMA_VERSION {
        // Steps that copy rows through the writer's code (migration 4) upsert hourly rollups
        // too; migration 9 then computes every hour from the minutes, whatever those wrote.
        // They write index runs as blocks, which migrations 10 and 12 leave as they are.
        conn.execute_batch(HOURLY_ROLLUPS)?;
        conn.execute_batch(POINT_EXPIRY)?;
        conn.execute_batch(LOOKUP_BLOCKS)?;
    }
    for to in current + 1..=SCHEMA_VERSION {
        match to {
            2 => {
                conn.execute_batch(V2)?;
                backfill_rollups(conn)?;
            }
            3 => conn.execute_batch(V3)?,
            4 => crate::upgrade::to_compact_tables(conn, CURRENT)?,
            5 => add_projects(conn)?,
            6 => compact_metric_points(conn)?,
            7 => name_attributes(conn)?,
            8 => trace_span_extents(conn)?,
            9 => hourly_rollups(conn)?,
            10 => index_keys(conn)?,
            11 => point_expiry(conn)?,
            _ => crate::lookup::blocks_from_rows(conn)?,
        }
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM migration_progress WHERE version = ?1", [to])?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        tracing::info!("trace store: migrated to schema version {to}");
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

/// Metric series whose minute rollups migration 9 sums into hours per transaction.
const SERIES_BATCH: i64 = 256;

/// Migration 9: per-hour rollups from the per-minute ones, a batch of series at a time (each
/// batch's transaction records how far it got, so an interrupted migration resumes there).
fn hourly_rollups(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(HOURLY_ROLLUPS)?;
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(id), 0), COUNT(*) FROM metric_series",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done = step_done(conn, "v9 hourly rollups")?;
    if total > 0 && done < last {
        tracing::info!(
            "trace store: migrating to schema version 9: hourly rollups of {total} metric series"
        );
    }
    while done < last {
        let upto = done.saturating_add(SERIES_BATCH).min(last);
        let tx = conn.transaction()?;
        // The hour of a minute rounded down, also before 1970. An hour already there is
        // computed again from its minutes, so a batch done twice changes nothing.
        tx.execute(
            "INSERT INTO metric_rollups_hourly (series, hour, sum, count, min, max, expires_at)
             SELECT series, (minute - ((minute % 60) + 60) % 60) / 60,
                    SUM(sum), SUM(count), MIN(min), MAX(max),
                    CASE WHEN COUNT(expires_at) < COUNT(*) THEN NULL ELSE MAX(expires_at) END
             FROM metric_rollups WHERE series > ?1 AND series <= ?2
             GROUP BY 1, 2
             ON CONFLICT (series, hour) DO UPDATE SET
                 sum = excluded.sum, count = excluded.count, min = excluded.min,
                 max = excluded.max, expires_at = excluded.expires_at",
            params![done, upto],
        )?;
        record_step(&tx, "v9 hourly rollups", upto)?;
        tx.commit()?;
        done = upto;
        tracing::info!("trace store: schema version 9: series up to {done} of {last}");
    }
    conn.execute(
        "DELETE FROM migration_steps WHERE name = 'v9 hourly rollups'",
        [],
    )?;
    Ok(())
}

/// Index entries converted per migration transaction.
const ENTRIES_BATCH: i64 = 20_000;

/// Migration 10: every entry of the attribute index whose value is a text, in
/// `attribute_values` and in the sorted runs of `lookup`, is replaced by one with its 4-byte
/// key (`crate::index::index_value`), and every span entry of the runs keyed by a whole span id
/// by one keyed by its first 4 bytes (`crate::lookup::span_key`), in batches in key order, each
/// its own transaction. A converted entry no longer matches what is converted, so a migration
/// interrupted and started again finds only what is left.
fn index_keys(conn: &mut Connection) -> Result<(), StoreError> {
    use crate::index::index_value;
    use rusqlite::types::Value;
    // The entries to convert, and the condition that finds them (fixed strings).
    const TEXTS: &str = "kind >= 16 AND typeof(key) = 'text'";
    const SPAN_IDS: &str = "kind = 0 AND length(key) = 8";
    // Runs written by migration 4 of this build are blocks, with keys of this version.
    let rows = table_exists(conn, "lookup")?;
    let total: i64 = conn.query_row(
        &if rows {
            format!(
                "SELECT (SELECT count(*) FROM attribute_values WHERE typeof(value) = 'text')
                      + (SELECT count(*) FROM lookup WHERE {TEXTS})
                      + (SELECT count(*) FROM lookup WHERE {SPAN_IDS})"
            )
        } else {
            "SELECT count(*) FROM attribute_values WHERE typeof(value) = 'text'".to_string()
        },
        [],
        |r| r.get(0),
    )?;
    if total == 0 {
        return Ok(());
    }
    tracing::info!(
        "trace store: migrating to schema version 10: 4-byte keys for {total} entries of the indexes"
    );
    let mut done = 0i64;
    // `attribute_values` by (kind, value, trace): a kind's texts come after its numbers and
    // before its blobs, where the converted entries go.
    let mut at: (i64, Value, i64) = (i64::MIN, Value::Null, i64::MIN);
    loop {
        let tx = conn.transaction()?;
        let rows: Vec<(i64, Value, i64)> = tx
            .prepare_cached(
                "SELECT kind, value, trace FROM attribute_values
                 WHERE (kind, value, trace) > (?1, ?2, ?3) AND typeof(value) = 'text'
                 ORDER BY kind, value, trace LIMIT ?4",
            )?
            .query_map(params![at.0, at.1, at.2, ENTRIES_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last().cloned() else {
            break;
        };
        {
            let mut delete = tx.prepare_cached(
                "DELETE FROM attribute_values WHERE kind = ?1 AND value = ?2 AND trace = ?3",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO attribute_values (kind, value, trace) VALUES (?1, ?2, ?3)",
            )?;
            for (kind, value, trace) in &rows {
                delete.execute(params![kind, value, trace])?;
                insert.execute(params![kind, index_value(value.clone()), trace])?;
            }
        }
        tx.commit()?;
        done += rows.len() as i64;
        at = last;
        tracing::info!("trace store: schema version 10: {done} of {total} entries");
    }
    let span_key = |key: Value| match key {
        Value::Blob(b) if b.len() == 8 => Value::Blob(b[..4].to_vec()),
        other => other,
    };
    let runs: &[(&str, &dyn Fn(Value) -> Value)] = if rows {
        &[(TEXTS, &index_value), (SPAN_IDS, &span_key)]
    } else {
        &[]
    };
    for (which, convert) in runs {
        let mut at: (i64, i64, Value, i64) = (i64::MIN, i64::MIN, Value::Null, i64::MIN);
        loop {
            let tx = conn.transaction()?;
            let rows: Vec<(i64, i64, Value, i64)> = tx
                .prepare_cached(&format!(
                    "SELECT run, kind, key, target FROM lookup
                     WHERE (run, kind, key, target) > (?1, ?2, ?3, ?4) AND {which}
                     ORDER BY run, kind, key, target LIMIT ?5"
                ))?
                .query_map(params![at.0, at.1, at.2, at.3, ENTRIES_BATCH], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last().cloned() else {
                break;
            };
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM lookup WHERE run = ?1 AND kind = ?2 AND key = ?3 AND target = ?4",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO lookup (run, kind, key, target) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (run, kind, key, target) in &rows {
                    delete.execute(params![run, kind, key, target])?;
                    insert.execute(params![run, kind, convert(key.clone()), target])?;
                }
            }
            tx.commit()?;
            done += rows.len() as i64;
            at = last;
            tracing::info!("trace store: schema version 10: {done} of {total} entries");
        }
    }
    Ok(())
}

/// Metric points read per transaction of migration 11.
const EXPIRY_BATCH: i64 = 500_000;

/// Migration 11: the ranges of [`POINT_EXPIRY`] from the points stored, in batches by id (each
/// a transaction that records how far it got; a batch done twice widens no range); then the
/// rollups already expired are deleted (by their index, `expires_at` being what retention
/// read until version 11) and the expiry indexes of points and rollups dropped.
fn point_expiry(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(POINT_EXPIRY)?;
    let (last, total): (i64, i64) = conn.query_row(
        "SELECT COALESCE(MAX(rowid), 0), COUNT(*) FROM metric_points",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut done = step_done(conn, "v11 point expiry")?;
    if total > 0 && done < last {
        tracing::info!(
            "trace store: migrating to schema version 11: the hours of expiry of {total} metric points"
        );
    }
    while done < last {
        let upto = done.saturating_add(EXPIRY_BATCH).min(last);
        let tx = conn.transaction()?;
        // The hour of an expiry rounded down, also before 1970.
        tx.execute(
            "INSERT INTO metric_point_expiry (hour, first, last)
             SELECT (expires_at - ((expires_at % 3600000000000) + 3600000000000) % 3600000000000) / 3600000000000,
                    MIN(rowid), MAX(rowid)
             FROM metric_points WHERE rowid > ?1 AND rowid <= ?2 AND expires_at IS NOT NULL
             GROUP BY 1
             ON CONFLICT (hour) DO UPDATE SET first = MIN(first, excluded.first), last = MAX(last, excluded.last)",
            params![done, upto],
        )?;
        record_step(&tx, "v11 point expiry", upto)?;
        tx.commit()?;
        done = upto;
        tracing::info!("trace store: schema version 11: metric points up to {done} of {last}");
    }
    let now = tokentrace_model::Timestamp::now().unix_nanos();
    for table in ["metric_rollups", "metric_rollups_hourly"] {
        // Table names come from this fixed list, never from a caller.
        let has_index: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = ?1",
            [format!("{table}_expires_at")],
            |r| r.get(0),
        )?;
        if has_index {
            conn.execute(
                &format!("DELETE FROM {table} WHERE expires_at <= ?1"),
                [now],
            )?;
        }
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "DROP INDEX IF EXISTS metric_points_expires_at;
         DROP INDEX IF EXISTS metric_rollups_expires_at;
         DROP INDEX IF EXISTS metric_rollups_hourly_expires_at;
         DELETE FROM migration_steps WHERE name = 'v11 point expiry';",
    )?;
    tx.commit()?;
    Ok(())
}

/// Bytes a WAL that grew past them (a migration, a retention run giving pages back) is cut back
/// to once checkpointed, instead of keeping its largest size on disk.
pub(crate) const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

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
    // Until the writer starts (migrations run first): afterwards the checkpointer thread does
    // this (`crate::checkpoint`).
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        crate::checkpoint::CHECKPOINT_PAGES,
    )?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    // Statement journals and the sorts of index merges stay in memory; the pages a batch and a
    // merge round touch stay cached.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -12_288)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}
