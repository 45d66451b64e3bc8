//! Records encoded as rows of their tables, and the statements that write a batch of them in
//! one transaction.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params};
use tokentrace_model::{MetricPoint, SpanEvent, SpanEventBody, SpanRecord, Timestamp};

use crate::rollups::{Rollup, SeriesIds, UPSERT_ROLLUP, minute_of};
use crate::{Record, StoreError};

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

const UPSERT_INDEX: &str =
    "INSERT INTO attribute_index (key, value, start_ns, trace_id, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (key, value, start_ns, trace_id) DO UPDATE SET expires_at = CASE
    WHEN expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
    ELSE MAX(expires_at, excluded.expires_at) END";

const INSERT_METRIC: &str = "INSERT INTO metrics (name, timestamp, ts_nanos, value, unit, labels, trace_id, span_id, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// A record encoded for its table: ids as hex, timestamps in the stored form, attributes as
/// JSON. Encoding happens on the caller's thread, so the writer thread only binds and executes.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(RowKind);

#[derive(Clone, Debug, PartialEq)]
enum RowKind {
    Span(SpanRow),
    Event(EventRow),
    Metric(MetricRow),
}

/// A `spans` row.
#[derive(Clone, Debug, PartialEq)]
struct SpanRow {
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
    expires_at: Option<i64>,
    /// Its entries in the attribute index: (key id, value).
    index: Vec<(i64, SqlValue)>,
    /// Start, in unix nanoseconds (orders its index entries).
    start_ns: i64,
}

/// A `span_events` row.
#[derive(Clone, Debug, PartialEq)]
struct EventRow {
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
}

/// A `metrics` row.
#[derive(Clone, Debug, PartialEq)]
struct MetricRow {
    name: String,
    timestamp: String,
    ts_nanos: i64,
    value: f64,
    unit: String,
    labels: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    expires_at: Option<i64>,
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))
}

impl Row {
    /// A `spans` row (which also updates its `traces` row). The span's `events` are not part of it.
    pub fn span(s: &SpanRecord) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Span(SpanRow {
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
            expires_at: s.expires_at.map(Timestamp::unix_nanos),
            index: Vec::new(),
            start_ns: s.start_time.unix_nanos(),
        })))
    }

    /// The row with these attribute index entries (a span row; other rows have none).
    pub(crate) fn with_index(mut self, entries: Vec<(i64, SqlValue)>) -> Self {
        if let RowKind::Span(s) = &mut self.0 {
            s.index = entries;
        }
        self
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
        Ok(Row(RowKind::Event(EventRow {
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
        })))
    }

    /// A `metrics` row.
    pub fn metric(m: &MetricPoint) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Metric(MetricRow {
            name: m.name.clone(),
            timestamp: m.timestamp.to_sql(),
            ts_nanos: m.timestamp.unix_nanos(),
            value: m.value,
            unit: m.unit.clone(),
            labels: json(&m.labels)?,
            trace_id: m.trace_id.map(|t| t.to_string()),
            span_id: m.span_id.map(|s| s.to_string()),
            expires_at: m.expires_at.map(Timestamp::unix_nanos),
        })))
    }

    /// About how much memory the row holds, in bytes: what the writer's backlog counts.
    pub fn size(&self) -> u64 {
        let text = |s: &str| s.len() as u64;
        let opt = |s: &Option<String>| s.as_deref().map_or(0, text);
        64 + match &self.0 {
            RowKind::Span(s) => {
                text(&s.trace_id)
                    + text(&s.span_id)
                    + opt(&s.parent_span_id)
                    + text(&s.name)
                    + text(&s.start_time)
                    + opt(&s.end_time)
                    + opt(&s.status_message)
                    + text(&s.attributes)
                    + opt(&s.links)
                    + opt(&s.service_name)
                    + 32 * s.index.len() as u64
            }
            RowKind::Event(e) => {
                opt(&e.trace_id)
                    + opt(&e.span_id)
                    + text(&e.timestamp)
                    + text(&e.name)
                    + opt(&e.message)
                    + opt(&e.unit)
                    + text(&e.attributes)
            }
            RowKind::Metric(m) => {
                text(&m.name)
                    + text(&m.timestamp)
                    + text(&m.unit)
                    + text(&m.labels)
                    + opt(&m.trace_id)
                    + opt(&m.span_id)
            }
        }
    }

    /// Whether this is a `spans` row.
    pub(crate) fn is_span(&self) -> bool {
        matches!(self.0, RowKind::Span(_))
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

impl<'a> TraceUpdate<'a> {
    fn of(s: &'a SpanRow) -> Self {
        Self {
            service_name: s.service_name.as_deref(),
            root_span_id: &s.span_id,
            root_is_true_root: s.parent_span_id.is_none(),
            start_time: &s.start_time,
            end_time: s.end_time.as_deref(),
            expires_at: s.expires_at,
        }
    }

    fn fold(&mut self, s: TraceUpdate<'a>) {
        if !self.root_is_true_root && (s.root_is_true_root || s.start_time < self.start_time) {
            self.root_span_id = s.root_span_id;
            self.root_is_true_root = s.root_is_true_root;
        }
        self.service_name = self.service_name.or(s.service_name);
        self.start_time = self.start_time.min(s.start_time);
        self.end_time = match (self.end_time, s.end_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.expires_at = match (self.expires_at, s.expires_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
}

#[derive(Default)]
struct TraceUpdates<'a> {
    by_trace: Vec<(&'a str, TraceUpdate<'a>)>,
    index: std::collections::HashMap<&'a str, usize>,
}

impl<'a> TraceUpdates<'a> {
    fn add(&mut self, s: &'a SpanRow) {
        let update = TraceUpdate::of(s);
        match self.index.get(s.trace_id.as_str()) {
            Some(&i) => self.by_trace[i].1.fold(update),
            None => {
                self.index.insert(&s.trace_id, self.by_trace.len());
                self.by_trace.push((&s.trace_id, update));
            }
        }
    }
}

/// A value as a map key (SQLite values are not `Hash`): its type and its text.
fn index_key(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => "n".into(),
        SqlValue::Integer(i) => format!("i{i}"),
        SqlValue::Real(f) => format!("r{f}"),
        SqlValue::Text(t) => format!("t{t}"),
        SqlValue::Blob(b) => format!("b{b:?}"),
    }
}

/// Writes rows in one transaction, the statements prepared once per transaction; every metric
/// point also lands in its series' per-minute rollup.
pub(crate) fn write_rows(
    conn: &mut Connection,
    rows: &[Row],
    series: &mut SeriesIds,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut rollups: HashMap<(i64, i64), Rollup> = HashMap::new();
        // (key, trace, value) → (earliest start, latest expiry), and the entries in order.
        let mut indexed: HashMap<(i64, &str, String), (i64, Option<i64>)> = HashMap::new();
        let mut index_values: Vec<(i64, &String, &SqlValue)> = Vec::new();
        let mut span = tx.prepare_cached(INSERT_SPAN)?;
        let mut event = tx.prepare_cached(INSERT_EVENT)?;
        let mut metric = tx.prepare_cached(INSERT_METRIC)?;
        let mut traces = TraceUpdates::default();
        for Row(row) in rows {
            match row {
                RowKind::Span(s) => {
                    span.execute(params![
                        s.trace_id,
                        s.span_id,
                        s.parent_span_id,
                        s.name,
                        s.kind,
                        s.start_time,
                        s.end_time,
                        s.duration_ms,
                        s.status,
                        s.status_message,
                        s.attributes,
                        s.links,
                        s.service_name,
                        s.expires_at,
                    ])?;
                    traces.add(s);
                    for (key, value) in &s.index {
                        // The spans of a trace mostly share their values: one write each, at
                        // the earliest start among them.
                        let entry = (*key, s.trace_id.as_str(), index_key(value));
                        match indexed.get_mut(&entry) {
                            Some((start, expires)) => {
                                *start = (*start).min(s.start_ns);
                                *expires = expires.zip(s.expires_at).map(|(a, b)| a.max(b));
                            }
                            None => {
                                indexed.insert(entry, (s.start_ns, s.expires_at));
                                index_values.push((*key, &s.trace_id, value));
                            }
                        }
                    }
                }
                RowKind::Event(e) => {
                    event.execute(params![
                        e.trace_id,
                        e.span_id,
                        e.timestamp,
                        e.name,
                        e.kind,
                        e.severity,
                        e.message,
                        e.value,
                        e.unit,
                        e.attributes,
                        e.expires_at,
                    ])?;
                }
                RowKind::Metric(m) => {
                    metric.execute(params![
                        m.name,
                        m.timestamp,
                        m.ts_nanos,
                        m.value,
                        m.unit,
                        m.labels,
                        m.trace_id,
                        m.span_id,
                        m.expires_at,
                    ])?;
                    let key = (
                        series.get(&tx, &m.name, &m.unit, &m.labels)?,
                        minute_of(m.ts_nanos),
                    );
                    rollups
                        .entry(key)
                        .and_modify(|r| {
                            r.sum += m.value;
                            r.count += 1;
                            r.min = r.min.min(m.value);
                            r.max = r.max.max(m.value);
                            r.expires_at = r.expires_at.zip(m.expires_at).map(|(a, b)| a.max(b));
                        })
                        .or_insert(Rollup {
                            sum: m.value,
                            count: 1,
                            min: m.value,
                            max: m.value,
                            expires_at: m.expires_at,
                        });
                }
            }
        }
        let mut index = tx.prepare_cached(UPSERT_INDEX)?;
        for (key, trace_id, value) in index_values {
            let (start, expires) = indexed
                .get(&(key, trace_id.as_str(), index_key(value)))
                .copied()
                .unwrap_or_default();
            index.execute(params![key, value, start, trace_id, expires])?;
        }
        let mut rollup = tx.prepare_cached(UPSERT_ROLLUP)?;
        for ((series, minute), r) in rollups {
            rollup.execute(params![
                series,
                minute,
                r.sum,
                r.count,
                r.min,
                r.max,
                r.expires_at
            ])?;
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
