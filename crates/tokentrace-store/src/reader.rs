//! Read queries, on a small pool of read-only connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use crate::lookup::{KIND_TRACE, Op, find_json, found_sql};
use crate::names::Names;

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
            Table::Traces => "SELECT count(*) FROM trace_rows WHERE start_ns IS NOT NULL",
            Table::Spans => "SELECT count(*) FROM span_rows",
            Table::SpanEvents => "SELECT count(*) FROM event_rows",
            Table::Metrics => "SELECT count(*) FROM metric_points",
        }
    }
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Pooled>>,
    max_idle: usize,
    /// Set when tokentrace stops: running and later queries are interrupted.
    interrupted: Arc<AtomicBool>,
    /// Longest one query may run before it is interrupted.
    budget: Duration,
    /// The zero of the deadlines.
    epoch: Instant,
}

/// A read connection and its current query's deadline (milliseconds after `Pool::epoch`),
/// which its progress handler checks every `PROGRESS_OPS` virtual machine steps.
struct Pooled {
    conn: Connection,
    deadline: Arc<AtomicU64>,
}

/// Virtual machine steps between two checks of a query's deadline.
const PROGRESS_OPS: i32 = 1_000;

/// Runs queries; cheap to clone, safe to share. Call from blocking threads, not async tasks.
#[derive(Clone)]
pub struct StoreReader {
    pool: Arc<Pool>,
    pub(crate) indexed: Arc<IndexedKeys>,
    /// The names of the ids span attributes are keyed by.
    pub(crate) names: Arc<Names>,
    /// Most rows one answer may hold.
    pub(crate) max_answer: usize,
    /// The projects it reads; `None`: every project.
    projects: Option<Arc<[String]>>,
}

/// A connection borrowed from the pool, returned when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Pooled>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from creation until drop.
        &self.conn.as_ref().unwrap_or_else(|| unreachable!()).conn
    }
}

impl Lease<'_> {
    /// The connection, for settings that need it mutably (an authorizer).
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn.as_mut().unwrap_or_else(|| unreachable!()).conn
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

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored {what} is not valid"))
}

pub(crate) fn trace_id(b: [u8; 16]) -> Result<TraceId, StoreError> {
    TraceId::from_bytes(b).ok_or_else(|| corrupt("trace id"))
}

pub(crate) fn span_id(b: [u8; 8]) -> Result<SpanId, StoreError> {
    SpanId::from_bytes(b).ok_or_else(|| corrupt("span id"))
}

/// The trace keys of a trace id (one per project that sent it), as SQL: `?1` is the id as a
/// blob, `found` the parameter holding what the runs hold for it ([`trace_candidates`]);
/// `scope` limits the projects (see [`StoreReader::scope_sql`]).
pub(crate) fn trace_key_sql(found: &str, scope: &str) -> String {
    format!(
        "SELECT t.id FROM trace_rows t WHERE t.id IN ({}) AND t.trace_id = ?1{scope}",
        found_sql(found)
    )
}

/// The trace keys the runs hold for a trace id (rows to be checked for the id), as the
/// parameter of [`trace_key_sql`].
pub(crate) fn trace_candidates(conn: &Connection, id: TraceId) -> Result<SqlValue, StoreError> {
    let key = SqlValue::Blob(id.to_bytes().to_vec());
    Ok(SqlValue::Text(find_json(conn, KIND_TRACE, Op::Eq, &key)?))
}

/// The stored times as text (the form of earlier versions), for filters on a time field whose
/// value is not a time.
const START_TEXT: &str = "strftime('%Y-%m-%d %H:%M:%S', s.start_ns / 1000000000, 'unixepoch') || printf('.%09d', s.start_ns % 1000000000)";
const END_TEXT: &str = "strftime('%Y-%m-%d %H:%M:%S', s.end_ns / 1000000000, 'unixepoch') || printf('.%09d', s.end_ns % 1000000000)";

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
    pub(crate) span_id: [u8; 8],
    pub(crate) trace_id: [u8; 16],
    pub(crate) parent_span_id: Option<[u8; 8]>,
    pub(crate) name: String,
    pub(crate) start_ns: i64,
    pub(crate) end_ns: Option<i64>,
    pub(crate) attributes: String,
    pub(crate) status: Option<String>,
}

/// The columns of [`SpanRow`], from `span_rows s JOIN trace_rows t ON t.id = s.trace`.
pub(crate) const SPAN_COLUMNS: &str =
    "s.span_id, t.trace_id, s.parent_span_id, s.name, s.start_ns, s.end_ns, s.attributes, s.status";

/// `span_rows s` with its trace row `t`.
pub(crate) const SPANS_WITH_TRACE: &str = "span_rows s JOIN trace_rows t ON t.id = s.trace";

impl SpanRow {
    pub(crate) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Self::read_at(r, 0)
    }

    /// Reads the columns starting at column `at`.
    pub(crate) fn read_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            span_id: r.get(at)?,
            trace_id: r.get(at + 1)?,
            parent_span_id: r.get(at + 2)?,
            name: r.get(at + 3)?,
            start_ns: r.get(at + 4)?,
            end_ns: r.get(at + 5)?,
            attributes: r.get(at + 6)?,
            status: r.get(at + 7)?,
        })
    }

    pub(crate) fn into_span(
        self,
        keys: Option<&[String]>,
        names: &Names,
    ) -> Result<Span, StoreError> {
        let attributes = names.decode(&self.attributes)?;
        self.into_span_with(attributes, keys)
    }

    /// The span, with its attributes already decoded.
    pub(crate) fn into_span_with(
        self,
        attributes: Attributes,
        keys: Option<&[String]>,
    ) -> Result<Span, StoreError> {
        Ok(Span {
            span_id: span_id(self.span_id)?,
            trace_id: trace_id(self.trace_id)?,
            parent_span_id: self.parent_span_id.map(span_id).transpose()?,
            name: self.name,
            start_time: Timestamp::from_unix_nanos(self.start_ns),
            end_time: self.end_ns.map(Timestamp::from_unix_nanos),
            attributes: project(attributes, keys),
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

/// SQL for "span `s` (of trace row `t`) matches every filter", with its parameters appended
/// to `params`. Column names come from closed enums; keys and values are bound. Ids compare as
/// the hex text they are given in; times as nanoseconds when the value is a time, else as text.
/// An attribute is found under the key its name is stored with (`names`).
pub(crate) fn filter_sql(
    filters: &[Filter],
    params: &mut Vec<SqlValue>,
    names: &Names,
) -> Result<String, StoreError> {
    if filters.is_empty() {
        return Ok("1".to_string());
    }
    let parts: Vec<String> = filters
        .iter()
        .map(|f| {
            let time = match &f.value {
                AttrValue::String(v) => Timestamp::parse_iso(v).ok(),
                _ => None,
            };
            let lhs = match &f.target {
                FilterTarget::Field(field) => match (field, time) {
                    (SpanField::Name, _) => "s.name",
                    (SpanField::SpanId, _) => "lower(hex(s.span_id))",
                    (SpanField::TraceId, _) => "lower(hex(t.trace_id))",
                    (SpanField::ParentSpanId, _) => {
                        "CASE WHEN s.parent_span_id IS NULL THEN NULL ELSE lower(hex(s.parent_span_id)) END"
                    }
                    (SpanField::Status, _) => "s.status",
                    (SpanField::StartTime, Some(_)) => "s.start_ns",
                    (SpanField::EndTime, Some(_)) => "s.end_ns",
                    (SpanField::StartTime, None) => START_TEXT,
                    (SpanField::EndTime, None) => END_TEXT,
                }
                .to_string(),
                FilterTarget::Attribute(key) => {
                    params.push(SqlValue::Text(names.path(key)?));
                    "json_extract(s.attributes, ?)".to_string()
                }
            };
            let op = match f.op {
                QueryConditionOp::Eq => "IS",
                QueryConditionOp::Ne => "IS NOT",
                QueryConditionOp::Gt => ">",
                QueryConditionOp::Lt => "<",
            };
            let is_time = matches!(
                f.target,
                FilterTarget::Field(SpanField::StartTime | SpanField::EndTime)
            );
            match time {
                Some(t) if is_time => params.push(SqlValue::Integer(t.unix_nanos())),
                _ => params.push(sql_value(&f.value)),
            }
            Ok(format!("{lhs} {op} ?"))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(parts.join(" AND "))
}

/// The columns [`read_event`] reads, from `event_rows`.
pub(crate) const EVENT_COLUMNS: &str =
    "trace_id, span_id, ts_ns, name, kind, severity, message, value, unit, attributes, expires_at";

/// An event from [`EVENT_COLUMNS`].
pub(crate) fn read_event(r: &Row<'_>) -> rusqlite::Result<Result<SpanEvent, StoreError>> {
    let trace: Option<[u8; 16]> = r.get(0)?;
    let span: Option<[u8; 8]> = r.get(1)?;
    let timestamp: i64 = r.get(2)?;
    let name: String = r.get(3)?;
    let kind: String = r.get(4)?;
    let severity: Option<String> = r.get(5)?;
    let message: Option<String> = r.get(6)?;
    let value: Option<f64> = r.get(7)?;
    let unit: Option<String> = r.get(8)?;
    let attrs: String = r.get(9)?;
    let expires_at: Option<i64> = r.get(10)?;
    Ok((|| {
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
            trace_id: trace.map(trace_id).transpose()?,
            span_id: span.map(span_id).transpose()?,
            timestamp: Timestamp::from_unix_nanos(timestamp),
            name,
            body,
            attributes: attributes(&attrs)?,
            expires_at: expires_at.map(Timestamp::from_unix_nanos),
        })
    })())
}

/// A trace from `t.trace_id, t.root_span_id, t.start_ns, t.end_ns`.
fn read_trace(r: &Row<'_>) -> rusqlite::Result<Result<Trace, StoreError>> {
    let id: [u8; 16] = r.get(0)?;
    let root: Option<[u8; 8]> = r.get(1)?;
    let start: i64 = r.get(2)?;
    let end: Option<i64> = r.get(3)?;
    Ok((|| {
        Ok(Trace {
            trace_id: trace_id(id)?,
            root_span_id: span_id(root.ok_or_else(|| corrupt("root span id"))?)?,
            start_time: Timestamp::from_unix_nanos(start),
            end_time: end.map(Timestamp::from_unix_nanos),
        })
    })())
}

/// SQL of a span's service name, from the span row's `service_name` (`span`) and its trace
/// row's (`trace`): since version 8 a span of its trace's service stores none (NULL), and a
/// span without one stores `''`.
pub(crate) fn span_service_sql(span: &str, trace: &str) -> String {
    format!("(CASE WHEN {span} IS NULL THEN {trace} ELSE NULLIF({span}, '') END)")
}

/// The span starts that the time filters allow, both ends included: `start_time` `gt`, `lt`,
/// `eq` bound them directly, and `end_time` `lt` or `eq` bound them too, since a span starts
/// before it ends. `None` without a time filter. With it, a query without an indexed filter
/// reads the spans of the traces of that window ([`window_traces`]), not all.
pub(crate) fn start_window(filters: &[Filter]) -> Option<(i64, i64)> {
    let mut window: Option<(i64, i64)> = None;
    for f in filters {
        let t = match &f.value {
            AttrValue::String(v) => match Timestamp::parse_iso(v) {
                Ok(t) => t.unix_nanos(),
                Err(_) => continue,
            },
            _ => continue,
        };
        let (lo, hi) = match (&f.target, f.op) {
            (FilterTarget::Field(SpanField::StartTime), QueryConditionOp::Gt) => {
                (t.saturating_add(1), i64::MAX)
            }
            (FilterTarget::Field(SpanField::StartTime), QueryConditionOp::Lt) => {
                (i64::MIN, t.saturating_sub(1))
            }
            (FilterTarget::Field(SpanField::StartTime), QueryConditionOp::Eq) => (t, t),
            (FilterTarget::Field(SpanField::EndTime), QueryConditionOp::Lt) => {
                (i64::MIN, t.saturating_sub(1))
            }
            (FilterTarget::Field(SpanField::EndTime), QueryConditionOp::Eq) => (i64::MIN, t),
            _ => continue,
        };
        window = Some(match window {
            None => (lo, hi),
            Some((a, b)) => (a.max(lo), b.min(hi)),
        });
    }
    window
}

/// SQL selecting the keys of the traces that may have a span starting between `lo` and `hi`
/// (SQL expressions of bound parameters, both ends included; `lo_wide` is `lo` less
/// `schema::LONG_TRACE_NS`): those that start in the window or up to a minute before it, and
/// the long traces (`trace_rows_long`) that start before its end and have a span starting
/// after its start. A trace may be given twice. Each part reads one index of trace rows.
pub(crate) fn window_traces(lo_wide: &str, lo: &str, hi: &str) -> String {
    format!(
        "SELECT id FROM trace_rows WHERE start_ns BETWEEN {lo_wide} AND {hi}
         UNION ALL SELECT id FROM trace_rows
         WHERE last_start_ns - start_ns > {long} AND start_ns <= {hi} AND last_start_ns >= {lo}",
        long = crate::schema::LONG_TRACE_NS
    )
}

/// [`window_traces`] of `window` with its bounds appended to `params` as numbered parameters,
/// so that later `?` continue after them.
pub(crate) fn window_traces_bound(window: (i64, i64), params: &mut Vec<SqlValue>) -> String {
    let (lo, hi) = window;
    let mut bind = |v: i64| {
        params.push(SqlValue::Integer(v));
        format!("?{}", params.len())
    };
    let lo_wide = bind(lo.saturating_sub(crate::schema::LONG_TRACE_NS));
    let lo = bind(lo);
    let hi = bind(hi);
    window_traces(&lo_wide, &lo, &hi)
}

impl StoreReader {
    pub(crate) fn new(
        path: PathBuf,
        max_idle: usize,
        indexed: Arc<IndexedKeys>,
        max_answer: usize,
        budget: Duration,
    ) -> Self {
        Self {
            max_answer: max_answer.max(1),
            pool: Arc::new(Pool {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
                max_idle: max_idle.max(1),
                interrupted: Arc::new(AtomicBool::new(false)),
                budget,
                epoch: Instant::now(),
            }),
            indexed,
            names: Arc::new(Names::new(path)),
            projects: None,
        }
    }

    /// The same reader, seeing only the traces, spans, events, metric series and datasets of
    /// `projects` (`None`: every project) in every query.
    pub fn for_projects(&self, projects: Option<Arc<[String]>>) -> StoreReader {
        StoreReader {
            projects,
            ..self.clone()
        }
    }

    /// Whether it reads every project.
    pub fn reads_every_project(&self) -> bool {
        self.projects.is_none()
    }

    /// Whether it sees records of `project`.
    pub(crate) fn sees(&self, project: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|p| p.iter().any(|n| n == project))
    }

    /// The condition that the project id `project` (an SQL expression, e.g. `t.project`) is
    /// one this reader sees, as ` AND …` with its one parameter `param` (`?` or `?N`); empty
    /// when it sees every project. The names are bound as one JSON array, never spliced.
    pub(crate) fn scope_sql(&self, project: &str, param: &str) -> String {
        match &self.projects {
            None => String::new(),
            Some(_) => format!(
                " AND {project} IN (SELECT p.id FROM projects p WHERE p.name IN (SELECT value FROM json_each({param})))"
            ),
        }
    }

    /// The parameter of [`StoreReader::scope_sql`], if it has one.
    pub(crate) fn scope_param(&self) -> Option<SqlValue> {
        self.projects
            .as_ref()
            .map(|p| SqlValue::Text(serde_json::Value::from(p.to_vec()).to_string()))
    }

    /// [`StoreReader::scope_sql`] with a positional parameter, pushed onto `params`.
    pub(crate) fn scope_push(&self, project: &str, params: &mut Vec<SqlValue>) -> String {
        params.extend(self.scope_param());
        self.scope_sql(project, "?")
    }

    /// Opens an existing store for reading only (the CLI): nothing in the file is changed,
    /// and it is safe while a server writes to it. A file of an older schema is refused until
    /// `tokentrace serve` has upgraded it, one of a newer schema always.
    pub fn open_read_only(
        path: &Path,
        max_answer: usize,
        budget: Duration,
    ) -> Result<StoreReader, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        crate::schema::check_version(&conn)?;
        let version = crate::schema::version(&conn)?;
        if version == 0 {
            return Err(StoreError::Corrupt(format!(
                "{} is not a tokentrace store (it has no tokentrace schema)",
                path.display()
            )));
        }
        if version < crate::SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the store has schema version {version}; reading it needs version {}: start `tokentrace serve` on it once to upgrade it",
                crate::SCHEMA_VERSION
            )));
        }
        let indexed = IndexedKeys::complete(&conn)?;
        Ok(Self::new(
            path.to_path_buf(),
            2,
            Arc::new(indexed),
            max_answer,
            budget,
        ))
    }

    /// A read connection whose query must end within the budget (or when
    /// [`StoreReader::interrupt_all`] is called): past it, SQLite stops the query with
    /// `SQLITE_INTERRUPT` ([`StoreError::is_interrupted`]).
    pub(crate) fn conn(&self) -> Result<Lease<'_>, StoreError> {
        let pool = &self.pool;
        let idle = pool.idle.lock().ok().and_then(|mut v| v.pop());
        let pooled = match idle {
            Some(c) => c,
            None => {
                let mut conn = Connection::open_with_flags(
                    &pool.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(Duration::from_secs(10))?;
                let deadline = Arc::new(AtomicU64::new(0));
                let (stop, until, epoch) = (pool.interrupted.clone(), deadline.clone(), pool.epoch);
                conn.progress_handler(
                    PROGRESS_OPS,
                    Some(move || {
                        stop.load(Ordering::Relaxed)
                            || epoch.elapsed().as_millis() as u64 > until.load(Ordering::Relaxed)
                    }),
                )?;
                Pooled { conn, deadline }
            }
        };
        let deadline = pool.epoch.elapsed().saturating_add(pool.budget);
        pooled
            .deadline
            .store(deadline.as_millis() as u64, Ordering::Relaxed);
        Ok(Lease {
            pool,
            conn: Some(pooled),
        })
    }

    /// Interrupts every running query and every later one (tokentrace is stopping).
    pub fn interrupt_all(&self) {
        self.pool.interrupted.store(true, Ordering::Relaxed);
    }

    /// Traces with a span matching every filter, in the requested order.
    pub fn query_traces(&self, q: &TraceQuery) -> Result<Vec<Trace>, StoreError> {
        let conn = self.conn()?;
        let mut params = Vec::new();
        let mut sql = String::from(
            "SELECT t.trace_id, t.root_span_id, t.start_ns, t.end_ns FROM trace_rows t WHERE t.start_ns IS NOT NULL",
        );
        sql.push_str(&self.scope_push("t.project", &mut params));
        if !q.filters.is_empty() {
            // An indexed filter narrows the traces first; every filter is then checked on spans.
            if let Some(candidates) = self.indexed.candidates(&conn, &q.filters, &mut params)? {
                sql.push_str(&format!(" AND t.id IN ({candidates})"));
            } else if let Some(window) = start_window(&q.filters) {
                let traces = window_traces_bound(window, &mut params);
                sql.push_str(&format!(" AND t.id IN ({traces})"));
            }
            let cond = filter_sql(&q.filters, &mut params, &self.names)?;
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND {cond})"
            ));
        }
        let order: Vec<String> = q
            .order
            .iter()
            .map(|o| {
                let col = match o.field {
                    TraceOrderField::TraceId => "t.trace_id",
                    TraceOrderField::RootSpanId => "t.root_span_id",
                    TraceOrderField::StartTime => "t.start_ns",
                    TraceOrderField::EndTime => "t.end_ns",
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
        let mut st = conn.prepare_cached(&sql)?;
        let rows = st.query_map(params_from_iter(params), read_trace)?;
        rows.map(|r| r?).collect()
    }

    /// One trace.
    pub fn get_trace(&self, id: TraceId) -> Result<Option<Trace>, StoreError> {
        let conn = self.conn()?;
        Ok(self.trace_and_key(&conn, id)?.map(|(_, trace)| trace))
    }

    /// A trace with its key: the first of its trace rows (one per project that sent the id, of
    /// those this reader sees) that has a span.
    pub(crate) fn trace_and_key(
        &self,
        conn: &Connection,
        id: TraceId,
    ) -> Result<Option<(i64, Trace)>, StoreError> {
        let sql = format!(
            "SELECT t.trace_id, t.root_span_id, t.start_ns, t.end_ns, t.id FROM trace_rows t
             WHERE t.id IN ({}) AND t.start_ns IS NOT NULL ORDER BY t.id LIMIT 1",
            trace_key_sql("?2", &self.scope_sql("t.project", "?3"))
        );
        let mut params = vec![
            SqlValue::Blob(id.to_bytes().to_vec()),
            trace_candidates(conn, id)?,
        ];
        params.extend(self.scope_param());
        let row = conn
            .prepare_cached(&sql)?
            .query_row(params_from_iter(params), |r| {
                Ok((r.get::<_, i64>(4)?, read_trace(r)?))
            })
            .optional()?;
        row.map(|(key, trace)| Ok((key, trace?))).transpose()
    }

    /// One span.
    pub fn get_span(&self, trace: TraceId, span: SpanId) -> Result<Option<Span>, StoreError> {
        let conn = self.conn()?;
        let mut params = vec![
            SqlValue::Blob(trace.to_bytes().to_vec()),
            SqlValue::Blob(span.to_bytes().to_vec()),
            trace_candidates(&conn, trace)?,
        ];
        params.extend(self.scope_param());
        let row = conn
            .prepare_cached(&format!(
                "SELECT {SPAN_COLUMNS} FROM {SPANS_WITH_TRACE} WHERE s.trace IN ({}) AND s.span_id = ?2 ORDER BY s.trace LIMIT 1",
                trace_key_sql("?3", &self.scope_sql("t.project", "?4"))
            ))?
            .query_row(params_from_iter(params), SpanRow::read)
            .optional()?;
        row.map(|r| r.into_span(None, &self.names)).transpose()
    }

    /// The logs, metrics and other events stored for a span, oldest first.
    pub fn span_events(
        &self,
        trace_id: TraceId,
        span_id: SpanId,
    ) -> Result<Vec<SpanEvent>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM event_rows WHERE trace IN ({}) AND span_id = ?2 ORDER BY ts_ns, id",
            trace_key_sql("?3", &self.scope_sql("t.project", "?4"))
        ))?;
        let mut ids = vec![
            SqlValue::Blob(trace_id.to_bytes().to_vec()),
            SqlValue::Blob(span_id.to_bytes().to_vec()),
            trace_candidates(&conn, trace_id)?,
        ];
        ids.extend(self.scope_param());
        let rows = st.query_map(params_from_iter(ids), read_event)?;
        rows.map(|r| r?).collect()
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
    #![allow(clippy::unwrap_used)]

    use super::window_traces;

    #[test]
    fn a_window_reads_two_indexes_of_trace_rows_and_no_span() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace_store.db");
        crate::Store::open(&path, crate::StoreOptions::default())
            .unwrap()
            .close()
            .unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM span_rows WHERE trace IN ({}) AND start_ns >= ?2 AND start_ns <= ?3",
            window_traces("?1", "?2", "?3")
        );
        let plan: Vec<String> = conn
            .prepare(&sql)
            .unwrap()
            .query_map([1, 2, 3], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("INDEX trace_rows_start (start_ns>? AND start_ns<?)"),
            "{plan}"
        );
        assert!(
            plan.contains("USING INDEX trace_rows_long (start_ns<?)"),
            "{plan}"
        );
        assert!(
            plan.contains("USING INDEX span_rows_trace (trace=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN"), "{plan}");
    }
}
