//! The single writer thread: batches records into transactions, appends dataset rows, deletes
//! expired rows in small chunks between writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use serde_json::{Map, Value};
use tokentrace_model::{MetricPoint, SpanEvent, SpanEventBody, SpanRecord, Timestamp};

use crate::{CommitObserver, Record, StoreError};

/// Rows deleted per retention transaction.
const EXPIRE_CHUNK: usize = 2_000;

pub(crate) enum Cmd {
    Write(Vec<Row>),
    Flush(SyncSender<Result<(), String>>),
    AppendRows {
        dataset_id: String,
        rows: Vec<Map<String, Value>>,
        reply: SyncSender<Result<u64, String>>,
    },
    Expire {
        now: Timestamp,
        reply: SyncSender<Result<u64, String>>,
    },
    Close,
}

/// Counters the writer keeps about itself.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub max_batch_rows: AtomicU64,
    pub rows_expired: AtomicU64,
    pub write_errors: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed with records.
    pub batches_committed: u64,
    /// Records committed.
    pub rows_committed: u64,
    /// Largest transaction so far, in records.
    pub max_batch_rows: u64,
    /// Rows deleted by retention.
    pub rows_expired: u64,
    /// Batches that failed to commit (logged; their records are lost).
    pub write_errors: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WriterStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            batches_committed: l(&self.batches),
            rows_committed: l(&self.rows),
            max_batch_rows: l(&self.max_batch_rows),
            rows_expired: l(&self.rows_expired),
            write_errors: l(&self.write_errors),
        }
    }
}

struct Expiry {
    now: i64,
    deleted: u64,
    reply: SyncSender<Result<u64, String>>,
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    pub counters: Arc<Counters>,
    on_commit: Option<CommitObserver>,
    pending: Vec<Row>,
    first_pending: Option<Instant>,
    expiry: Option<Expiry>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        batch_max_rows: usize,
        flush_interval: Duration,
        counters: Arc<Counters>,
        on_commit: Option<CommitObserver>,
    ) -> Self {
        Self {
            conn,
            batch_max_rows: batch_max_rows.max(1),
            flush_interval,
            counters,
            on_commit,
            pending: Vec::new(),
            first_pending: None,
            expiry: None,
        }
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            let cmd = if self.expiry.is_some() {
                match rx.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Cmd::Close),
                }
            } else {
                let wait = match self.first_pending {
                    Some(t) => self.flush_interval.saturating_sub(t.elapsed()),
                    None => Duration::from_secs(3600),
                };
                match rx.recv_timeout(wait) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Cmd::Close),
                }
            };
            match cmd {
                Some(Cmd::Write(records)) => {
                    if self.first_pending.is_none() {
                        self.first_pending = Some(Instant::now());
                    }
                    self.pending.extend(records);
                    if self.pending.len() >= self.batch_max_rows {
                        let _ = self.commit_pending(); // failures are logged and counted
                    }
                }
                Some(Cmd::Flush(reply)) => {
                    let r = self.commit_pending();
                    let _ = reply.send(r);
                }
                Some(Cmd::AppendRows {
                    dataset_id,
                    rows,
                    reply,
                }) => {
                    let _ = self.commit_pending(); // failures are logged and counted
                    let r =
                        append_rows(&mut self.conn, &dataset_id, rows).map_err(|e| e.to_string());
                    let _ = reply.send(r);
                }
                Some(Cmd::Expire { now, reply }) => match &self.expiry {
                    Some(_) => {
                        let _ = reply.send(Err("retention is already running".into()));
                    }
                    None => {
                        self.expiry = Some(Expiry {
                            now: now.unix_nanos(),
                            deleted: 0,
                            reply,
                        });
                    }
                },
                Some(Cmd::Close) => {
                    let _ = self.commit_pending(); // failures are logged and counted
                    if let Some(e) = self.expiry.take() {
                        let _ = e.reply.send(Err("store closed".into()));
                    }
                    return;
                }
                None => {
                    if self
                        .first_pending
                        .is_some_and(|t| t.elapsed() >= self.flush_interval)
                    {
                        let _ = self.commit_pending(); // failures are logged and counted
                    }
                }
            }
            if self
                .first_pending
                .is_some_and(|t| t.elapsed() >= self.flush_interval)
            {
                let _ = self.commit_pending(); // failures are logged and counted
            }
            self.expire_step();
        }
    }

    /// Commits what is pending in one transaction. Errors are logged and counted.
    fn commit_pending(&mut self) -> Result<(), String> {
        self.first_pending = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        let n = records.len() as u64;
        let started = Instant::now();
        match write_rows(&mut self.conn, &records) {
            Ok(()) => {
                let c = &self.counters;
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.rows.fetch_add(n, Ordering::Relaxed);
                c.max_batch_rows.fetch_max(n, Ordering::Relaxed);
                if let Some(observe) = &self.on_commit {
                    (observe.0)(n, started.elapsed());
                }
                Ok(())
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("trace store: a batch of {n} records failed to commit: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Deletes one chunk of expired rows; finishes the expiry when nothing is left.
    fn expire_step(&mut self) {
        let Some(expiry) = &mut self.expiry else {
            return;
        };
        match expire_chunk(&mut self.conn, expiry.now) {
            Ok(n) => {
                expiry.deleted += n;
                self.counters.rows_expired.fetch_add(n, Ordering::Relaxed);
                if n == 0
                    && let Some(done) = self.expiry.take()
                {
                    let _ = done.reply.send(Ok(done.deleted));
                }
            }
            Err(e) => {
                if let Some(done) = self.expiry.take() {
                    let _ = done.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

const INSERT_SPAN: &str = "INSERT INTO spans (trace_id, span_id, parent_span_id, name, kind, start_time, end_time, duration_ms, status, status_message, attributes, links, service_name, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    parent_span_id = excluded.parent_span_id, name = excluded.name, kind = excluded.kind,
    start_time = excluded.start_time, end_time = excluded.end_time, duration_ms = excluded.duration_ms,
    status = excluded.status, status_message = excluded.status_message, attributes = excluded.attributes,
    links = excluded.links, service_name = excluded.service_name, expires_at = excluded.expires_at
WHERE excluded.end_time IS NOT NULL OR spans.end_time IS NULL";

const UPSERT_TRACE: &str = "INSERT INTO traces (trace_id, service_name, root_span_id, root_is_true_root, start_time, end_time, timestamp, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)
ON CONFLICT (trace_id) DO UPDATE SET
    service_name = COALESCE(traces.service_name, excluded.service_name),
    root_span_id = CASE
        WHEN traces.root_is_true_root = 1 THEN traces.root_span_id
        WHEN excluded.root_is_true_root = 1 THEN excluded.root_span_id
        WHEN excluded.start_time < traces.start_time THEN excluded.root_span_id
        ELSE traces.root_span_id END,
    root_is_true_root = MAX(traces.root_is_true_root, excluded.root_is_true_root),
    start_time = MIN(traces.start_time, excluded.start_time),
    timestamp = MIN(traces.start_time, excluded.start_time),
    end_time = CASE
        WHEN traces.end_time IS NULL THEN excluded.end_time
        WHEN excluded.end_time IS NULL THEN traces.end_time
        ELSE MAX(traces.end_time, excluded.end_time) END,
    expires_at = CASE
        WHEN traces.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
        ELSE MAX(traces.expires_at, excluded.expires_at) END";

const INSERT_EVENT: &str = "INSERT INTO span_events (trace_id, span_id, timestamp, name, kind, severity, message, value, unit, attributes, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const INSERT_METRIC: &str = "INSERT INTO metrics (name, timestamp, ts_nanos, value, unit, labels, trace_id, span_id, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// A record encoded for its table: ids as hex, timestamps in the stored form, attributes as
/// JSON. Encoding happens on the caller's thread, so the writer thread only binds and executes.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(RowKind);

#[derive(Clone, Debug, PartialEq)]
enum RowKind {
    Span {
        trace_id: String,
        span_id: String,
        parent_span_id: Option<String>,
        name: String,
        kind: &'static str,
        start_time: String,
        end_time: Option<String>,
        duration_ms: Option<f64>,
        status: Option<&'static str>,
        status_message: Option<String>,
        attributes: String,
        links: Option<String>,
        service_name: Option<String>,
        is_root: bool,
        expires_at: Option<i64>,
    },
    Event {
        trace_id: Option<String>,
        span_id: Option<String>,
        timestamp: String,
        name: String,
        kind: &'static str,
        severity: Option<&'static str>,
        message: Option<String>,
        value: Option<f64>,
        unit: Option<String>,
        attributes: String,
        expires_at: Option<i64>,
    },
    Metric {
        name: String,
        timestamp: String,
        ts_nanos: i64,
        value: f64,
        unit: String,
        labels: String,
        trace_id: Option<String>,
        span_id: Option<String>,
        expires_at: Option<i64>,
    },
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))
}

impl Row {
    /// A `spans` row (which also updates its `traces` row). The span's `events` are not part of it.
    pub fn span(s: &SpanRecord) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Span {
            trace_id: s.trace_id.to_string(),
            span_id: s.span_id.to_string(),
            parent_span_id: s.parent_span_id.map(|p| p.to_string()),
            name: s.name.clone(),
            kind: s.kind.as_str(),
            start_time: s.start_time.to_sql(),
            end_time: s.end_time.map(Timestamp::to_sql),
            duration_ms: s.duration_ms(),
            status: s.status.map(|st| st.as_str()),
            status_message: s.status_message.clone(),
            attributes: json(&s.attributes)?,
            links: if s.links.is_empty() {
                None
            } else {
                Some(json(&s.links)?)
            },
            service_name: s.service_name.clone(),
            is_root: s.parent_span_id.is_none(),
            expires_at: s.expires_at.map(Timestamp::unix_nanos),
        }))
    }

    /// A `span_events` row.
    pub fn event(e: &SpanEvent) -> Result<Row, StoreError> {
        let (kind, severity, message, value, unit) = match &e.body {
            SpanEventBody::Log { severity, message } => (
                "log",
                Some(severity.as_str()),
                Some(message.clone()),
                None,
                None,
            ),
            SpanEventBody::Metric { value, unit } => (
                "metric",
                None,
                None,
                Some(value.as_f64()),
                Some(unit.clone()),
            ),
            SpanEventBody::Other => ("event", None, None, None, None),
        };
        Ok(Row(RowKind::Event {
            trace_id: e.trace_id.map(|t| t.to_string()),
            span_id: e.span_id.map(|s| s.to_string()),
            timestamp: e.timestamp.to_sql(),
            name: e.name.clone(),
            kind,
            severity,
            message,
            value,
            unit,
            attributes: json(&e.attributes)?,
            expires_at: e.expires_at.map(Timestamp::unix_nanos),
        }))
    }

    /// A `metrics` row.
    pub fn metric(m: &MetricPoint) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Metric {
            name: m.name.clone(),
            timestamp: m.timestamp.to_sql(),
            ts_nanos: m.timestamp.unix_nanos(),
            value: m.value,
            unit: m.unit.clone(),
            labels: json(&m.labels)?,
            trace_id: m.trace_id.map(|t| t.to_string()),
            span_id: m.span_id.map(|s| s.to_string()),
            expires_at: m.expires_at.map(Timestamp::unix_nanos),
        }))
    }

    /// The row for a record.
    pub fn from_record(r: &Record) -> Result<Row, StoreError> {
        match r {
            Record::Span(s) => Row::span(s),
            Record::Event(e) => Row::event(e),
            Record::Metric(m) => Row::metric(m),
        }
    }
}

/// What a batch changes in one `traces` row: its spans folded in arrival order, with the same
/// rules as the upsert, so a trace costs one upsert per batch instead of one per span.
struct TraceUpdate<'a> {
    service_name: Option<&'a str>,
    root_span_id: &'a str,
    root_is_true_root: bool,
    start_time: &'a str,
    end_time: Option<&'a str>,
    expires_at: Option<i64>,
}

#[derive(Default)]
struct TraceUpdates<'a> {
    by_trace: Vec<(&'a str, TraceUpdate<'a>)>,
    index: std::collections::HashMap<&'a str, usize>,
}

impl<'a> TraceUpdates<'a> {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        trace_id: &'a str,
        service_name: Option<&'a str>,
        span_id: &'a str,
        is_root: bool,
        start_time: &'a str,
        end_time: Option<&'a str>,
        expires_at: Option<i64>,
    ) {
        let Some(&i) = self.index.get(trace_id) else {
            self.index.insert(trace_id, self.by_trace.len());
            self.by_trace.push((
                trace_id,
                TraceUpdate {
                    service_name,
                    root_span_id: span_id,
                    root_is_true_root: is_root,
                    start_time,
                    end_time,
                    expires_at,
                },
            ));
            return;
        };
        let t = &mut self.by_trace[i].1;
        if !t.root_is_true_root && (is_root || start_time < t.start_time) {
            t.root_span_id = span_id;
            t.root_is_true_root = is_root;
        }
        t.service_name = t.service_name.or(service_name);
        t.start_time = t.start_time.min(start_time);
        t.end_time = match (t.end_time, end_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        t.expires_at = match (t.expires_at, expires_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
}

/// Writes rows in one transaction, the statements prepared once per transaction.
pub(crate) fn write_rows(conn: &mut Connection, rows: &[Row]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut span = tx.prepare_cached(INSERT_SPAN)?;
        let mut event = tx.prepare_cached(INSERT_EVENT)?;
        let mut metric = tx.prepare_cached(INSERT_METRIC)?;
        let mut traces = TraceUpdates::default();
        for Row(row) in rows {
            match row {
                RowKind::Span {
                    trace_id,
                    span_id,
                    parent_span_id,
                    name,
                    kind,
                    start_time,
                    end_time,
                    duration_ms,
                    status,
                    status_message,
                    attributes,
                    links,
                    service_name,
                    is_root,
                    expires_at,
                } => {
                    span.execute(params![
                        trace_id,
                        span_id,
                        parent_span_id,
                        name,
                        kind,
                        start_time,
                        end_time,
                        duration_ms,
                        status,
                        status_message,
                        attributes,
                        links,
                        service_name,
                        expires_at,
                    ])?;
                    traces.add(
                        trace_id,
                        service_name.as_deref(),
                        span_id,
                        *is_root,
                        start_time,
                        end_time.as_deref(),
                        *expires_at,
                    );
                }
                RowKind::Event {
                    trace_id,
                    span_id,
                    timestamp,
                    name,
                    kind,
                    severity,
                    message,
                    value,
                    unit,
                    attributes,
                    expires_at,
                } => {
                    event.execute(params![
                        trace_id, span_id, timestamp, name, kind, severity, message, value, unit,
                        attributes, expires_at,
                    ])?;
                }
                RowKind::Metric {
                    name,
                    timestamp,
                    ts_nanos,
                    value,
                    unit,
                    labels,
                    trace_id,
                    span_id,
                    expires_at,
                } => {
                    metric.execute(params![
                        name, timestamp, ts_nanos, value, unit, labels, trace_id, span_id,
                        expires_at,
                    ])?;
                }
            }
        }
        let mut trace = tx.prepare_cached(UPSERT_TRACE)?;
        for (trace_id, t) in traces.by_trace {
            trace.execute(params![
                trace_id,
                t.service_name,
                t.root_span_id,
                t.root_is_true_root as i64,
                t.start_time,
                t.end_time,
                t.expires_at,
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn append_rows(
    conn: &mut Connection,
    dataset_id: &str,
    rows: Vec<Map<String, Value>>,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR IGNORE INTO datasets (dataset_id, created_at) VALUES (?1, ?2)",
        params![dataset_id, Timestamp::now().to_sql()],
    )?;
    let start: i64 = tx.query_row(
        "SELECT row_count FROM datasets WHERE dataset_id = ?1",
        [dataset_id],
        |r| r.get(0),
    )?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO dataset_rows (dataset_id, row_index, row) VALUES (?1, ?2, ?3)",
        )?;
        for (i, row) in rows.iter().enumerate() {
            st.execute(params![dataset_id, start + i as i64, json(row)?])?;
        }
    }
    let count = start + rows.len() as i64;
    tx.execute(
        "UPDATE datasets SET row_count = ?2 WHERE dataset_id = ?1",
        params![dataset_id, count],
    )?;
    tx.commit()?;
    Ok(count as u64)
}

/// Deletes up to a chunk of expired rows from each table in one short transaction.
fn expire_chunk(conn: &mut Connection, now: i64) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let mut deleted = 0;
    for table in ["spans", "span_events", "metrics", "traces"] {
        // Table names come from this fixed list, never from a caller.
        let sql = format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE expires_at <= ?1 LIMIT {EXPIRE_CHUNK})"
        );
        deleted += tx.prepare_cached(&sql)?.execute([now])? as u64;
    }
    tx.commit()?;
    Ok(deleted)
}
