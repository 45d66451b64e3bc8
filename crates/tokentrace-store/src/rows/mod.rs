//! Records encoded as rows of their tables, and the statements that write them (used by
//! `write`, which writes a batch in one transaction).

use rusqlite::types::Value as SqlValue;
use tokentrace_model::{
    MetricPoint, SpanEvent, SpanEventBody, SpanId, SpanKind, SpanRecord, Timestamp, TraceId,
};

use crate::names::SpanAttributes;
use crate::{Record, StoreError};

mod write;

pub(crate) use write::{WriteState, write_rows};

/// A span row. Its expiry is its trace's (spans are deleted with their trace), so the row's
/// own `expires_at` is left NULL (rows written before version 8 have theirs, unread); its kind
/// is stored as a code ([`kind_code`]), its service name only when it is not its trace's
/// (`write::stored_service`). A span already stored (same trace, same id) is left to
/// [`UPDATE_SPAN`]: the insert is ignored, and its new row's id is the connection's last
/// insert id (an upsert with `RETURNING` cost a third more: SQLite gathers what it returns in
/// a temporary table, every time).
const INSERT_SPAN: &str = "INSERT OR IGNORE INTO span_rows (trace, span_id, parent_span_id, name, kind, start_ns, end_ns, status, status_message, attributes, links, service_name)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// The span of [`INSERT_SPAN`] when it was stored already: replaced, unless it had ended and
/// this one has not (a span flushed unfinished does not undo its end); returns its id when it
/// was replaced.
const UPDATE_SPAN: &str = "UPDATE span_rows SET
    parent_span_id = ?3, name = ?4, kind = ?5, start_ns = ?6, end_ns = ?7, status = ?8,
    status_message = ?9, attributes = ?10, links = ?11, service_name = ?12, expires_at = NULL
WHERE trace = ?1 AND span_id = ?2 AND (?7 IS NOT NULL OR end_ns IS NULL)
RETURNING id";

/// A span kind as `span_rows.kind` stores it since version 8: its OpenTelemetry number as
/// text (one byte, not the name's eight); the `spans` view gives the names back.
pub(crate) fn kind_code(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Internal => "1",
        SpanKind::Server => "2",
        SpanKind::Client => "3",
        SpanKind::Producer => "4",
        SpanKind::Consumer => "5",
    }
}

/// A stored span kind: a code of [`kind_code`], or a name as versions up to 7 stored it.
pub(crate) fn stored_kind(stored: &str) -> SpanKind {
    match stored {
        "2" => SpanKind::Server,
        "3" => SpanKind::Client,
        "4" => SpanKind::Producer,
        "5" => SpanKind::Consumer,
        other => SpanKind::from_name(other),
    }
}

/// A new trace row; its key is the connection's last insert id.
const INSERT_TRACE: &str = "INSERT INTO trace_rows (trace_id, service_name, root_span_id, root_is_true_root, start_ns, end_ns, expires_at, project, last_start_ns)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Folds a batch's update into a trace row (the writer reads its service name after) (`?3` to `?6` and `?7` are NULL/0 when the batch
/// has only events of the trace; `?9` is the latest start of the batch's spans). A trace expires with the last of its spans (none if one of
/// them never expires); until it has a span, with the last of its events (`?8`). `start_ns` and
/// `expires_at` on the right are the values before the update.
const UPDATE_TRACE: &str = "UPDATE trace_rows SET
    service_name = COALESCE(service_name, ?2),
    root_span_id = CASE
        WHEN ?3 IS NULL THEN root_span_id
        WHEN root_is_true_root = 1 THEN root_span_id
        WHEN ?4 = 1 THEN ?3
        WHEN start_ns IS NULL OR ?5 < start_ns THEN ?3
        ELSE root_span_id END,
    root_is_true_root = MAX(root_is_true_root, ?4),
    start_ns = CASE WHEN start_ns IS NULL THEN ?5 WHEN ?5 IS NULL THEN start_ns ELSE MIN(start_ns, ?5) END,
    end_ns = CASE WHEN end_ns IS NULL THEN ?6 WHEN ?6 IS NULL THEN end_ns ELSE MAX(end_ns, ?6) END,
    last_start_ns = CASE WHEN last_start_ns IS NULL THEN ?9 WHEN ?9 IS NULL THEN last_start_ns
        ELSE MAX(last_start_ns, ?9) END,
    expires_at = CASE
        WHEN ?5 IS NOT NULL THEN CASE
            WHEN start_ns IS NULL THEN ?7
            WHEN expires_at IS NULL OR ?7 IS NULL THEN NULL
            ELSE MAX(expires_at, ?7) END
        WHEN start_ns IS NULL THEN CASE
            WHEN expires_at IS NULL OR ?8 IS NULL THEN NULL
            ELSE MAX(expires_at, ?8) END
        ELSE expires_at END
WHERE id = ?1";

const INSERT_EVENT: &str = "INSERT INTO event_rows (id, trace, trace_id, span_id, ts_ns, name, kind, severity, message, value, unit, attributes, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// [`INSERT_EVENT`] unless the span already has the same event (time, name, kind, message,
/// value, attributes): for events of spans written again (see `write::Resent`).
const INSERT_EVENT_ONCE: &str = "INSERT INTO event_rows (id, trace, trace_id, span_id, ts_ns, name, kind, severity, message, value, unit, attributes, expires_at)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13
WHERE NOT EXISTS (SELECT 1 FROM event_rows WHERE trace = ?2 AND span_id = ?4 AND ts_ns = ?5
    AND name = ?6 AND kind = ?7 AND message IS ?9 AND value IS ?10 AND attributes = ?12)";

const INSERT_METRIC: &str =
    "INSERT INTO metric_points (series, ts_ns, value, trace_id, span_id, expires_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// A record encoded for its table: ids as bytes, times in unix nanoseconds, attributes as
/// JSON (a span's as names and values, which the writer keys by name ids). Encoding happens on
/// the caller's thread, so the writer thread only looks names up, binds and executes.
#[derive(Clone, Debug, PartialEq)]
pub struct Row(RowKind);

#[derive(Clone, Debug, PartialEq)]
enum RowKind {
    Span(SpanRow),
    Event(EventRow),
    Metric(MetricRow),
}

/// A `span_rows` row, with the trace id its key is found by.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SpanRow {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) parent_span_id: Option<[u8; 8]>,
    pub(crate) name: String,
    /// As stored: [`kind_code`].
    pub(crate) kind: &'static str,
    pub(crate) start_ns: i64,
    pub(crate) end_ns: Option<i64>,
    pub(crate) status: Option<String>,
    pub(crate) status_message: Option<String>,
    pub(crate) attributes: SpanAttributes,
    pub(crate) links: Option<String>,
    pub(crate) service_name: Option<String>,
    /// Folded into its trace's expiry; not stored in the row.
    pub(crate) expires_at: Option<i64>,
    /// Its entries in the attribute index: (key id, value).
    pub(crate) index: Vec<(i64, SqlValue)>,
    /// Its project, unless `default` (the trace row it goes under is that project's).
    pub(crate) project: Option<String>,
}

/// An `event_rows` row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EventRow {
    /// Kept when a migration copies a row; new rows get the next id.
    pub(crate) id: Option<i64>,
    pub(crate) trace_id: Option<[u8; 16]>,
    pub(crate) span_id: Option<[u8; 8]>,
    pub(crate) ts_ns: i64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) severity: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) value: Option<f64>,
    pub(crate) unit: Option<String>,
    pub(crate) attributes: String,
    pub(crate) expires_at: Option<i64>,
    /// Its project, unless `default`.
    pub(crate) project: Option<String>,
}

/// A `metric_points` row, with its series' name, unit and labels (the writer finds the series
/// id).
#[derive(Clone, Debug, PartialEq)]
struct MetricRow {
    name: String,
    ts_nanos: i64,
    value: f64,
    unit: String,
    labels: String,
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    expires_at: Option<i64>,
}

/// The project `attributes` name, unless `default`.
fn project(attributes: &tokentrace_model::Attributes) -> Option<String> {
    let p = tokentrace_model::project_of(attributes);
    (p != tokentrace_model::DEFAULT_PROJECT).then(|| p.to_string())
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode JSON: {e}")))
}

impl Row {
    /// A `span_rows` row (which also updates its trace's row). The span's `events` are not
    /// part of it.
    pub fn span(s: &SpanRecord) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Span(SpanRow {
            trace_id: s.trace_id.to_bytes(),
            span_id: s.span_id.to_bytes(),
            parent_span_id: s.parent_span_id.map(|p| p.to_bytes()),
            name: s.name.clone(),
            kind: kind_code(s.kind),
            start_ns: s.start_time.unix_nanos(),
            end_ns: s.end_time.map(Timestamp::unix_nanos),
            status: s.status.map(|st| st.as_str().to_string()),
            status_message: s.status_message.clone(),
            attributes: SpanAttributes::of(&s.attributes)?,
            links: if s.links.is_empty() {
                None
            } else {
                Some(json(&s.links)?)
            },
            service_name: s.service_name.clone(),
            expires_at: s.expires_at.map(Timestamp::unix_nanos),
            index: Vec::new(),
            project: project(&s.attributes),
        })))
    }

    pub(crate) fn from_span_row(s: SpanRow) -> Row {
        Row(RowKind::Span(s))
    }

    pub(crate) fn from_event_row(e: EventRow) -> Row {
        Row(RowKind::Event(e))
    }

    /// The row with these attribute index entries (a span row; other rows have none).
    pub(crate) fn with_index(mut self, entries: Vec<(i64, SqlValue)>) -> Self {
        if let RowKind::Span(s) = &mut self.0 {
            s.index = entries;
        }
        self
    }

    /// An `event_rows` row.
    pub fn event(e: &SpanEvent) -> Result<Row, StoreError> {
        let (kind, severity, message, value, unit) = match &e.body {
            SpanEventBody::Log { severity, message } => (
                "log",
                Some(severity.as_str().to_string()),
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
            id: None,
            trace_id: e.trace_id.map(|t| t.to_bytes()),
            span_id: e.span_id.map(|s| s.to_bytes()),
            ts_ns: e.timestamp.unix_nanos(),
            name: e.name.clone(),
            kind: kind.to_string(),
            severity,
            message,
            value,
            unit,
            attributes: json(&e.attributes)?,
            expires_at: e.expires_at.map(Timestamp::unix_nanos),
            project: project(&e.attributes),
        })))
    }

    /// A `metric_points` row.
    pub fn metric(m: &MetricPoint) -> Result<Row, StoreError> {
        Ok(Row(RowKind::Metric(MetricRow {
            name: m.name.clone(),
            ts_nanos: m.timestamp.unix_nanos(),
            value: m.value,
            unit: m.unit.clone(),
            labels: json(&m.labels)?,
            trace_id: m.trace_id.map(TraceId::to_bytes),
            span_id: m.span_id.map(SpanId::to_bytes),
            expires_at: m.expires_at.map(Timestamp::unix_nanos),
        })))
    }

    /// About how much memory the row holds, in bytes: what the writer's backlog counts.
    pub fn size(&self) -> u64 {
        let text = |s: &str| s.len() as u64;
        let opt = |s: &Option<String>| s.as_deref().map_or(0, text);
        64 + match &self.0 {
            RowKind::Span(s) => {
                48 + text(&s.name)
                    + opt(&s.status)
                    + opt(&s.status_message)
                    + s.attributes.len()
                    + opt(&s.links)
                    + opt(&s.service_name)
                    + 32 * s.index.len() as u64
            }
            RowKind::Event(e) => {
                40 + text(&e.name)
                    + text(&e.kind)
                    + opt(&e.severity)
                    + opt(&e.message)
                    + opt(&e.unit)
                    + text(&e.attributes)
            }
            RowKind::Metric(m) => 48 + text(&m.name) + text(&m.unit) + text(&m.labels),
        }
    }

    /// Whether this is a span's row.
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
