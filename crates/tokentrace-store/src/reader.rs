//! Read queries, on a small pool of read-only connections.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params_from_iter};
use serde_json::Value;
use tokentrace_model::query::{
    Filter, FilterTarget, QueryConditionOp, SpanField, TraceOrderField, TraceQuery,
};
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricValue, Span, SpanEvent, SpanEventBody, SpanId,
    SpanStatus, Timestamp, Trace, TraceId,
};

use crate::StoreError;
use crate::index::{IndexedKeys, sql_value};

/// Deepest span tree walked when the caller sets no `max_depth`.
pub(crate) const MAX_TREE_DEPTH: u32 = 10_000;

/// A table, for [`StoreReader::count_rows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `traces`.
    Traces,
    /// `spans`.
    Spans,
    /// `span_events`.
    SpanEvents,
    /// `metrics`.
    Metrics,
}

impl Table {
    fn count_sql(self) -> &'static str {
        match self {
            Table::Traces => "SELECT count(*) FROM traces",
            Table::Spans => "SELECT count(*) FROM spans",
            Table::SpanEvents => "SELECT count(*) FROM span_events",
            Table::Metrics => "SELECT count(*) FROM metrics",
        }
    }
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

/// Runs queries; cheap to clone, safe to share. Call from blocking threads, not async tasks.
#[derive(Clone)]
pub struct StoreReader {
    pool: Arc<Pool>,
    pub(crate) indexed: Arc<IndexedKeys>,
}

/// A connection borrowed from the pool, returned when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Connection>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from creation until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Ok(mut idle) = self.pool.idle.lock()
            && idle.len() < self.pool.max_idle
        {
            idle.push(conn);
        }
    }
}

fn ts(s: &str) -> Result<Timestamp, StoreError> {
    Timestamp::parse_iso(s).map_err(|e| StoreError::Corrupt(format!("stored timestamp: {e}")))
}

fn opt_ts(s: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    s.as_deref().map(ts).transpose()
}

fn id<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("stored {what} {s:?} is not valid")))
}

pub(crate) fn attributes(s: &str) -> Result<Attributes, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("stored attributes: {e}")))
}

fn project(mut attrs: Attributes, keys: Option<&[String]>) -> Attributes {
    if let Some(keys) = keys {
        attrs.retain(|k, _| keys.iter().any(|want| want == k));
    }
    attrs
}

pub(crate) fn truthy(v: &AttrValue) -> bool {
    match v {
        AttrValue::Null => false,
        AttrValue::Bool(b) => *b,
        AttrValue::Int(i) => *i != 0,
        AttrValue::Float(f) => *f != 0.0,
        AttrValue::String(s) => !s.is_empty(),
        AttrValue::Array(a) => !a.is_empty(),
    }
}

/// The raw columns of a span row, in the order of [`SPAN_COLUMNS`].
#[derive(Clone)]
pub(crate) struct SpanRow {
    pub(crate) span_id: String,
    pub(crate) trace_id: String,
    pub(crate) parent_span_id: Option<String>,
    pub(crate) name: String,
    pub(crate) start_time: String,
    pub(crate) end_time: Option<String>,
    pub(crate) attributes: String,
    pub(crate) status: Option<String>,
}

pub(crate) const SPAN_COLUMNS: &str = "s.span_id, s.trace_id, s.parent_span_id, s.name, s.start_time, s.end_time, s.attributes, s.status";

impl SpanRow {
    pub(crate) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            span_id: r.get(0)?,
            trace_id: r.get(1)?,
            parent_span_id: r.get(2)?,
            name: r.get(3)?,
            start_time: r.get(4)?,
            end_time: r.get(5)?,
            attributes: r.get(6)?,
            status: r.get(7)?,
        })
    }

    pub(crate) fn into_span(self, keys: Option<&[String]>) -> Result<Span, StoreError> {
        Ok(Span {
            span_id: id(&self.span_id, "span id")?,
            trace_id: id(&self.trace_id, "trace id")?,
            parent_span_id: self
                .parent_span_id
                .as_deref()
                .map(|p| id(p, "span id"))
                .transpose()?,
            name: self.name,
            start_time: ts(&self.start_time)?,
            end_time: opt_ts(self.end_time)?,
            attributes: project(attributes(&self.attributes)?, keys),
        })
    }

    pub(crate) fn status(&self) -> Option<SpanStatus> {
        match self.status.as_deref() {
            Some("ok") => Some(SpanStatus::Ok),
            Some("error") => Some(SpanStatus::Error),
            _ => None,
        }
    }
}

/// SQL for "span `s` matches every filter", with its parameters appended to `params`. Column
/// names come from closed enums; keys and values are bound.
pub(crate) fn filter_sql(filters: &[Filter], params: &mut Vec<SqlValue>) -> String {
    if filters.is_empty() {
        return "1".to_string();
    }
    let parts: Vec<String> = filters
        .iter()
        .map(|f| {
            let lhs = match &f.target {
                FilterTarget::Field(field) => match field {
                    SpanField::Name => "s.name",
                    SpanField::SpanId => "s.span_id",
                    SpanField::TraceId => "s.trace_id",
                    SpanField::ParentSpanId => "s.parent_span_id",
                    SpanField::Status => "s.status",
                    SpanField::StartTime => "s.start_time",
                    SpanField::EndTime => "s.end_time",
                }
                .to_string(),
                FilterTarget::Attribute(key) => {
                    params.push(SqlValue::Text(format!("$.\"{key}\"")));
                    "json_extract(s.attributes, ?)".to_string()
                }
            };
            let op = match f.op {
                QueryConditionOp::Eq => "IS",
                QueryConditionOp::Ne => "IS NOT",
                QueryConditionOp::Gt => ">",
                QueryConditionOp::Lt => "<",
            };
            params.push(sql_value(&f.value));
            format!("{lhs} {op} ?")
        })
        .collect();
    parts.join(" AND ")
}

impl StoreReader {
    pub(crate) fn new(path: PathBuf, max_idle: usize, indexed: Arc<IndexedKeys>) -> Self {
        Self {
            pool: Arc::new(Pool {
                path,
                idle: Mutex::new(Vec::new()),
                max_idle: max_idle.max(1),
            }),
            indexed,
        }
    }

    pub(crate) fn conn(&self) -> Result<Lease<'_>, StoreError> {
        let idle = self.pool.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.pool.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c
            }
        };
        Ok(Lease {
            pool: &self.pool,
            conn: Some(conn),
        })
    }

    /// Traces with a span matching every filter, in the requested order.
    pub fn query_traces(&self, q: &TraceQuery) -> Result<Vec<Trace>, StoreError> {
        let mut params = Vec::new();
        let mut sql = String::from(
            "SELECT t.trace_id, t.root_span_id, t.start_time, t.end_time FROM traces t",
        );
        if !q.filters.is_empty() {
            // An indexed filter narrows the traces first; every filter is then checked on spans.
            if let Some(candidates) = self.indexed.candidates(&q.filters, &mut params) {
                sql.push_str(&format!(" WHERE t.trace_id IN ({candidates}) AND"));
            } else {
                sql.push_str(" WHERE");
            }
            let cond = filter_sql(&q.filters, &mut params);
            sql.push_str(&format!(
                " EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND {cond})"
            ));
        }
        let order: Vec<String> = q
            .order
            .iter()
            .map(|o| {
                let col = match o.field {
                    TraceOrderField::TraceId => "t.trace_id",
                    TraceOrderField::RootSpanId => "t.root_span_id",
                    TraceOrderField::StartTime => "t.start_time",
                    TraceOrderField::EndTime => "t.end_time",
                };
                format!("{col} {}", if o.descending { "DESC" } else { "ASC" })
            })
            .collect();
        if !order.is_empty() {
            sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        }
        sql.push_str(" LIMIT ? OFFSET ?");
        params.push(SqlValue::Integer(q.limit));
        params.push(SqlValue::Integer(q.offset));
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&sql)?;
        let rows = st.query_map(params_from_iter(params), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (t, root, start, end) = r?;
            Ok(Trace {
                trace_id: id(&t, "trace id")?,
                root_span_id: id(&root, "span id")?,
                start_time: ts(&start)?,
                end_time: opt_ts(end)?,
            })
        })
        .collect()
    }

    /// One trace.
    pub fn get_trace(&self, trace_id: TraceId) -> Result<Option<Trace>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached(
                "SELECT root_span_id, start_time, end_time FROM traces WHERE trace_id = ?1",
            )?
            .query_row([trace_id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .optional()?;
        row.map(|(root, start, end)| {
            Ok(Trace {
                trace_id,
                root_span_id: id(&root, "span id")?,
                start_time: ts(&start)?,
                end_time: opt_ts(end)?,
            })
        })
        .transpose()
    }

    /// One span.
    pub fn get_span(&self, trace_id: TraceId, span_id: SpanId) -> Result<Option<Span>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached(&format!(
                "SELECT {SPAN_COLUMNS} FROM spans s WHERE s.trace_id = ?1 AND s.span_id = ?2"
            ))?
            .query_row([trace_id.to_string(), span_id.to_string()], SpanRow::read)
            .optional()?;
        row.map(|r| r.into_span(None)).transpose()
    }

    /// The logs, metrics and other events stored for a span, oldest first.
    pub fn span_events(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
    ) -> Result<Vec<SpanEvent>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT timestamp, name, kind, severity, message, value, unit, attributes, expires_at
             FROM span_events WHERE trace_id = ?1 AND span_id = ?2 ORDER BY timestamp, id",
        )?;
        let rows = st.query_map([trace_id.to_string(), span_id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<f64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })?;
        rows.map(|r| {
            let (timestamp, name, kind, severity, message, value, unit, attrs, expires_at) = r?;
            let body = match kind.as_str() {
                "log" => SpanEventBody::Log {
                    severity: serde_json::from_value::<LogSeverity>(Value::String(
                        severity.unwrap_or_default(),
                    ))
                    .unwrap_or(LogSeverity::Info),
                    message: message.unwrap_or_default(),
                },
                "metric" => {
                    let v = value.unwrap_or(0.0);
                    let value = if v.fract() == 0.0 && v.abs() < 9.0e15 {
                        MetricValue::Int(v as i64)
                    } else {
                        MetricValue::Float(v)
                    };
                    SpanEventBody::Metric {
                        value,
                        unit: unit.unwrap_or_default(),
                    }
                }
                _ => SpanEventBody::Other,
            };
            Ok(SpanEvent {
                trace_id: Some(trace_id),
                span_id: Some(span_id),
                timestamp: ts(&timestamp)?,
                name,
                body,
                attributes: attributes(&attrs)?,
                expires_at: expires_at.map(Timestamp::from_unix_nanos),
            })
        })
        .collect()
    }

    /// Number of rows in a table.
    pub fn count_rows(&self, table: Table) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        let n: i64 = conn.query_row(table.count_sql(), [], |r| r.get(0))?;
        Ok(n as u64)
    }
}
