//! Writing a batch of rows in one transaction: trace rows first (a new trace gets its key),
//! then spans, events, metric points and rollups, and the batch's index entries as one run.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use super::{
    INSERT_EVENT, INSERT_EVENT_ONCE, INSERT_METRIC, INSERT_SPAN, INSERT_TRACE, Row, RowKind,
    SpanRow, UPDATE_SPAN, UPDATE_TRACE,
};
use crate::StoreError;
use crate::expiry::{UPSERT_RANGE, expiry_hour};
use crate::index::Cardinality;
use crate::keys::{ProjectIds, TraceKeys};
use crate::lookup::{Entry, KIND_SPAN, KIND_TRACE, Lookup, attribute_kind, span_key};
use crate::names::NameIds;
use crate::rollups::{
    Rollup, SeriesIds, UPSERT_HOURLY_ROLLUP, UPSERT_ROLLUP, hour_of, minute_of, upsert_all,
};
use tokentrace_model::RecentKeys;

/// What the writer thread knows across transactions: metric series ids, recent trace keys,
/// project and attribute name ids, the state of the sorted runs.
pub(crate) struct WriteState {
    pub(crate) cardinality: Cardinality,
    pub(crate) series: SeriesIds,
    pub(crate) traces: TraceKeys,
    pub(crate) projects: ProjectIds,
    pub(crate) names: NameIds,
    pub(crate) lookup: Lookup,
    pub(crate) resent: Resent,
    /// Store every span's service name in its row, as versions before 8 did: for migration 4,
    /// whose rows migration 8 then reads as such (`write::stored_service` otherwise).
    pub(crate) services_in_rows: bool,
}

/// Spans written again lately (an update of a stored span: a retried OTLP export, a re-import,
/// the end of a span flushed unfinished), by trace key and span id. An event of one of these
/// is only stored if the span does not have it yet; other events are not checked, which keeps
/// the check off the common path. Bounded: the last [`Resent::CAPACITY`].
pub(crate) struct Resent(RecentKeys<(i64, [u8; 8]), ()>);

impl Default for Resent {
    fn default() -> Self {
        Self(RecentKeys::new(Self::CAPACITY, u64::MAX, |_| 0))
    }
}

impl Resent {
    const CAPACITY: usize = 16_384;

    fn insert(&mut self, key: (i64, [u8; 8])) {
        self.0.insert(key, ());
    }

    fn contains(&self, key: &(i64, [u8; 8])) -> bool {
        self.0.contains(key)
    }
}

impl WriteState {
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        Ok(Self {
            cardinality: Cardinality::default(),
            series: SeriesIds::default(),
            traces: TraceKeys::default(),
            projects: ProjectIds::default(),
            names: NameIds::load(conn)?,
            lookup: Lookup::load(conn)?,
            resent: Resent::default(),
            services_in_rows: false,
        })
    }

    /// Forgets what a failed transaction made the state believe.
    pub(crate) fn rolled_back(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.series.forget();
        self.traces.forget();
        self.projects.forget();
        self.names = NameIds::load(conn)?;
        self.lookup.rolled_back(conn)
    }
}

/// The span part of what a batch changes in a trace row.
struct SpanPart<'a> {
    root_span_id: &'a [u8; 8],
    root_is_true_root: bool,
    start_ns: i64,
    /// The latest start of the batch's spans of the trace.
    last_start_ns: i64,
    end_ns: Option<i64>,
}

/// What a batch changes in one trace row: its spans and events folded in arrival order, with
/// the rules of [`UPDATE_TRACE`], so a trace costs one statement per batch.
struct TraceUpdate<'a> {
    service_name: Option<&'a str>,
    spans: Option<SpanPart<'a>>,
    /// Latest expiry of the batch's spans, and of its events (`None`: one never expires).
    span_expiry: Option<i64>,
    event_expiry: Option<i64>,
    has_events: bool,
}

impl<'a> TraceUpdate<'a> {
    fn fold_span(&mut self, s: &'a SpanRow) {
        self.service_name = self.service_name.or(s.service_name.as_deref());
        self.span_expiry = match self.spans {
            None => s.expires_at,
            Some(_) => self.span_expiry.zip(s.expires_at).map(|(a, b)| a.max(b)),
        };
        let part = SpanPart {
            root_span_id: &s.span_id,
            root_is_true_root: s.parent_span_id.is_none(),
            start_ns: s.start_ns,
            last_start_ns: s.start_ns,
            end_ns: s.end_ns,
        };
        match &mut self.spans {
            None => self.spans = Some(part),
            Some(t) => {
                if !t.root_is_true_root && (part.root_is_true_root || part.start_ns < t.start_ns) {
                    t.root_span_id = part.root_span_id;
                    t.root_is_true_root = part.root_is_true_root;
                }
                t.start_ns = t.start_ns.min(part.start_ns);
                t.last_start_ns = t.last_start_ns.max(part.start_ns);
                t.end_ns = match (t.end_ns, part.end_ns) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }

    fn fold_event(&mut self, expires_at: Option<i64>) {
        self.event_expiry = if self.has_events {
            self.event_expiry.zip(expires_at).map(|(a, b)| a.max(b))
        } else {
            expires_at
        };
        self.has_events = true;
    }

    /// The expiry of a new trace row.
    fn expiry(&self) -> Option<i64> {
        match self.spans {
            Some(_) => self.span_expiry,
            None => self.event_expiry,
        }
    }
}

/// A trace of a batch: its id and its project (`None`: `default`).
type TraceOf<'a> = (&'a [u8; 16], Option<&'a str>);

#[derive(Default)]
struct TraceUpdates<'a> {
    by_trace: Vec<(TraceOf<'a>, TraceUpdate<'a>)>,
    index: HashMap<TraceOf<'a>, usize>,
}

impl<'a> TraceUpdates<'a> {
    fn entry(&mut self, trace: TraceOf<'a>) -> &mut TraceUpdate<'a> {
        let i = match self.index.get(&trace) {
            Some(&i) => i,
            None => {
                self.index.insert(trace, self.by_trace.len());
                self.by_trace.push((
                    trace,
                    TraceUpdate {
                        service_name: None,
                        spans: None,
                        span_expiry: None,
                        event_expiry: None,
                        has_events: false,
                    },
                ));
                self.by_trace.len() - 1
            }
        };
        &mut self.by_trace[i].1
    }
}

/// An indexed attribute value as a hashable key (a real by its bits: `1.0` and `1` are two
/// keys, which only costs a statement that does nothing).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ValueKey<'a> {
    Null,
    Integer(i64),
    Real(u64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> ValueKey<'a> {
    fn of(v: &'a SqlValue) -> Self {
        match v {
            SqlValue::Null => ValueKey::Null,
            SqlValue::Integer(i) => ValueKey::Integer(*i),
            SqlValue::Real(f) => ValueKey::Real(f.to_bits()),
            SqlValue::Text(t) => ValueKey::Text(t),
            SqlValue::Blob(b) => ValueKey::Blob(b),
        }
    }
}

/// The `service_name` a span row stores since version 8: none (NULL) when it is its trace's,
/// which a trace row never changes once it has one; `''` for a span without a service name
/// (so that it never reads as its trace's); else the name. See `reader::span_service_sql`.
fn stored_service<'a>(span: Option<&'a str>, trace: Option<&str>) -> Option<&'a str> {
    match span {
        Some(name) if Some(name) == trace => None,
        Some(name) => Some(name),
        None => Some(""),
    }
}

fn blob<const N: usize>(b: &[u8; N]) -> SqlValue {
    SqlValue::Blob(b.to_vec())
}

/// Writes rows in the caller's transaction, statements prepared once per connection: first
/// the trace rows (a new trace gets its key), then spans, events and metric points; every
/// metric point also lands in its series' per-minute rollup; the new index entries (span ids,
/// trace ids, indexed attribute values) become one sorted run. Returns the number of entries.
pub(crate) fn write_rows(
    tx: &Connection,
    rows: &[Row],
    state: &mut WriteState,
) -> Result<u64, StoreError> {
    let mut traces = TraceUpdates::default();
    for Row(row) in rows {
        match row {
            RowKind::Span(s) => traces
                .entry((&s.trace_id, s.project.as_deref()))
                .fold_span(s),
            RowKind::Event(e) => {
                if let Some(trace_id) = &e.trace_id {
                    traces
                        .entry((trace_id, e.project.as_deref()))
                        .fold_event(e.expires_at);
                }
            }
            RowKind::Metric(_) => {}
        }
    }
    let mut entries = Vec::new();
    let mut keys: HashMap<TraceOf<'_>, i64> = HashMap::with_capacity(traces.by_trace.len());
    // Each trace row's service name after this batch: a span of that service stores none.
    let mut services: HashMap<i64, Option<String>> = HashMap::with_capacity(traces.by_trace.len());
    {
        let mut update = tx.prepare_cached(UPDATE_TRACE)?;
        let mut insert = tx.prepare_cached(INSERT_TRACE)?;
        let mut service_of =
            tx.prepare_cached("SELECT service_name FROM trace_rows WHERE id = ?1")?;
        for (trace, t) in &traces.by_trace {
            let (trace_id, project) = *trace;
            let project_id = state.projects.get(tx, project)?;
            let (root, true_root, start, end, last_start) = match &t.spans {
                Some(p) => (
                    Some(blob(p.root_span_id)),
                    p.root_is_true_root as i64,
                    Some(p.start_ns),
                    p.end_ns,
                    Some(p.last_start_ns),
                ),
                None => (None, 0, None, None, None),
            };
            let key = match state
                .traces
                .known(tx, &state.lookup, trace_id, project_id)?
            {
                Some(key) => {
                    update.execute(params![
                        key,
                        t.service_name,
                        root,
                        true_root,
                        start,
                        end,
                        t.span_expiry,
                        t.event_expiry,
                        last_start,
                    ])?;
                    let service: Option<String> = service_of.query_row([key], |r| r.get(0))?;
                    services.insert(key, service);
                    key
                }
                None => {
                    insert.execute(params![
                        blob(trace_id),
                        t.service_name,
                        root,
                        true_root,
                        start,
                        end,
                        t.expiry(),
                        project_id,
                        last_start,
                    ])?;
                    let key = tx.last_insert_rowid();
                    state.traces.remember(*trace_id, project_id, key);
                    services.insert(key, t.service_name.map(str::to_string));
                    entries.push(Entry {
                        kind: KIND_TRACE,
                        key: blob(trace_id),
                        target: key,
                    });
                    key
                }
            };
            keys.insert(*trace, key);
        }
    }
    let mut rollups: HashMap<(i64, i64), Rollup> = HashMap::new();
    let mut span = tx.prepare_cached(INSERT_SPAN)?;
    let mut update_span = tx.prepare_cached(UPDATE_SPAN)?;
    let mut event = tx.prepare_cached(INSERT_EVENT)?;
    let mut event_once = tx.prepare_cached(INSERT_EVENT_ONCE)?;
    let mut metric = tx.prepare_cached(INSERT_METRIC)?;
    let mut attribute = tx.prepare_cached(
        "INSERT OR IGNORE INTO attribute_values (kind, value, trace) VALUES (?1, ?2, ?3)",
    )?;
    // Span rows get growing keys: a key past this one is a new row, any other an update (the
    // connection's last insert id cannot tell: it may be another table's row of the same key).
    let newest_before: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM span_rows")?
        .query_row([], |r| r.get(0))?;
    // The entries of `attribute_values` this call wrote: the spans of a trace mostly share
    // their model, provider, status (and often names), and an entry written once needs no
    // second statement (it would be ignored, after a B-tree search).
    let mut written_values: std::collections::HashSet<(i64, i64, ValueKey<'_>)> =
        std::collections::HashSet::new();
    // Rows this call inserted: a span sent twice in one batch is an update the second time.
    let mut inserted: std::collections::HashSet<i64> = std::collections::HashSet::new();
    // Spans first, so that an event knows whether its span was written again.
    let mut rest = Vec::new();
    for Row(row) in rows {
        match row {
            RowKind::Span(s) => {
                let trace = keys
                    .get(&(&s.trace_id, s.project.as_deref()))
                    .copied()
                    .unwrap_or_default();
                let attributes = state.names.encode(tx, &s.attributes)?;
                let service = if state.services_in_rows {
                    s.service_name.as_deref()
                } else {
                    stored_service(
                        s.service_name.as_deref(),
                        services.get(&trace).and_then(Option::as_deref),
                    )
                };
                let values = params![
                    trace,
                    blob(&s.span_id),
                    s.parent_span_id.as_ref().map(blob),
                    s.name,
                    s.kind,
                    s.start_ns,
                    s.end_ns,
                    s.status,
                    s.status_message,
                    attributes,
                    s.links,
                    service,
                ];
                let id: Option<i64> = if span.execute(values)? == 1 {
                    Some(tx.last_insert_rowid())
                } else {
                    update_span.query_row(values, |r| r.get(0)).optional()?
                };
                // A new row, rather than an update of one already indexed.
                match id {
                    Some(id) if id > newest_before && inserted.insert(id) => entries.push(Entry {
                        kind: KIND_SPAN,
                        key: span_key(&s.span_id),
                        target: id,
                    }),
                    _ => state.resent.insert((trace, s.span_id)),
                }
                for (key, value) in &s.index {
                    let kind = attribute_kind(*key);
                    if state.cardinality.is_high(kind, value) {
                        entries.push(Entry {
                            kind,
                            key: value.clone(),
                            target: trace,
                        });
                    } else if written_values.insert((kind, trace, ValueKey::of(value))) {
                        attribute.execute(params![kind, value, trace])?;
                    }
                }
            }
            other => rest.push(other),
        }
    }
    // The ids of the points that expire in each hour (`crate::expiry`).
    let mut expiring: HashMap<i64, (i64, i64)> = HashMap::new();
    for row in rest {
        match row {
            RowKind::Span(_) => {}
            RowKind::Event(e) => {
                let trace = e
                    .trace_id
                    .as_ref()
                    .and_then(|t| keys.get(&(t, e.project.as_deref())).copied());
                let again = match (trace, e.span_id, e.id) {
                    (Some(t), Some(s), None) => state.resent.contains(&(t, s)),
                    _ => false,
                };
                let insert = if again { &mut event_once } else { &mut event };
                insert.execute(params![
                    e.id,
                    trace,
                    e.trace_id.as_ref().map(blob),
                    e.span_id.as_ref().map(blob),
                    e.ts_ns,
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
                let series = state.series.get(tx, &m.name, &m.unit, &m.labels)?;
                metric.execute(params![
                    series,
                    m.ts_nanos,
                    m.value,
                    m.trace_id.as_ref().map(blob),
                    m.span_id.as_ref().map(blob),
                    m.expires_at,
                ])?;
                if let Some(expires_at) = m.expires_at {
                    let id = tx.last_insert_rowid();
                    expiring
                        .entry(expiry_hour(expires_at))
                        .and_modify(|(first, last): &mut (i64, i64)| {
                            *first = (*first).min(id);
                            *last = (*last).max(id);
                        })
                        .or_insert((id, id));
                }
                let point = Rollup {
                    sum: m.value,
                    count: 1,
                    min: m.value,
                    max: m.value,
                };
                rollups
                    .entry((series, minute_of(m.ts_nanos)))
                    .and_modify(|r| r.add(&point))
                    .or_insert(point);
            }
        }
    }
    // A batch's hours are the sums of its minutes.
    let mut hours: HashMap<(i64, i64), Rollup> = HashMap::new();
    for (&(series, minute), r) in &rollups {
        hours
            .entry((series, hour_of(minute)))
            .and_modify(|h| h.add(r))
            .or_insert(*r);
    }
    upsert_all(tx, UPSERT_ROLLUP, rollups)?;
    upsert_all(tx, UPSERT_HOURLY_ROLLUP, hours)?;
    let mut range = tx.prepare_cached(UPSERT_RANGE)?;
    for (hour, (first, last)) in expiring {
        range.execute(params![hour, first, last])?;
    }
    state.lookup.add_run(tx, entries)
}
