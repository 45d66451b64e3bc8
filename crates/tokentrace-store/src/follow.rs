//! Following the store: spans in the order they were stored (`tokentrace tail`,
//! `POST /v1/tokentrace/spans/feed`). Span rows get growing keys, so "stored after" is a range
//! of the table's own key.

use rusqlite::params_from_iter;
use rusqlite::types::Value as SqlValue;
use tokentrace_model::SpanWithStatus;
use tokentrace_model::query::{SpanFeed, SpanFeedQuery};

use crate::reader::{SPAN_COLUMNS, SPANS_WITH_TRACE, SpanRow, filter_sql, span_service_sql};
use crate::{StoreError, StoreReader};

impl StoreReader {
    /// Spans stored after the query's position that match its service and filters, oldest
    /// first, and the position to ask from next; without a position, no spans and the newest
    /// position. A span rewritten later (its end arrived after it was flushed unfinished)
    /// keeps its first position and is not repeated.
    pub fn spans_after(&self, q: &SpanFeedQuery) -> Result<SpanFeed, StoreError> {
        let conn = self.conn()?;
        // Everything up to here is looked at now, so a filter that matches nothing does not
        // make the next call look at the same rows again.
        let newest: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM span_rows", [], |r| {
                r.get(0)
            })?;
        let Some(after) = q.after else {
            return Ok(SpanFeed {
                data: Vec::new(),
                next: newest,
            });
        };
        let mut params = vec![SqlValue::Integer(after), SqlValue::Integer(newest)];
        let mut sql = format!(
            "SELECT s.id, {SPAN_COLUMNS} FROM {SPANS_WITH_TRACE} WHERE s.id > ? AND s.id <= ?"
        );
        if let Some(service) = &q.service {
            sql.push_str(&format!(
                " AND {} = ?",
                span_service_sql("s.service_name", "t.service_name")
            ));
            params.push(SqlValue::Text(service.clone()));
        }
        if !q.filters.is_empty() {
            let cond = filter_sql(&q.filters, &mut params, &self.names)?;
            sql.push_str(&format!(" AND {cond}"));
        }
        sql.push_str(&self.scope_push("t.project", &mut params));
        let limit = q.limit.clamp(1, self.max_answer);
        sql.push_str(" ORDER BY s.id LIMIT ?");
        params.push(SqlValue::Integer(limit as i64));
        let mut st = conn.prepare_cached(&sql)?;
        let rows: Vec<(i64, SpanRow)> = st
            .query_map(params_from_iter(params), |r| {
                Ok((r.get(0)?, SpanRow::read_at(r, 1)?))
            })?
            .collect::<Result<_, _>>()?;
        let next = if rows.len() == limit {
            rows.last().map_or(newest, |(id, _)| *id)
        } else {
            newest
        };
        let data = rows
            .into_iter()
            .map(|(_, row)| {
                let status = row.status();
                Ok(SpanWithStatus {
                    span: row.into_span(None, &self.names)?,
                    status,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(SpanFeed { data, next })
    }
}
