//! Span trees: `get_span_tree` and `query_spans`. A tree is walked in Rust over its trace's
//! spans (one index range), breadth first, each span once, so it stays inside the trace and a
//! parent cycle cannot make it go round.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, params_from_iter};
use tokentrace_model::query::Filter;
use tokentrace_model::{Span, SpanId, SpanWithStatus};

use crate::StoreError;
use crate::StoreReader;
use crate::lookup::{KIND_SPAN, Op, find_json, found_sql, span_key};
use crate::reader::{
    MAX_TREE_DEPTH, SPAN_COLUMNS, SPANS_WITH_TRACE, SpanRow, filter_sql, start_window, truthy,
    window_traces_bound,
};

/// Indexes into `spans` (one trace's) of the span `start` and its descendants down to
/// `max_depth` (`start` is depth 1), breadth first, each span once: a parent cycle cannot make
/// the walk go round, and a span reached twice is kept at its first depth.
fn walk(spans: &[SpanRow], start: &[u8; 8], max_depth: u32) -> Vec<usize> {
    let mut children: HashMap<&[u8; 8], Vec<usize>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        if let Some(p) = &s.parent_span_id {
            children.entry(p).or_default().push(i);
        }
    }
    let mut seen: HashSet<&[u8; 8]> = HashSet::new();
    let mut level: Vec<usize> = spans
        .iter()
        .enumerate()
        .filter(|(_, s)| &s.span_id == start)
        .map(|(i, _)| i)
        .take(1)
        .collect();
    let mut out = Vec::new();
    let mut depth = 1;
    while !level.is_empty() {
        let mut next = Vec::new();
        for i in level {
            if !seen.insert(&spans[i].span_id) {
                continue;
            }
            out.push(i);
            if depth < max_depth.max(1) {
                next.extend(children.get(&spans[i].span_id).into_iter().flatten());
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

impl StoreReader {
    /// The spans of one trace (by its key), in start order.
    fn trace_spans(conn: &Connection, trace: i64) -> Result<Vec<SpanRow>, StoreError> {
        let mut st = conn.prepare_cached(&format!(
            "SELECT {SPAN_COLUMNS} FROM {SPANS_WITH_TRACE} WHERE s.trace = ?1 ORDER BY s.start_ns"
        ))?;
        let rows = st.query_map([trace], SpanRow::read)?;
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
        let id = span_id.to_bytes();
        let conn = self.conn()?;
        // A span id may be repeated in other traces (it is unique only within its trace).
        let found = find_json(&conn, KIND_SPAN, Op::Eq, &span_key(&id))?;
        let mut params = vec![
            rusqlite::types::Value::Blob(id.to_vec()),
            rusqlite::types::Value::Text(found),
        ];
        params.extend(self.scope_param());
        let traces: Vec<i64> = conn
            .prepare_cached(&format!(
                "SELECT DISTINCT trace FROM span_rows WHERE id IN ({}) AND span_id = ?1{} ORDER BY trace",
                found_sql("?2"),
                self.scope_sql("(SELECT tp.project FROM trace_rows tp WHERE tp.id = span_rows.trace)", "?3")
            ))?
            .query_map(params_from_iter(params), |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut tree = BTreeMap::new();
        for trace in traces {
            let spans = Self::trace_spans(&conn, trace)?;
            for i in walk(&spans, &id, depth) {
                let row = &spans[i];
                let span = row.clone().into_span(attributes_to_return, &self.names)?;
                let key = span.span_id.to_string();
                if tree.contains_key(&key) {
                    continue;
                }
                let status = row.status();
                tree.insert(key, SpanWithStatus { span, status });
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
        let conn = self.conn()?;
        let mut params = Vec::new();
        let sql = if filters.is_empty() {
            let scope = self.scope_push("t.project", &mut params);
            format!(
                "SELECT t.id, t.root_span_id FROM trace_rows t WHERE t.start_ns IS NOT NULL{scope} ORDER BY t.trace_id"
            )
        } else if let Some(candidates) = self
            .indexed
            .candidates(&conn, filters, &mut params)?
            .or_else(|| start_window(filters).map(|w| window_traces_bound(w, &mut params)))
        {
            // The traces an indexed filter admits, else those of the time window; every filter
            // is then checked on their spans.
            let cond = filter_sql(filters, &mut params, &self.names)?;
            let scope = self.scope_push("t.project", &mut params);
            format!(
                "SELECT t.id, t.root_span_id FROM trace_rows t
                 WHERE t.id IN ({candidates}) AND t.start_ns IS NOT NULL
                   AND EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND {cond}){scope}
                 ORDER BY t.trace_id"
            )
        } else {
            let cond = filter_sql(filters, &mut params, &self.names)?;
            let scope = self.scope_push("t.project", &mut params);
            format!(
                "SELECT t.id, t.root_span_id FROM trace_rows t
                 WHERE t.start_ns IS NOT NULL
                   AND t.id IN (SELECT s.trace FROM {SPANS_WITH_TRACE} WHERE {cond}){scope}
                 ORDER BY t.trace_id"
            )
        };
        let depth = max_depth.unwrap_or(MAX_TREE_DEPTH).min(MAX_TREE_DEPTH);
        let keys = (!attributes_to_return.is_empty()).then_some(attributes_to_return);
        let roots: Vec<(i64, [u8; 8])> = conn
            .prepare_cached(&sql)?
            .query_map(params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for (trace, root) in roots {
            let spans = Self::trace_spans(&conn, trace)?;
            for i in walk(&spans, &root, depth) {
                let row = &spans[i];
                let attrs = self.names.decode(&row.attributes)?;
                if !attributes_to_return
                    .iter()
                    .all(|k| attrs.get(k).is_some_and(truthy))
                {
                    continue;
                }
                if out.len() == self.max_answer {
                    return Err(StoreError::TooLarge(format!(
                        "the answer would hold more than {} spans (max_answer_spans): narrow it with attribute_filters (a start_time window, a trace_id, an indexed attribute) or a smaller max_depth",
                        self.max_answer
                    )));
                }
                out.push(row.clone().into_span_with(attrs, keys)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span id from a short name (padded with zeros).
    fn sid(name: &str) -> [u8; 8] {
        let mut id = [0u8; 8];
        for (b, c) in id.iter_mut().zip(name.bytes()) {
            *b = c;
        }
        id
    }

    fn row(span_id: &str, parent: Option<&str>) -> SpanRow {
        SpanRow {
            span_id: sid(span_id),
            trace_id: [1; 16],
            parent_span_id: parent.map(sid),
            name: span_id.into(),
            start_ns: 0,
            end_ns: None,
            attributes: "{}".into(),
            status: None,
        }
    }

    fn ids(spans: &[SpanRow], walked: Vec<usize>) -> Vec<&str> {
        walked.iter().map(|&i| spans[i].name.as_str()).collect()
    }

    #[test]
    fn a_span_that_is_its_own_parent_is_walked_once_with_each_child_once() {
        let mut spans = vec![row("root", Some("root"))];
        spans.extend((0..200).map(|i| row(&format!("c{i:03}"), Some("root"))));
        let walked = walk(&spans, &sid("root"), MAX_TREE_DEPTH);
        assert_eq!(walked.len(), 201);
        assert_eq!(walked[0], 0);
        assert_eq!(walk(&spans, &sid("root"), 1), [0]);
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
            ids(&spans, walk(&spans, &sid("a"), MAX_TREE_DEPTH)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&spans, walk(&spans, &sid("a"), 0)), ["a"]);
        assert_eq!(ids(&spans, walk(&spans, &sid("a"), 1)), ["a"]);
        assert_eq!(ids(&spans, walk(&spans, &sid("a"), 2)), ["a", "b"]);
        assert_eq!(ids(&spans, walk(&spans, &sid("c"), 2)), ["c", "a", "d"]);
        assert!(walk(&spans, &sid("zzz"), 5).is_empty());
    }
}
