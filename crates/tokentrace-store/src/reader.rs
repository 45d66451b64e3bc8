//! Read queries, on a small pool of read-only connections.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    SpanStatus, SpanWithStatus, Timestamp, Trace, TraceId,
};

use crate::StoreError;
use crate::index::{IndexedKeys, sql_value};

/// Deepest span tree walked when the caller sets no `max_depth`.
const MAX_TREE_DEPTH: u32 = 10_000;

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
    indexed: Arc<IndexedKeys>,
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

fn truthy(v: &AttrValue) -> bool {
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
struct SpanRow {
    span_id: String,
    trace_id: String,
    parent_span_id: Option<String>,
    name: String,
    start_time: String,
    end_time: Option<String>,
    attributes: String,
    status: Option<String>,
}

/// Indexes into `spans` (one trace's) of the span `start` and its descendants down to
/// `max_depth` (`start` is depth 1), breadth first, each span once: a parent cycle cannot make
/// the walk go round, and a span reached twice is kept at its first depth.
fn walk(spans: &[SpanRow], start: &str, max_depth: u32) -> Vec<usize> {
    let mut children: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if let Some(p) = &s.parent_span_id {
            children.entry(p.as_str()).or_default().push(i);
        }
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut level: Vec<usize> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.span_id == start)
        .map(|(i, _)| i)
        .take(1)
        .collect();
    let mut out = Vec::new();
    let mut depth = 1;
    while !level.is_empty() {
        let mut next = Vec::new();
        for i in level {
            if !seen.insert(spans[i].span_id.as_str()) {
                continue;
            }
            out.push(i);
            if depth < max_depth.max(1) {
                next.extend(
                    children
                        .get(spans[i].span_id.as_str())
                        .into_iter()
                        .flatten(),
                );
            }
        }
        // Spans are in start order, so sorting indexes orders each level by start time.
        next.sort_unstable();
        next.dedup();
        level = next;
        depth += 1;
    }
    out
}

const SPAN_COLUMNS: &str = "s.span_id, s.trace_id, s.parent_span_id, s.name, s.start_time, s.end_time, s.attributes, s.status";

impl SpanRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
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

    fn into_span(self, keys: Option<&[String]>) -> Result<Span, StoreError> {
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

    fn status(&self) -> Option<SpanStatus> {
        match self.status.as_deref() {
            Some("ok") => Some(SpanStatus::Ok),
            Some("error") => Some(SpanStatus::Error),
            _ => None,
        }
    }
}

/// SQL for "span `s` matches every filter", with its parameters appended to `params`. Column
/// names come from closed enums; keys and values are bound.
fn filter_sql(filters: &[Filter], params: &mut Vec<SqlValue>) -> String {
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

    /// The spans of one trace, in start order.
    fn trace_spans(conn: &Connection, trace_id: &str) -> Result<Vec<SpanRow>, StoreError> {
        let mut st = conn.prepare_cached(&format!(
            "SELECT {SPAN_COLUMNS} FROM spans s WHERE s.trace_id = ?1 ORDER BY s.start_time"
        ))?;
        let rows = st.query_map([trace_id], SpanRow::read)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A span and its descendants down to `max_depth`, keyed by span id; `None` if the span is
    /// unknown. The span itself is depth 1, as in Llama Stack: `max_depth` 1 (or 0) is the span
    /// alone, 2 adds its children. The walk stays in the span's trace and visits each span once,
    /// so a parent cycle (a span that is its own ancestor) ends it.
    pub fn get_span_tree(
        &self,
        span_id: SpanId,
        attributes_to_return: Option<&[String]>,
        max_depth: Option<u32>,
    ) -> Result<Option<BTreeMap<String, SpanWithStatus>>, StoreError> {
        let depth = max_depth.unwrap_or(MAX_TREE_DEPTH).min(MAX_TREE_DEPTH);
        let id = span_id.to_string();
        let conn = self.conn()?;
        // A span id may be repeated in other traces (it is unique only within its trace).
        let traces: Vec<String> = conn
            .prepare_cached("SELECT DISTINCT trace_id FROM spans WHERE span_id = ?1")?
            .query_map([&id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut tree = BTreeMap::new();
        for trace_id in traces {
            let spans = Self::trace_spans(&conn, &trace_id)?;
            for i in walk(&spans, &id, depth) {
                let row = &spans[i];
                if tree.contains_key(&row.span_id) {
                    continue;
                }
                let status = row.status();
                let span = row.clone().into_span(attributes_to_return)?;
                tree.insert(row.span_id.clone(), SpanWithStatus { span, status });
            }
        }
        Ok((!tree.is_empty()).then_some(tree))
    }

    /// Spans, down to `max_depth` counted from each root (the root is depth 1), of the traces
    /// with a span matching every filter, by trace id and then depth; only spans that carry
    /// every key of `attributes_to_return` with a non-empty value, with only those attributes
    /// (all when the list is empty). Each trace is walked from its root as in
    /// [`StoreReader::get_span_tree`].
    pub fn query_spans(
        &self,
        filters: &[Filter],
        attributes_to_return: &[String],
        max_depth: Option<u32>,
    ) -> Result<Vec<Span>, StoreError> {
        let mut params = Vec::new();
        let sql = if filters.is_empty() {
            "SELECT trace_id, root_span_id FROM traces ORDER BY trace_id".to_string()
        } else if let Some(candidates) = self.indexed.candidates(filters, &mut params) {
            let cond = filter_sql(filters, &mut params);
            format!(
                "SELECT t.trace_id, t.root_span_id FROM traces t
                 WHERE t.trace_id IN ({candidates})
                   AND EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND {cond})
                 ORDER BY t.trace_id"
            )
        } else {
            let cond = filter_sql(filters, &mut params);
            format!(
                "SELECT t.trace_id, t.root_span_id FROM traces t
                 WHERE t.trace_id IN (SELECT s.trace_id FROM spans s WHERE {cond})
                 ORDER BY t.trace_id"
            )
        };
        let depth = max_depth.unwrap_or(MAX_TREE_DEPTH).min(MAX_TREE_DEPTH);
        let keys = (!attributes_to_return.is_empty()).then_some(attributes_to_return);
        let conn = self.conn()?;
        let roots: Vec<(String, String)> = conn
            .prepare_cached(&sql)?
            .query_map(params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (trace_id, root) in roots {
            let spans = Self::trace_spans(&conn, &trace_id)?;
            for i in walk(&spans, &root, depth) {
                let row = &spans[i];
                let attrs = attributes(&row.attributes)?;
                if !attributes_to_return
                    .iter()
                    .all(|k| attrs.get(k).is_some_and(truthy))
                {
                    continue;
                }
                out.push(row.clone().into_span(keys)?);
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(span_id: &str, parent: Option<&str>) -> SpanRow {
        SpanRow {
            span_id: span_id.into(),
            trace_id: "t".into(),
            parent_span_id: parent.map(str::to_string),
            name: span_id.into(),
            start_time: String::new(),
            end_time: None,
            attributes: "{}".into(),
            status: None,
        }
    }

    fn ids(spans: &[SpanRow], walked: Vec<usize>) -> Vec<&str> {
        walked.iter().map(|&i| spans[i].span_id.as_str()).collect()
    }

    #[test]
    fn a_span_that_is_its_own_parent_is_walked_once_with_each_child_once() {
        let mut spans = vec![row("root", Some("root"))];
        spans.extend((0..200).map(|i| row(&format!("c{i:03}"), Some("root"))));
        let walked = walk(&spans, "root", MAX_TREE_DEPTH);
        assert_eq!(walked.len(), 201);
        assert_eq!(walked[0], 0);
        assert_eq!(walk(&spans, "root", 1), [0]);
    }

    #[test]
    fn a_parent_cycle_ends_the_walk_and_depth_counts_from_one() {
        // a → b → c → a, and d below c
        let spans = vec![
            row("a", Some("c")),
            row("b", Some("a")),
            row("c", Some("b")),
            row("d", Some("c")),
        ];
        assert_eq!(
            ids(&spans, walk(&spans, "a", MAX_TREE_DEPTH)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&spans, walk(&spans, "a", 0)), ["a"]);
        assert_eq!(ids(&spans, walk(&spans, "a", 1)), ["a"]);
        assert_eq!(ids(&spans, walk(&spans, "a", 2)), ["a", "b"]);
        assert_eq!(ids(&spans, walk(&spans, "c", 2)), ["c", "a", "d"]);
        assert!(walk(&spans, "zzz", 5).is_empty());
    }
}
