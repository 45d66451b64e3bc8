//! The pipeline thread: accepts events and finished spans through a bounded queue, assembles
//! span start/end events into spans, and fans everything out to the sinks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokentrace_model::{
    AttrValue, Attributes, Event, MetricPoint, SpanEvent, SpanEventBody, SpanId, SpanKind,
    SpanRecord, StructuredLogPayload, Timestamp, TraceId, TraceParent,
};

use crate::{Sink, SpanStart};

/// Tuning of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Items (events, spans, metric points) buffered before submitters are told to back off.
    pub queue_capacity: usize,
    /// Spans not ended after this long are flushed as unfinished.
    pub span_timeout: Duration,
    /// Retention for events sent without `ttl_seconds`.
    pub default_ttl_seconds: i64,
    /// Events kept inside one open span for exporters (all are stored regardless).
    pub max_events_per_span: usize,
    /// Open spans kept at most; beyond it the oldest is flushed unfinished.
    pub max_open_spans: usize,
    /// The service name recorded on spans that do not carry one.
    pub service_name: String,
    /// Nice value of the pipeline thread (see [`tokentrace_store::set_thread_nice`]).
    pub thread_nice: i32,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            span_timeout: Duration::from_secs(3600),
            default_ttl_seconds: 604_800,
            max_events_per_span: 1_000,
            max_open_spans: 100_000,
            service_name: "tokentrace".to_string(),
            thread_nice: 0,
        }
    }
}

/// Why a submission was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: retry later.
    #[error("telemetry pipeline is full; retry later")]
    Full,
    /// The pipeline has stopped.
    #[error("telemetry pipeline has stopped")]
    Closed,
}

/// Counters the pipeline keeps about itself.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Messages accepted.
    pub accepted: AtomicU64,
    /// Messages refused because the queue was full.
    pub rejected_full: AtomicU64,
    /// Messages in the queue now (approximate).
    pub queue_depth: AtomicU64,
    /// Spans emitted to the sinks.
    pub spans: AtomicU64,
    /// Spans flushed unfinished (timeout, open-span limit or shutdown).
    pub spans_unfinished: AtomicU64,
    /// Duplicate span starts ignored.
    pub duplicate_starts: AtomicU64,
    /// Span ends that arrived without a known start.
    pub orphan_ends: AtomicU64,
    /// Events not kept inside their open span because it had too many (still stored).
    pub span_events_over_limit: AtomicU64,
    /// Sink flush failures.
    pub sink_errors: AtomicU64,
    /// Callers of [`Telemetry::wait_for_room`] that had to wait.
    pub room_waits: AtomicU64,
    /// Callers of [`Telemetry::wait_for_room`] that gave up waiting.
    pub room_wait_timeouts: AtomicU64,
}

/// Where callers wait for room in a full queue; the pipeline thread wakes them.
struct Room {
    /// Queue depth below which there is room: three quarters of the capacity, so that the
    /// callers let through together still fit.
    level: u64,
    notify: tokio::sync::Notify,
    waiting: AtomicUsize,
    closed: AtomicBool,
}

/// Spans, events and metric points submitted together: accepted or refused as one.
#[derive(Debug, Default)]
pub struct Batch {
    /// Complete spans.
    pub spans: Vec<SpanRecord>,
    /// Events.
    pub events: Vec<SpanEvent>,
    /// Metric points.
    pub metrics: Vec<MetricPoint>,
}

enum Msg {
    Batch(Box<Batch>),
    Event {
        event: Event,
        ttl_seconds: Option<i64>,
    },
    Span(Box<SpanRecord>),
    SpanEvent(Box<SpanEvent>),
    Metric(Box<MetricPoint>),
    Flush(SyncSender<()>),
    Shutdown,
}

/// Handle for submitting telemetry; cheap to clone and safe to use from any thread or task.
/// Submissions never block: a full queue is reported as [`SubmitError::Full`].
#[derive(Clone)]
pub struct Telemetry {
    tx: SyncSender<Msg>,
    stats: Arc<PipelineStats>,
    /// Items (spans, events, points) the queue may hold: batches count by their size, so memory
    /// stays bounded however callers group their items.
    capacity: u64,
    room: Arc<Room>,
}

impl Msg {
    /// How many items a message carries, for the queue's bound.
    fn weight(&self) -> u64 {
        match self {
            Msg::Batch(b) => (b.spans.len() + b.events.len() + b.metrics.len()).max(1) as u64,
            // Control messages bypass `submit` and are not counted.
            Msg::Flush(_) | Msg::Shutdown => 0,
            _ => 1,
        }
    }
}

impl Telemetry {
    fn submit(&self, msg: Msg) -> Result<(), SubmitError> {
        let weight = msg.weight();
        let depth = self.stats.queue_depth.fetch_add(weight, Ordering::Relaxed);
        // A batch larger than the whole queue is still accepted into an empty queue.
        if depth > 0 && depth.saturating_add(weight) > self.capacity {
            self.stats.queue_depth.fetch_sub(weight, Ordering::Relaxed);
            self.stats
                .rejected_full
                .fetch_add(weight, Ordering::Relaxed);
            return Err(SubmitError::Full);
        }
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.stats.accepted.fetch_add(weight, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.stats.queue_depth.fetch_sub(weight, Ordering::Relaxed);
                self.stats
                    .rejected_full
                    .fetch_add(weight, Ordering::Relaxed);
                Err(SubmitError::Full)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queue_depth.fetch_sub(weight, Ordering::Relaxed);
                Err(SubmitError::Closed)
            }
        }
    }

    /// Submits a Llama Stack event; `ttl_seconds` overrides the default retention.
    pub fn log_event(&self, event: Event, ttl_seconds: Option<i64>) -> Result<(), SubmitError> {
        self.submit(Msg::Event { event, ttl_seconds })
    }

    /// Submits a complete span (its `events` are delivered as events too).
    pub fn record_span(&self, span: SpanRecord) -> Result<(), SubmitError> {
        self.submit(Msg::Span(Box::new(span)))
    }

    /// Submits an event that is not part of a span assembled here (e.g. a received OTLP log).
    pub fn record_event(&self, event: SpanEvent) -> Result<(), SubmitError> {
        self.submit(Msg::SpanEvent(Box::new(event)))
    }

    /// Submits spans, events and metric points as one message: all are accepted, or none
    /// (then retrying cannot duplicate anything).
    pub fn record_batch(&self, batch: Batch) -> Result<(), SubmitError> {
        self.submit(Msg::Batch(Box::new(batch)))
    }

    /// Submits a metric data point.
    pub fn record_metric(&self, point: MetricPoint) -> Result<(), SubmitError> {
        self.submit(Msg::Metric(Box::new(point)))
    }

    /// Blocks until everything submitted before the call has been handed to the sinks and the
    /// sinks have written it (for SQLite: committed). Call it off the async runtime.
    pub fn flush(&self) -> Result<(), SubmitError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Flush(reply_tx))
            .map_err(|_| SubmitError::Closed)?;
        reply_rx.recv().map_err(|_| SubmitError::Closed)
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Whether the queue is below the level at which [`Telemetry::wait_for_room`] waits: three
    /// quarters of its capacity, so that the callers let through together still fit.
    pub fn has_room(&self) -> bool {
        self.stats.queue_depth.load(Ordering::Relaxed) < self.room.level
    }

    /// Waits, at most `limit`, until the queue has room (see [`Telemetry::has_room`]) or the
    /// pipeline stops. API requests call it before doing work they will report: under load
    /// beyond what the sinks absorb, requests then slow down to the sinks' pace instead of
    /// their spans being dropped. Returns `false` when `limit` passed first.
    pub async fn wait_for_room(&self, limit: Duration) -> bool {
        if self.has_room() {
            return true;
        }
        self.stats.room_waits.fetch_add(1, Ordering::Relaxed);
        self.room.waiting.fetch_add(1, Ordering::SeqCst);
        let room = async {
            loop {
                let mut notified = std::pin::pin!(self.room.notify.notified());
                // Registered before the check, so a wake-up between the two is not missed.
                notified.as_mut().enable();
                if self.has_room() || self.room.closed.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        let in_time = tokio::time::timeout(limit, room).await.is_ok();
        self.room.waiting.fetch_sub(1, Ordering::SeqCst);
        if !in_time {
            self.stats
                .room_wait_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        in_time
    }
}

/// The running pipeline: owns its thread. Stop it with [`Pipeline::shutdown`].
pub struct Pipeline {
    telemetry: Telemetry,
    thread: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the pipeline thread with these sinks.
    pub fn start(options: PipelineOptions, sinks: Vec<Box<dyn Sink>>) -> std::io::Result<Pipeline> {
        let capacity = options.queue_capacity.max(1);
        let (tx, rx) = mpsc::sync_channel(capacity);
        let stats = Arc::new(PipelineStats::default());
        let mut options = options;
        let nice = options.thread_nice;
        if !sinks.iter().any(|s| s.wants_span_events()) {
            options.max_events_per_span = 0;
        }
        let room = Arc::new(Room {
            level: (capacity - capacity / 4).max(1) as u64,
            notify: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let worker = Worker {
            assembler: Assembler::new(options, stats.clone()),
            sinks,
            stats: stats.clone(),
            room: room.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tokentrace-pipeline".into())
            .spawn(move || {
                tokentrace_store::set_thread_nice(nice);
                worker.run(rx)
            })?;
        Ok(Pipeline {
            telemetry: Telemetry {
                tx,
                stats,
                capacity: capacity as u64,
                room,
            },
            thread: Some(thread),
        })
    }

    /// A handle for submitting telemetry.
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// Processes everything already accepted, flushes open spans as unfinished, shuts the sinks
    /// down, and joins the thread.
    pub fn shutdown(mut self) {
        // A blocking send: the shutdown message queues behind every accepted message.
        let _ = self.telemetry.tx.send(Msg::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("telemetry pipeline thread panicked");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.telemetry.tx.send(Msg::Shutdown);
            let _ = thread.join();
        }
    }
}

/// What the assembler hands to the sinks, in order.
#[derive(Debug)]
enum Output {
    Started(SpanStart),
    Ended(SpanRecord),
    Event(SpanEvent),
    Metric(MetricPoint),
}

struct Worker {
    assembler: Assembler,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<PipelineStats>,
    room: Arc<Room>,
}

const MAX_BATCH: usize = 1024;
const TICK: Duration = Duration::from_millis(500);

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut out = Vec::with_capacity(MAX_BATCH * 2);
        let mut last_tick = Instant::now();
        loop {
            let first = match rx.recv_timeout(TICK) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop(&mut out);
                    return;
                }
            };
            let mut next = first;
            let mut handled = 0;
            while let Some(msg) = next.take() {
                self.stats
                    .queue_depth
                    .fetch_sub(msg.weight(), Ordering::Relaxed);
                match msg {
                    Msg::Flush(reply) => {
                        self.emit(&mut out);
                        self.sync_sinks();
                        let _ = reply.send(());
                    }
                    Msg::Shutdown => {
                        self.stop(&mut out);
                        return;
                    }
                    other => self.assembler.handle(other, &mut out),
                }
                handled += 1;
                if handled < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            // Dequeuing is what makes room: wake waiting callers before the sinks run.
            if self.room.waiting.load(Ordering::SeqCst) > 0
                && self.stats.queue_depth.load(Ordering::Relaxed) < self.room.level
            {
                self.room.notify.notify_waiters();
            }
            if last_tick.elapsed() >= TICK {
                self.assembler.expire_open_spans(Instant::now(), &mut out);
                last_tick = Instant::now();
            }
            self.emit(&mut out);
            self.flush_sinks();
        }
    }

    fn stop(&mut self, out: &mut Vec<Output>) {
        self.room.closed.store(true, Ordering::SeqCst);
        self.room.notify.notify_waiters();
        self.assembler.flush_all_open(out);
        self.emit(out);
        for sink in &mut self.sinks {
            if let Err(e) = sink.shutdown() {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
    }

    fn emit(&mut self, out: &mut Vec<Output>) {
        for item in out.drain(..) {
            for sink in &mut self.sinks {
                match &item {
                    Output::Started(s) => sink.span_started(s),
                    Output::Ended(s) => sink.span_ended(s),
                    Output::Event(e) => sink.event(e),
                    Output::Metric(m) => sink.metric(m),
                }
            }
        }
    }

    fn flush_sinks(&mut self) {
        for sink in &mut self.sinks {
            if let Err(e) = sink.flush() {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
    }

    fn sync_sinks(&mut self) {
        for sink in &mut self.sinks {
            if let Err(e) = sink.sync() {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
    }
}

struct OpenSpan {
    start: SpanStart,
    ttl_seconds: Option<i64>,
    events: Vec<SpanEvent>,
    opened: Instant,
}

type SpanKey = (TraceId, SpanId);

/// A bounded set of recently seen keys, oldest forgotten first.
struct RecentKeys<V> {
    map: HashMap<SpanKey, V>,
    order: VecDeque<SpanKey>,
    capacity: usize,
}

impl<V> RecentKeys<V> {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, key: SpanKey, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &SpanKey) -> bool {
        self.map.contains_key(key)
    }

    fn remove(&mut self, key: &SpanKey) -> Option<V> {
        self.map.remove(key)
    }
}

/// Turns span start/end events into spans. Keyed by (trace, span): no shared "current span".
struct Assembler {
    options: PipelineOptions,
    stats: Arc<PipelineStats>,
    open: HashMap<SpanKey, OpenSpan>,
    open_order: VecDeque<(Instant, SpanKey)>,
    /// Spans that ended recently: a late duplicate start for them is ignored.
    ended: RecentKeys<()>,
    /// Starts of spans flushed unfinished: a late end completes them.
    flushed_unfinished: RecentKeys<SpanStart>,
}

const RECENT_CAPACITY: usize = 65_536;

impl Assembler {
    fn new(options: PipelineOptions, stats: Arc<PipelineStats>) -> Self {
        Self {
            options,
            stats,
            open: HashMap::new(),
            open_order: VecDeque::new(),
            ended: RecentKeys::new(RECENT_CAPACITY),
            flushed_unfinished: RecentKeys::new(RECENT_CAPACITY / 4),
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

    fn handle(&mut self, msg: Msg, out: &mut Vec<Output>) {
        match msg {
            Msg::Event { event, ttl_seconds } => self.handle_event(event, ttl_seconds, out),
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
                        self.open.insert(
                            key,
                            OpenSpan {
                                start,
                                ttl_seconds,
                                events: Vec::new(),
                                opened: now,
                            },
                        );
                        self.open_order.push_back((now, key));
                        while self.open.len() > self.options.max_open_spans {
                            if !self.flush_oldest_open(out) {
                                break;
                            }
                        }
                    }
                    StructuredLogPayload::SpanEnd(p) => {
                        let (start, events, start_ttl) = match self.open.remove(&key) {
                            Some(open) => (Some(open.start), open.events, open.ttl_seconds),
                            None => (self.flushed_unfinished.remove(&key), Vec::new(), None),
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
                        out.push(Output::Ended(SpanRecord {
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
                        }));
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
                let expires_at = self.expires_at(ttl_seconds);
                out.push(Output::Metric(MetricPoint {
                    name: ev.metric.clone(),
                    timestamp: ev.timestamp,
                    value: ev.value.as_f64(),
                    unit: ev.unit.clone(),
                    labels: ev.attributes.clone(),
                    trace_id: Some(ev.trace_id),
                    span_id: Some(ev.span_id),
                    expires_at,
                }));
                let span_event = SpanEvent {
                    trace_id: Some(ev.trace_id),
                    span_id: Some(ev.span_id),
                    timestamp: ev.timestamp,
                    name: ev.metric,
                    body: SpanEventBody::Metric {
                        value: ev.value,
                        unit: ev.unit,
                    },
                    attributes: ev.attributes,
                    expires_at,
                };
                self.attach_event(span_event, out);
            }
        }
    }

    /// Emits the event, and keeps a copy in its span while the span is open.
    fn attach_event(&mut self, event: SpanEvent, out: &mut Vec<Output>) {
        if let (Some(t), Some(s)) = (event.trace_id, event.span_id)
            && let Some(open) = self.open.get_mut(&(t, s))
        {
            if open.events.len() < self.options.max_events_per_span {
                open.events.push(event.clone());
            } else if self.options.max_events_per_span > 0 {
                self.stats
                    .span_events_over_limit
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(Output::Event(event));
    }

    fn flush_unfinished(&mut self, key: SpanKey, out: &mut Vec<Output>) {
        let Some(open) = self.open.remove(&key) else {
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

    fn expire_open_spans(&mut self, now: Instant, out: &mut Vec<Output>) {
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

    fn flush_all_open(&mut self, out: &mut Vec<Output>) {
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
