//! Export: whole traces, every span with its kind, status, links, service and events, for a
//! page of the traces a list query selects (`tokentrace export`, `POST /v1/tokentrace/export`).

use std::collections::HashMap;

use rusqlite::Connection;
use tokentrace_model::query::ListTracesQuery;
use tokentrace_model::{
    SpanEvent, SpanId, SpanLink, SpanRecord, SpanStatus, Timestamp, Trace, TraceId,
};

use crate::names::Names;
use crate::reader::{EVENT_COLUMNS, read_event, span_id, trace_id};
use crate::{StoreError, StoreReader};

/// A page of exported traces.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportPage {
    /// Every span of the page's traces, each with its events, by trace and then start.
    pub spans: Vec<SpanRecord>,
    /// Traces in the page.
    pub traces: usize,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

/// Every span of a trace (`?1`), its service name and expiry as the store keeps them.
fn spans_sql() -> String {
    format!(
        "SELECT t.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns,
    s.end_ns, s.status, s.status_message, s.attributes, s.links, {}, t.expires_at
  FROM span_rows s JOIN trace_rows t ON t.id = s.trace WHERE s.trace = ?1 ORDER BY s.start_ns, s.id",
        crate::reader::span_service_sql("s.service_name", "t.service_name")
    )
}

/// A span from a row of [`spans_sql`], without its events.
fn read_span(
    r: &rusqlite::Row<'_>,
    names: &Names,
) -> rusqlite::Result<Result<SpanRecord, StoreError>> {
    let (tid, sid, parent): ([u8; 16], [u8; 8], Option<[u8; 8]>) =
        (r.get(0)?, r.get(1)?, r.get(2)?);
    let (kind, status, links): (String, Option<String>, Option<String>) =
        (r.get(4)?, r.get(7)?, r.get(10)?);
    let (start, end, exp): (i64, Option<i64>, Option<i64>) = (r.get(5)?, r.get(6)?, r.get(12)?);
    let (name, msg, attrs, service): (String, Option<String>, String, Option<String>) =
        (r.get(3)?, r.get(8)?, r.get(9)?, r.get(11)?);
    Ok((|| {
        let links: Vec<SpanLink> = match links {
            Some(l) => serde_json::from_str(&l)
                .map_err(|e| StoreError::Corrupt(format!("stored links: {e}")))?,
            None => Vec::new(),
        };
        Ok(SpanRecord {
            trace_id: trace_id(tid)?,
            span_id: span_id(sid)?,
            parent_span_id: parent.map(span_id).transpose()?,
            name,
            kind: crate::rows::stored_kind(&kind),
            start_time: Timestamp::from_unix_nanos(start),
            end_time: end.map(Timestamp::from_unix_nanos),
            status: match status.as_deref() {
                Some("ok") => Some(SpanStatus::Ok),
                Some("error") => Some(SpanStatus::Error),
                _ => None,
            },
            status_message: msg,
            attributes: names.decode(&attrs)?,
            events: Vec::new(),
            links,
            service_name: service,
            expires_at: exp.map(Timestamp::from_unix_nanos),
        })
    })())
}

/// Every span of a trace (by its key), by start, each with its events.
fn trace_spans(conn: &Connection, key: i64, names: &Names) -> Result<Vec<SpanRecord>, StoreError> {
    let mut events: HashMap<SpanId, Vec<SpanEvent>> = HashMap::new();
    let mut st = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM event_rows WHERE trace = ?1 AND span_id IS NOT NULL ORDER BY ts_ns, id"
    ))?;
    for e in st.query_map([key], read_event)? {
        let e = e??;
        if let Some(s) = e.span_id {
            events.entry(s).or_default().push(e);
        }
    }
    let mut st = conn.prepare_cached(&spans_sql())?;
    let rows = st.query_map([key], |r| read_span(r, names))?;
    rows.map(|r| {
        let mut span = r??;
        span.events = events.remove(&span.span_id).unwrap_or_default();
        Ok(span)
    })
    .collect()
}

impl StoreReader {
    /// A trace and every span of it with its events, links and status message (the web UI's
    /// trace page); `None` when the trace is unknown.
    pub fn trace_records(
        &self,
        id: TraceId,
    ) -> Result<Option<(Trace, Vec<SpanRecord>)>, StoreError> {
        let conn = self.conn()?;
        let Some((key, trace)) = self.trace_and_key(&conn, id)? else {
            return Ok(None);
        };
        let spans = trace_spans(&conn, key, &self.names)?;
        if spans.len() > self.max_answer {
            return Err(StoreError::TooLarge(format!(
                "trace {id} holds {} spans, more than the {} one answer may hold",
                spans.len(),
                self.max_answer
            )));
        }
        Ok(Some((trace, spans)))
    }

    /// Every span (with its events) of a page of the traces `q` selects, as `list_traces`
    /// pages them. More spans than the answer limit is [`StoreError::TooLarge`]: ask for fewer
    /// traces per page.
    pub fn export_traces(&self, q: &ListTracesQuery) -> Result<ExportPage, StoreError> {
        let conn = self.conn()?;
        let (rows, next) = self.trace_page(&conn, q)?;
        let mut spans = Vec::new();
        for row in &rows {
            spans.extend(trace_spans(&conn, row.key, &self.names)?);
            if spans.len() > self.max_answer {
                return Err(StoreError::TooLarge(format!(
                    "these {} traces hold more than {} spans; export fewer per page (limit)",
                    rows.len(),
                    self.max_answer
                )));
            }
        }
        Ok(ExportPage {
            spans,
            traces: rows.len(),
            next,
        })
    }
}
