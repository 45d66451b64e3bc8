//! The trace list (`list_traces`): traces newest first, paged by (start, key), each summarised
//! from its own spans (one index range of `span_rows_trace`) and, for token counts that no span
//! carries, its metric events.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tokentrace_model::query::{
    Filter, FilterTarget, ListTracesQuery, MODEL_KEYS, QueryConditionOp, TraceCursor, TracePage,
    TraceStatus, TraceSummary,
};
use tokentrace_model::{AttrValue, Timestamp};

use crate::StoreError;
use crate::StoreReader;
use crate::reader::{filter_sql, span_id, trace_id};

/// Figures of one trace from its spans. Constant SQL: keys are literals (resolved to the keys
/// their names are stored under, `Names::resolve`), the trace key is bound.
const SPAN_FIGURES: &str = r#"SELECT count(*), coalesce(sum(status = 'error'), 0),
    sum(json_extract(attributes, '$."gen_ai.usage.input_tokens"')),
    sum(json_extract(attributes, '$."gen_ai.usage.output_tokens"')),
    max(coalesce(json_extract(attributes, '$."user.id"'), json_extract(attributes, '$."user_id"'),
                 json_extract(attributes, '$."enduser.id"'))),
    max(coalesce(json_extract(attributes, '$."session.id"'), json_extract(attributes, '$."session_id"'),
                 json_extract(attributes, '$."gen_ai.conversation.id"')))
  FROM span_rows WHERE trace = ?1"#;

/// The models a trace's spans name (the answering model before the requested one).
const MODELS: &str = r#"SELECT DISTINCT coalesce(json_extract(attributes, '$."gen_ai.response.model"'),
    json_extract(attributes, '$."gen_ai.request.model"'), json_extract(attributes, '$."model_id"')) AS m
  FROM span_rows WHERE trace = ?1 AND m IS NOT NULL ORDER BY m"#;

/// Token counts from the trace's metric events (Llama Stack's `prompt_tokens`/`completion_tokens`).
const EVENT_TOKENS: &str = "SELECT sum(value) FILTER (WHERE name = 'prompt_tokens'),
    sum(value) FILTER (WHERE name = 'completion_tokens')
  FROM event_rows WHERE trace = ?1 AND kind = 'metric'";

/// "Some span of trace `t` names model `?`" (its parameter is pushed by the caller).
const MODEL_MATCH: &str = r#"EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND ? IN (
    json_extract(s.attributes, '$."gen_ai.response.model"'),
    json_extract(s.attributes, '$."gen_ai.request.model"'),
    json_extract(s.attributes, '$."model_id"')))"#;

fn integer(v: SqlValue) -> Option<i64> {
    match v {
        SqlValue::Integer(i) => Some(i),
        SqlValue::Real(f) => Some(f.round() as i64),
        _ => None,
    }
}

/// A column's value as text (numbers written out), `None` for NULL and blobs.
pub(crate) fn text(v: SqlValue) -> Option<String> {
    match v {
        SqlValue::Text(s) => Some(s),
        SqlValue::Integer(i) => Some(i.to_string()),
        SqlValue::Real(f) => Some(f.to_string()),
        _ => None,
    }
}

impl StoreReader {
    /// A page of traces, newest first, each with a summary of its spans. Each filter must be
    /// matched by some span (filters on indexed keys narrow the traces first); the page's
    /// `next` continues after its last trace even while new traces arrive.
    pub fn list_traces(&self, q: &ListTracesQuery) -> Result<TracePage, StoreError> {
        let conn = self.conn()?;
        let (rows, next) = self.trace_page(&conn, q)?;
        let mut data = Vec::with_capacity(rows.len());
        let sql = (
            self.names.resolve(SPAN_FIGURES)?,
            self.names.resolve(MODELS)?,
        );
        for row in rows {
            data.extend(summarise(&conn, row, &sql)?);
        }
        Ok(TracePage { data, next })
    }

    /// The trace rows of a page of the list, and the cursor after it.
    ///
    /// With filters the page is found in two passes. First the newest [`WINDOW`] traces (in
    /// the bounds asked) are checked one by one, newest first: a filter most traces match (a
    /// common model, a status) fills the page there, without reading the index entries of
    /// every trace it matches (125,000 for a model of 8 among a million traces, then sorted).
    /// If the page is not full, the traces older than the window are asked for as before,
    /// narrowed by the index: a rare value has few candidates.
    pub(crate) fn trace_page(
        &self,
        conn: &Connection,
        q: &ListTracesQuery,
    ) -> Result<(Vec<TraceRow>, Option<String>), StoreError> {
        let want = q.limit + 1;
        let filtered = !q.filters.is_empty() || q.model.is_some();
        let mut rows = Vec::new();
        let mut older_than = q.cursor.map(|c| (c.start_ns, c.key));
        if filtered {
            let mut params = Vec::new();
            let bounds = bounds_sql(self, q, older_than, &mut params);
            let edge: Option<(i64, i64)> = conn
                .prepare_cached(&format!(
                    "SELECT t.start_ns, t.id FROM trace_rows t WHERE t.start_ns IS NOT NULL{bounds}
                     ORDER BY t.start_ns DESC, t.id DESC LIMIT 1 OFFSET {}",
                    WINDOW - 1
                ))?
                .query_row(params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let mut params = Vec::new();
            let mut sql = select_sql(self, q, older_than, &mut params);
            if let Some((start, key)) = edge {
                sql.push_str(" AND (t.start_ns, t.id) >= (?, ?)");
                params.push(SqlValue::Integer(start));
                params.push(SqlValue::Integer(key));
            }
            sql.push_str(&self.filter_conditions(conn, q, false, &mut params)?);
            rows = query_rows(conn, &sql, params, want)?;
            match edge {
                // Fewer traces than the window: the first pass saw them all.
                None => return Ok(page(rows, q.limit)),
                Some(_) if rows.len() >= want => return Ok(page(rows, q.limit)),
                Some(e) => older_than = Some(e),
            }
        }
        let mut params = Vec::new();
        let mut sql = select_sql(self, q, older_than, &mut params);
        sql.push_str(&self.filter_conditions(conn, q, true, &mut params)?);
        rows.extend(query_rows(conn, &sql, params, want - rows.len())?);
        Ok(page(rows, q.limit))
    }

    /// The filters as SQL conditions on trace `t` (parameters appended), narrowed by the index
    /// when `candidates` and a filter's key is indexed.
    fn filter_conditions(
        &self,
        conn: &Connection,
        q: &ListTracesQuery,
        candidates: bool,
        params: &mut Vec<SqlValue>,
    ) -> Result<String, StoreError> {
        let mut sql = String::new();
        for f in &q.filters {
            let one = std::slice::from_ref(f);
            if candidates && let Some(c) = self.indexed.candidates(conn, one, params)? {
                sql.push_str(&format!(" AND t.id IN ({c})"));
            }
            let cond = filter_sql(one, params, &self.names)?;
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND {cond})"
            ));
        }
        if let Some(model) = &q.model {
            if candidates {
                // Narrowed by the index only when every model key is indexed.
                let mut parts = Vec::new();
                let mut more = Vec::new();
                for key in MODEL_KEYS {
                    let f = Filter {
                        target: FilterTarget::Attribute(key.to_string()),
                        op: QueryConditionOp::Eq,
                        value: AttrValue::String(model.clone()),
                    };
                    parts.extend(self.indexed.candidates(conn, &[f], &mut more)?);
                }
                if parts.len() == MODEL_KEYS.len() {
                    sql.push_str(&format!(" AND t.id IN ({})", parts.join(" UNION ALL ")));
                    params.extend(more);
                }
            }
            sql.push_str(&format!(" AND {}", self.names.resolve(MODEL_MATCH)?));
            params.push(SqlValue::Text(model.clone()));
        }
        Ok(sql)
    }
}

/// Traces the first pass of a filtered list checks one by one.
const WINDOW: usize = 2_000;

/// The bounds of the list (the reader's projects, since, until, after the cursor or a pass,
/// service) as SQL conditions on trace `t`, parameters appended.
fn bounds_sql(
    reader: &StoreReader,
    q: &ListTracesQuery,
    older_than: Option<(i64, i64)>,
    params: &mut Vec<SqlValue>,
) -> String {
    let mut sql = reader.scope_push("t.project", params);
    if let Some(since) = q.since {
        sql.push_str(" AND t.start_ns >= ?");
        params.push(SqlValue::Integer(since.unix_nanos()));
    }
    if let Some(until) = q.until {
        sql.push_str(" AND t.start_ns < ?");
        params.push(SqlValue::Integer(until.unix_nanos()));
    }
    if let Some((start, key)) = older_than {
        sql.push_str(" AND (t.start_ns, t.id) < (?, ?)");
        params.push(SqlValue::Integer(start));
        params.push(SqlValue::Integer(key));
    }
    if let Some(service) = &q.service {
        sql.push_str(" AND t.service_name = ?");
        params.push(SqlValue::Text(service.clone()));
    }
    sql
}

fn select_sql(
    reader: &StoreReader,
    q: &ListTracesQuery,
    older_than: Option<(i64, i64)>,
    params: &mut Vec<SqlValue>,
) -> String {
    format!(
        "SELECT t.id, t.trace_id, t.root_span_id, t.start_ns, t.end_ns, t.service_name
         FROM trace_rows t WHERE t.start_ns IS NOT NULL{}",
        bounds_sql(reader, q, older_than, params)
    )
}

/// Runs a list query (its conditions complete) for at most `limit` rows, newest first.
fn query_rows(
    conn: &Connection,
    sql: &str,
    mut params: Vec<SqlValue>,
    limit: usize,
) -> Result<Vec<TraceRow>, StoreError> {
    let sql = format!("{sql} ORDER BY t.start_ns DESC, t.id DESC LIMIT ?");
    params.push(SqlValue::Integer(limit as i64));
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(params), |r| {
            Ok(TraceRow {
                key: r.get(0)?,
                trace_id: r.get(1)?,
                root: r.get(2)?,
                start_ns: r.get(3)?,
                end_ns: r.get(4)?,
                service_name: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The page of `limit` rows and the cursor after it, from up to `limit + 1` rows.
fn page(mut rows: Vec<TraceRow>, limit: usize) -> (Vec<TraceRow>, Option<String>) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|r| {
            TraceCursor {
                start_ns: r.start_ns,
                key: r.key,
            }
            .encode()
        })
    } else {
        None
    };
    (rows, next)
}

/// A trace row of the list.
pub(crate) struct TraceRow {
    pub(crate) key: i64,
    trace_id: [u8; 16],
    root: Option<[u8; 8]>,
    start_ns: i64,
    end_ns: Option<i64>,
    service_name: Option<String>,
}

/// The summary of a trace (`None` for a trace without a root span id, which has no span).
/// `sql`: [`SPAN_FIGURES`] and [`MODELS`], resolved.
fn summarise(
    conn: &Connection,
    row: TraceRow,
    sql: &(String, String),
) -> Result<Option<TraceSummary>, StoreError> {
    let TraceRow {
        key,
        trace_id: tid,
        root,
        start_ns: start,
        end_ns: end,
        service_name,
    } = row;
    let Some(root) = root else {
        return Ok(None);
    };
    let (spans, errors, input, output, user, session) =
        conn.prepare_cached(&sql.0)?.query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, SqlValue>(2)?,
                r.get::<_, SqlValue>(3)?,
                r.get::<_, SqlValue>(4)?,
                r.get::<_, SqlValue>(5)?,
            ))
        })?;
    let (mut input_tokens, mut output_tokens) = (integer(input), integer(output));
    if input_tokens.is_none() && output_tokens.is_none() {
        let (i, o) = conn.prepare_cached(EVENT_TOKENS)?.query_row([key], |r| {
            Ok((r.get::<_, SqlValue>(0)?, r.get::<_, SqlValue>(1)?))
        })?;
        (input_tokens, output_tokens) = (integer(i), integer(o));
    }
    let root_row: Option<(String, Option<i64>)> = conn
        .prepare_cached("SELECT name, end_ns FROM span_rows WHERE trace = ?1 AND span_id = ?2")?
        .query_row(params![key, root.to_vec()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let models: Vec<String> = conn
        .prepare_cached(&sql.1)?
        .query_map([key], |r| r.get::<_, SqlValue>(0))?
        .filter_map(|v| v.map(text).transpose())
        .collect::<Result<_, _>>()?;
    let status = if errors > 0 {
        TraceStatus::Error
    } else if root_row.as_ref().is_none_or(|(_, end)| end.is_none()) {
        TraceStatus::Open
    } else {
        TraceStatus::Ok
    };
    Ok(Some(TraceSummary {
        trace_id: trace_id(tid)?,
        root_span_id: span_id(root)?,
        root_name: root_row.map(|(name, _)| name),
        service_name,
        start_time: Timestamp::from_unix_nanos(start),
        end_time: end.map(Timestamp::from_unix_nanos),
        duration_ms: end.map(|e| (e - start) as f64 / 1e6),
        spans: spans.max(0) as u64,
        errors: errors.max(0) as u64,
        models,
        input_tokens,
        output_tokens,
        user: text(user),
        session: text(session),
        status,
    }))
}
