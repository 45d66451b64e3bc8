//! Span assembly: the one place where events become spans. Llama Stack `span_start` and
//! `span_end` events are joined by (trace, span) into a [`SpanRecord`]; logs become log events of
//! their span; a metric becomes a point and a metric event of its span ([`metric_records`]);
//! complete spans (gateway, OTLP) get their defaults. What comes out goes to the sinks, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokentrace_model::{
    AttrValue, Attributes, Event, MetricEvent, MetricPoint, RecentKeys, SpanEvent, SpanEventBody,
    SpanId, SpanKind, SpanRecord, StructuredLogPayload, Timestamp, TraceId, TraceParent,
};

use crate::telemetry::{Batch, Msg, PipelineOptions, PipelineStats};
use crate::{SpanStart, size};

/// What the assembler hands to the sinks, in order.
#[derive(Debug)]
pub(crate) enum Output {
    Started(SpanStart),
    Ended(SpanRecord),
    Event(SpanEvent),
    Metric(MetricPoint),
}

/// The rule for a metric measured inside a span: it becomes a point (the `metrics` table,
/// Prometheus, OTLP metrics) and a metric event of its span (`span_events`, exported inside the
/// span). Both the events API and the gateway's token counts go through here.
pub fn metric_records(m: MetricEvent, expires_at: Option<Timestamp>) -> (MetricPoint, SpanEvent) {
    let point = MetricPoint {
        name: m.metric.clone(),
        timestamp: m.timestamp,
        value: m.value.as_f64(),
        unit: m.unit.clone(),
        labels: m.attributes.clone(),
        trace_id: Some(m.trace_id),
        span_id: Some(m.span_id),
        expires_at,
    };
    let event = SpanEvent {
        trace_id: Some(m.trace_id),
        span_id: Some(m.span_id),
        timestamp: m.timestamp,
        name: m.metric,
        body: SpanEventBody::Metric {
            value: m.value,
            unit: m.unit,
        },
        attributes: m.attributes,
        expires_at,
    };
    (point, event)
}

struct OpenSpan {
    start: SpanStart,
    ttl_seconds: Option<i64>,
    events: Vec<SpanEvent>,
    opened: Instant,
    /// What it holds, as `crate::size` estimates it.
    bytes: u64,
}

fn start_bytes(s: &SpanStart) -> u64 {
    160 + s.name.len() as u64 + size::attributes(&s.attributes)
}

type SpanKey = (TraceId, SpanId);

/// Turns span start/end events into spans. Keyed by (trace, span): no shared "current span".
pub(crate) struct Assembler {
    options: PipelineOptions,
    stats: Arc<PipelineStats>,
    open: HashMap<SpanKey, OpenSpan>,
    open_order: VecDeque<(Instant, SpanKey)>,
    /// Bytes the open spans hold.
    open_bytes: u64,
    /// Spans that ended recently: a late duplicate start for them is ignored.
    ended: RecentKeys<SpanKey, ()>,
    /// Starts of spans flushed unfinished: a late end completes them.
    flushed_unfinished: RecentKeys<SpanKey, SpanStart>,
    /// LLM calls: the gateway's remembered, the applications' understood and counted.
    calls: crate::genai::Calls,
}

const RECENT_CAPACITY: usize = 65_536;

impl Assembler {
    pub(crate) fn new(options: PipelineOptions, stats: Arc<PipelineStats>) -> Self {
        Self {
            stats,
            open: HashMap::new(),
            open_order: VecDeque::new(),
            open_bytes: 0,
            ended: RecentKeys::new(RECENT_CAPACITY, u64::MAX, |_| 0),
            // A quarter of the open spans' bound: starts kept for ends that come late.
            flushed_unfinished: RecentKeys::new(
                RECENT_CAPACITY / 4,
                options.max_open_bytes / 4,
                start_bytes,
            ),
            calls: crate::genai::Calls::new(options.pricing.clone()),
            options,
        }
    }

    fn expires_at(&self, ttl_seconds: Option<i64>) -> Option<Timestamp> {
        let ttl = ttl_seconds.unwrap_or(self.options.default_ttl_seconds);
        let nanos = ttl.checked_mul(1_000_000_000)?;
        Timestamp::now()
            .unix_nanos()
            .checked_add(nanos)
            .map(Timestamp::from_unix_nanos)
    }

    pub(crate) fn handle(&mut self, msg: Msg, out: &mut Vec<Output>) {
        match msg {
            Msg::Event(e) => {
                let (event, ttl_seconds) = *e;
                self.handle_event(event, ttl_seconds, out)
            }
            Msg::Span(span) => self.complete_span(*span, out),
            Msg::SpanEvent(e) => {
                let mut e = *e;
                e.expires_at = e.expires_at.or_else(|| self.expires_at(None));
                self.attach_event(e, out);
            }
            Msg::Metric(m) => {
                let mut m = *m;
                m.expires_at = m.expires_at.or_else(|| self.expires_at(None));
                out.push(Output::Metric(m));
            }
            Msg::Batch(batch) => {
                let Batch {
                    spans,
                    events,
                    metrics,
                } = *batch;
                for span in spans {
                    self.complete_span(span, out);
                }
                for e in events {
                    self.handle(Msg::SpanEvent(Box::new(e)), out);
                }
                for m in metrics {
                    self.handle(Msg::Metric(Box::new(m)), out);
                }
            }
            Msg::Ticketed(inner, _) => self.handle(*inner, out),
            Msg::Probe(inner) => self.handle(inner.0, out),
            Msg::Flush(_) | Msg::Shutdown => {}
        }
    }

    /// A span that arrives complete (from the gateway or OTLP): defaults filled in, its events
    /// emitted as events too.
    fn complete_span(&mut self, mut span: SpanRecord, out: &mut Vec<Output>) {
        if span.service_name.is_none() {
            span.service_name = Some(self.options.service_name.clone());
        }
        if span.expires_at.is_none() {
            span.expires_at = self.expires_at(None);
        }
        let expires_at = span.expires_at;
        for point in self.calls.span_ended(&mut span, expires_at) {
            out.push(Output::Metric(point));
        }
        for e in &mut span.events {
            e.expires_at = e.expires_at.or(span.expires_at);
            out.push(Output::Event(e.clone()));
        }
        self.stats.spans.fetch_add(1, Ordering::Relaxed);
        out.push(Output::Ended(span));
    }

    fn handle_event(&mut self, event: Event, ttl_seconds: Option<i64>, out: &mut Vec<Output>) {
        match event {
            Event::StructuredLog(ev) => {
                let key = (ev.trace_id, ev.span_id);
                match ev.payload {
                    StructuredLogPayload::SpanStart(p) => {
                        if self.open.contains_key(&key) || self.ended.contains(&key) {
                            self.stats.duplicate_starts.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        let mut attributes = ev.attributes;
                        let remote_parent = take_remote_parent(&mut attributes, ev.trace_id);
                        let start = SpanStart {
                            trace_id: ev.trace_id,
                            span_id: ev.span_id,
                            parent_span_id: p.parent_span_id.or(remote_parent),
                            name: p.name,
                            timestamp: ev.timestamp,
                            attributes,
                        };
                        out.push(Output::Started(start.clone()));
                        let now = Instant::now();
                        let bytes = start_bytes(&start);
                        self.open_bytes += bytes;
                        self.open.insert(
                            key,
                            OpenSpan {
                                start,
                                ttl_seconds,
                                events: Vec::new(),
                                opened: now,
                                bytes,
                            },
                        );
                        self.open_order.push_back((now, key));
                        self.make_room(out);
                    }
                    StructuredLogPayload::SpanEnd(p) => {
                        // Only a start of the end's own project is ended by it: ids are the
                        // sender's, and another project's sender must not end (or read) a span.
                        let project = tokentrace_model::project_of(&ev.attributes);
                        let ours =
                            |s: &SpanStart| tokentrace_model::project_of(&s.attributes) == project;
                        let open_ours = self.open.get(&key).map(|o| ours(&o.start));
                        let flushed_ours = self.flushed_unfinished.get(&key).map(ours);
                        let (start, events, start_ttl) = match (open_ours, flushed_ours) {
                            (Some(true), _) => match self.take_open(&key) {
                                Some(open) => (Some(open.start), open.events, open.ttl_seconds),
                                None => (None, Vec::new(), None),
                            },
                            (None, Some(true)) => {
                                (self.flushed_unfinished.remove(&key), Vec::new(), None)
                            }
                            _ => (None, Vec::new(), None),
                        };
                        let mut attributes;
                        let (parent_span_id, name, start_time) = match start {
                            Some(s) => {
                                attributes = s.attributes;
                                (s.parent_span_id, s.name, s.timestamp)
                            }
                            None => {
                                self.stats.orphan_ends.fetch_add(1, Ordering::Relaxed);
                                attributes = Default::default();
                                attributes.insert(
                                    "tokentrace.span_start_missing".into(),
                                    AttrValue::Bool(true),
                                );
                                (None, "unknown".to_string(), ev.timestamp)
                            }
                        };
                        let mut end_attributes = ev.attributes;
                        take_remote_parent(&mut end_attributes, ev.trace_id);
                        attributes.extend(end_attributes);
                        let expires_at = self.expires_at(ttl_seconds.or(start_ttl));
                        self.ended.insert(key, ());
                        self.stats.spans.fetch_add(1, Ordering::Relaxed);
                        let mut span = SpanRecord {
                            trace_id: ev.trace_id,
                            span_id: ev.span_id,
                            parent_span_id,
                            name,
                            kind: SpanKind::Internal,
                            start_time,
                            end_time: Some(ev.timestamp),
                            status: Some(p.status),
                            status_message: None,
                            attributes,
                            events,
                            links: Vec::new(),
                            service_name: Some(self.options.service_name.clone()),
                            expires_at,
                        };
                        for point in self.calls.span_ended(&mut span, expires_at) {
                            out.push(Output::Metric(point));
                        }
                        out.push(Output::Ended(span));
                    }
                }
            }
            Event::UnstructuredLog(ev) => {
                let span_event = SpanEvent {
                    trace_id: Some(ev.trace_id),
                    span_id: Some(ev.span_id),
                    timestamp: ev.timestamp,
                    name: "log".to_string(),
                    body: SpanEventBody::Log {
                        severity: ev.severity,
                        message: ev.message,
                    },
                    attributes: ev.attributes,
                    expires_at: self.expires_at(ttl_seconds),
                };
                self.attach_event(span_event, out);
            }
            Event::Metric(ev) => {
                let (point, event) = metric_records(ev, self.expires_at(ttl_seconds));
                out.push(Output::Metric(point));
                self.attach_event(event, out);
            }
        }
    }

    /// Emits the event, and keeps a copy in its span while the span is open.
    fn attach_event(&mut self, event: SpanEvent, out: &mut Vec<Output>) {
        let mut grew = false;
        if let (Some(t), Some(s)) = (event.trace_id, event.span_id)
            && let Some(open) = self.open.get_mut(&(t, s))
        {
            if open.events.len() < self.options.max_events_per_span {
                let bytes = size::span_event(&event);
                open.bytes += bytes;
                self.open_bytes += bytes;
                open.events.push(event.clone());
                grew = true;
            } else if self.options.max_events_per_span > 0 {
                self.stats
                    .span_events_over_limit
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(Output::Event(event));
        if grew {
            self.make_room(out);
        }
    }

    /// An open span taken out of the open set.
    fn take_open(&mut self, key: &SpanKey) -> Option<OpenSpan> {
        let open = self.open.remove(key)?;
        self.open_bytes = self.open_bytes.saturating_sub(open.bytes);
        Some(open)
    }

    /// Flushes the oldest open spans unfinished while there are more than `max_open_spans` or
    /// they hold more than `max_open_bytes`.
    fn make_room(&mut self, out: &mut Vec<Output>) {
        while self.open.len() > self.options.max_open_spans
            || self.open_bytes > self.options.max_open_bytes
        {
            if !self.flush_oldest_open(out) {
                break;
            }
        }
    }

    fn flush_unfinished(&mut self, key: SpanKey, out: &mut Vec<Output>) {
        let Some(open) = self.take_open(&key) else {
            return;
        };
        self.stats.spans_unfinished.fetch_add(1, Ordering::Relaxed);
        let expires_at = self.expires_at(open.ttl_seconds);
        let s = open.start;
        out.push(Output::Ended(SpanRecord {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            name: s.name.clone(),
            kind: SpanKind::Internal,
            start_time: s.timestamp,
            end_time: None,
            status: None,
            status_message: None,
            attributes: s.attributes.clone(),
            events: open.events,
            links: Vec::new(),
            service_name: Some(self.options.service_name.clone()),
            expires_at,
        }));
        self.flushed_unfinished.insert(key, s);
    }

    /// Flushes the oldest open span; false when none is open.
    fn flush_oldest_open(&mut self, out: &mut Vec<Output>) -> bool {
        while let Some((opened, key)) = self.open_order.pop_front() {
            if self.open.get(&key).is_some_and(|o| o.opened == opened) {
                self.flush_unfinished(key, out);
                return true;
            }
        }
        false
    }

    pub(crate) fn expire_open_spans(&mut self, now: Instant, out: &mut Vec<Output>) {
        while let Some(&(opened, key)) = self.open_order.front() {
            if now.duration_since(opened) < self.options.span_timeout {
                break;
            }
            self.open_order.pop_front();
            if self.open.get(&key).is_some_and(|o| o.opened == opened) {
                self.flush_unfinished(key, out);
            }
        }
        // Entries of spans that already ended pile up at the back; drop them when they dominate.
        if self.open_order.len() > 2 * self.open.len() + 1024 {
            let open = &self.open;
            self.open_order
                .retain(|(opened, key)| open.get(key).is_some_and(|o| o.opened == *opened));
        }
    }

    /// The counts of applications' LLM calls added up since the last time, as metric points.
    pub(crate) fn flush_calls(&mut self, out: &mut Vec<Output>) {
        out.extend(self.calls.take_points().into_iter().map(Output::Metric));
    }

    pub(crate) fn flush_all_open(&mut self, out: &mut Vec<Output>) {
        let keys: Vec<SpanKey> = self.open.keys().copied().collect();
        for key in keys {
            self.flush_unfinished(key, out);
        }
        self.open_order.clear();
    }
}

/// Removes the W3C `traceparent`/`tracestate` attributes a span start may carry and returns the
/// remote parent they name when it belongs to the same trace.
fn take_remote_parent(attributes: &mut Attributes, trace_id: TraceId) -> Option<SpanId> {
    attributes.remove("tracestate");
    let header = attributes.remove("traceparent")?;
    let parent = TraceParent::parse(header.as_str()?).ok()?;
    (parent.trace_id == trace_id).then_some(parent.parent_id)
}
