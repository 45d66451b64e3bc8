//! The migration to schema version 4, the compact tables. The wide tables of versions 1 to 3
//! are renamed (`v3_traces`, `v3_spans`, `v3_span_events`) and the new ones created, in one
//! transaction; then spans and events are copied in batches through the writer's own path
//! (trace keys, sorted runs), each batch a transaction that records how far the copy got, so
//! an interrupted migration resumes where it stopped; then the wide tables are dropped. Trace
//! rows are not copied: they are what the spans make of them, by the rules they were made with.
//! Metric points, rollups and datasets keep their tables. The attribute index is rebuilt from
//! the copied spans when the store opens.

use rusqlite::{Connection, OptionalExtension, params};
use tokentrace_model::{SpanId, Timestamp, TraceId};

use crate::StoreError;
use crate::rows::{EventRow, Row, SpanRow, WriteState, write_rows};

/// Rows copied per transaction.
const BATCH: i64 = 20_000;

/// Whether the file has a table of that name.
pub(crate) fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "migrating to schema version 4: stored {what} {value:?} is not valid; the file was left as it was before this batch"
    ))
}

fn trace_id(s: &str) -> Result<[u8; 16], StoreError> {
    s.parse::<TraceId>()
        .map(TraceId::to_bytes)
        .map_err(|_| corrupt("trace id", s))
}

fn span_id(s: &str) -> Result<[u8; 8], StoreError> {
    s.parse::<SpanId>()
        .map(SpanId::to_bytes)
        .map_err(|_| corrupt("span id", s))
}

fn nanos(s: &str) -> Result<i64, StoreError> {
    Timestamp::parse_iso(s)
        .map(Timestamp::unix_nanos)
        .map_err(|_| corrupt("timestamp", s))
}

/// Brings a file of version 1 to 3 (already migrated to 3) to the compact tables of `current`.
pub(crate) fn to_compact_tables(conn: &mut Connection, current: &str) -> Result<(), StoreError> {
    if !table_exists(conn, "v3_spans")? {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "ALTER TABLE traces RENAME TO v3_traces;
             ALTER TABLE spans RENAME TO v3_spans;
             ALTER TABLE span_events RENAME TO v3_span_events;
             DROP TABLE IF EXISTS attribute_index;
             UPDATE attribute_keys SET complete = 0;",
        )?;
        tx.execute_batch(current)?;
        tx.commit()?;
    }
    let mut state = WriteState::load(conn)?;
    // Rows as version 4 wrote them: migration 8, which comes after, reads them so.
    state.services_in_rows = true;
    copy(
        conn,
        &mut state,
        ("spans", "v3_spans"),
        "SELECT rowid, trace_id, span_id, parent_span_id, name, kind, start_time, end_time, status,
                status_message, attributes, links, service_name, expires_at
         FROM v3_spans WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        |r| {
            let parent: Option<String> = r.get(3)?;
            let end: Option<String> = r.get(7)?;
            Ok(Row::from_span_row(SpanRow {
                trace_id: trace_id(&r.get::<_, String>(1)?)?,
                span_id: span_id(&r.get::<_, String>(2)?)?,
                parent_span_id: parent.as_deref().map(span_id).transpose()?,
                name: r.get(4)?,
                kind: crate::rows::kind_code(tokentrace_model::SpanKind::from_name(
                    &r.get::<_, String>(5)?,
                )),
                start_ns: nanos(&r.get::<_, String>(6)?)?,
                end_ns: end.as_deref().map(nanos).transpose()?,
                status: r.get(8)?,
                status_message: r.get(9)?,
                // Keyed by name, as version 3 stored them: migration 7 puts the name ids in.
                attributes: crate::names::SpanAttributes::Stored(r.get(10)?),
                links: r.get(11)?,
                service_name: r.get(12)?,
                expires_at: r.get(13)?,
                index: Vec::new(),
                project: None,
            }))
        },
    )?;
    copy(
        conn,
        &mut state,
        ("events", "v3_span_events"),
        "SELECT id, trace_id, span_id, timestamp, name, kind, severity, message, value, unit,
                attributes, expires_at
         FROM v3_span_events WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            let trace: Option<String> = r.get(1)?;
            let span: Option<String> = r.get(2)?;
            Ok(Row::from_event_row(EventRow {
                id: Some(r.get(0)?),
                trace_id: trace.as_deref().map(trace_id).transpose()?,
                span_id: span.as_deref().map(span_id).transpose()?,
                ts_ns: nanos(&r.get::<_, String>(3)?)?,
                name: r.get(4)?,
                kind: r.get(5)?,
                severity: r.get(6)?,
                message: r.get(7)?,
                value: r.get(8)?,
                unit: r.get(9)?,
                attributes: r.get(10)?,
                expires_at: r.get(11)?,
                project: None,
            }))
        },
    )?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "DROP TABLE v3_spans; DROP TABLE v3_traces; DROP TABLE v3_span_events;
         DELETE FROM migration_steps WHERE name IN ('v4 spans', 'v4 events');",
    )?;
    tx.commit()?;
    Ok(())
}

/// Copies the rows of `table` that `select` reads (by a key after the first parameter, at
/// most the second) through [`write_rows`], a batch per transaction with its progress under
/// `v4 <what>`.
fn copy(
    conn: &mut Connection,
    state: &mut WriteState,
    (what, table): (&str, &str),
    select: &str,
    row: impl Fn(&rusqlite::Row<'_>) -> Result<Row, StoreError>,
) -> Result<(), StoreError> {
    let step = format!("v4 {what}");
    let total: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
    let mut done = crate::schema::step_done(conn, &step)?;
    if total > 0 {
        tracing::info!("trace store: migrating to schema version 4: copying {total} {what}");
    }
    let mut copied = 0u64;
    loop {
        let tx = conn.transaction()?;
        let (rows, last) = {
            let mut st = tx.prepare(select)?;
            let mut q = st.query(params![done, BATCH])?;
            let mut rows = Vec::new();
            let mut last = done;
            while let Some(r) = q.next()? {
                last = r.get(0)?;
                rows.push(row(r)?);
            }
            (rows, last)
        };
        if rows.is_empty() {
            break;
        }
        let written = write_rows(&tx, &rows, state).and_then(|_| {
            crate::schema::record_step(&tx, &step, last)?;
            Ok(tx.commit()?)
        });
        if let Err(e) = written {
            state.rolled_back(conn)?;
            return Err(e);
        }
        done = last;
        copied += rows.len() as u64;
        tracing::info!("trace store: schema version 4: {copied} of {total} {what} copied");
    }
    Ok(())
}
