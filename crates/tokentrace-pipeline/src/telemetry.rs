//! The way in: [`Telemetry`], the handle every producer submits through (events, spans, metric
//! points, batches), the bounded queue behind it, the room callers wait for under load, and
//! [`Pipeline`], which owns the thread that drains the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokentrace_config::TelemetryConfig;
use tokentrace_model::{Event, MetricPoint, SpanEvent, SpanRecord};

use crate::assemble::Assembler;
use crate::worker::Worker;
use crate::{Sink, size, thread};

/// Tuning of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Items (events, spans, metric points) buffered before submitters are told to back off.
    pub queue_capacity: usize,
    /// Bytes of items (estimated from string lengths and a fixed overhead per item and
    /// attribute) buffered before submitters are told to back off.
    pub queue_max_bytes: u64,
    /// Spans not ended after this long are flushed as unfinished.
    pub span_timeout: Duration,
    /// Retention for events sent without `ttl_seconds`.
    pub default_ttl_seconds: i64,
    /// Events kept inside one open span for exporters (all are stored regardless).
    pub max_events_per_span: usize,
    /// Open spans kept at most; beyond it the oldest is flushed unfinished.
    pub max_open_spans: usize,
    /// Bytes (estimated) the open spans, with the events kept in them, and the starts kept for
    /// late ends may hold; beyond it the oldest open span is flushed unfinished.
    pub max_open_bytes: u64,
    /// The service name recorded on spans that do not carry one.
    pub service_name: String,
    /// Nice value of the pipeline thread (see [`crate::thread::set_nice`]).
    pub thread_nice: i32,
    /// Personal data replaced before the sinks see it.
    pub redaction: tokentrace_config::RedactionConfig,
    /// What tokens cost, for the LLM calls applications report.
    pub pricing: std::sync::Arc<tokentrace_config::PriceTable>,
    /// How far messages are handled and committed (the sqlite sink's store reports to it).
    pub commits: Arc<crate::ack::Commits>,
}

impl PipelineOptions {
    /// The options a run config asks for. The limit the config does not expose
    /// (`max_events_per_span`) has its one default here.
    pub fn from_config(tc: &TelemetryConfig) -> Self {
        Self {
            queue_capacity: tc.queue_capacity,
            queue_max_bytes: tc.queue_max_bytes,
            span_timeout: Duration::from_secs(tc.span_timeout_seconds),
            default_ttl_seconds: tc.default_ttl_seconds,
            max_events_per_span: 1_000,
            max_open_spans: tc.max_open_spans,
            max_open_bytes: tc.max_open_bytes,
            service_name: tc.service_name.clone(),
            thread_nice: tc.thread_nice,
            redaction: tc.redaction.clone(),
            pricing: std::sync::Arc::new(tokentrace_config::PriceTable::embedded()),
            commits: crate::ack::Commits::new(),
        }
    }
}

impl Default for PipelineOptions {
    /// The options of the default run config.
    fn default() -> Self {
        Self::from_config(&TelemetryConfig::default())
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
    /// Items in the queue now (approximate).
    pub queue_depth: AtomicU64,
    /// Bytes of the items in the queue now (estimated, see `queue_max_bytes`).
    pub queue_bytes: AtomicU64,
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
    /// Ingestion requests (events API, OTLP) held by [`Telemetry::wait_for_ingest_room`]
    /// because the queue had no room when they came.
    pub ingest_waits: AtomicU64,
    /// Matches replaced by redaction, by kind.
    pub redactions: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Where callers wait for room in a full queue; the pipeline thread wakes them.
pub(crate) struct Room {
    /// Queue depth and bytes below which there is room: three quarters of each bound, so that
    /// the callers let through together still fit.
    level: u64,
    byte_level: u64,
    /// Below which ingestion (events API, OTLP receiver) is let in: half of each bound (and
    /// of the bytes [`INGEST_TIME`] of drain), so that senders retrying as fast as they are
    /// refused never take the room the API's own spans (the gateway's) wait for.
    ingest_level: u64,
    ingest_byte_level: u64,
    /// Bytes per second the pipeline thread drains (through the sinks, so a slow store slows
    /// it), measured by the worker; 0 until measured. The byte levels above shrink to what it
    /// drains in [`INGEST_TIME`] and [`API_TIME`]: what is acknowledged waits at most about
    /// that long in the queue, whatever the machine and the load.
    pace: AtomicU64,
    notify: tokio::sync::Notify,
    waiting: AtomicUsize,
    closed: AtomicBool,
}

/// Queue contents, in drain time, below which ingestion (events API, OTLP) is let in.
pub(crate) const INGEST_TIME: Duration = Duration::from_millis(25);
/// Queue contents, in drain time, below which the API's own requests go on without waiting.
pub(crate) const API_TIME: Duration = Duration::from_millis(50);
/// Commit lag (the oldest message accepted and not yet committed, `crate::ack`) below which
/// ingestion is let in: whatever makes the store fall behind (a slow disk, a starved thread, a
/// checkpoint), senders are held once what they were told is stored is this far ahead of it.
pub(crate) const INGEST_LAG: Duration = Duration::from_millis(75);
/// Commit lag below which the API's own requests go on without waiting.
pub(crate) const API_LAG: Duration = Duration::from_millis(100);
/// The time-bounded levels never shrink below this (a large batch must still get in).
const MIN_TIMED_BYTES: u64 = 1 << 20;

impl Room {
    fn new(capacity: usize, max_bytes: u64) -> Self {
        Self {
            level: (capacity - capacity / 4).max(1) as u64,
            byte_level: (max_bytes - max_bytes / 4).max(1),
            ingest_level: (capacity / 2).max(1) as u64,
            ingest_byte_level: (max_bytes / 2).max(1),
            pace: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// `level`, or what the pipeline drains in `time` if that is less (not below
    /// [`MIN_TIMED_BYTES`]).
    fn timed(&self, level: u64, time: Duration) -> u64 {
        match self.pace.load(Ordering::Relaxed) {
            0 => level,
            pace => {
                ((pace as f64 * time.as_secs_f64()) as u64).clamp(MIN_TIMED_BYTES.min(level), level)
            }
        }
    }

    fn has_room(&self, stats: &PipelineStats) -> bool {
        stats.queue_depth.load(Ordering::Relaxed) < self.level
            && stats.queue_bytes.load(Ordering::Relaxed) < self.timed(self.byte_level, API_TIME)
    }

    fn has_room_for_ingest(&self, stats: &PipelineStats) -> bool {
        stats.queue_depth.load(Ordering::Relaxed) < self.ingest_level
            && stats.queue_bytes.load(Ordering::Relaxed)
                < self.timed(self.ingest_byte_level, INGEST_TIME)
    }

    /// The worker drained `bytes` in `took` (a round: dequeue, assemble, sinks).
    pub(crate) fn drained(&self, bytes: u64, took: Duration) {
        if bytes == 0 || took.is_zero() {
            return;
        }
        let now = bytes as f64 / took.as_secs_f64();
        let before = self.pace.load(Ordering::Relaxed) as f64;
        let pace = if before == 0.0 {
            now
        } else {
            0.8 * before + 0.2 * now
        };
        self.pace.store(pace.max(1.0) as u64, Ordering::Relaxed);
    }

    /// Called by the pipeline thread after it dequeued: wakes waiting callers if there is room.
    pub(crate) fn wake_if_room(&self, stats: &PipelineStats) {
        if self.waiting.load(Ordering::SeqCst) > 0 && self.has_room(stats) {
            self.notify.notify_waiters();
        }
    }

    /// Wakes waiting callers to look again (a commit shortened the lag).
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// The pipeline is stopping: nobody waits any more.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
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

impl Batch {
    /// Puts everything in the batch in `project`: spans and their events, events, and metric
    /// points (as their label); what the sender said of its project is replaced.
    pub fn stamp_project(&mut self, project: &str) {
        for s in &mut self.spans {
            tokentrace_model::stamp_span(s, project);
        }
        for e in &mut self.events {
            tokentrace_model::stamp_project(&mut e.attributes, project);
        }
        for m in &mut self.metrics {
            tokentrace_model::stamp_project(&mut m.labels, project);
        }
    }
}

/// What travels through the queue to the pipeline thread.
pub(crate) enum Msg {
    Batch(Box<Batch>),
    /// Boxed like the others: the queue's slots are allocated (and touched) up front, so every
    /// variant stays a pointer wide (65,536 inline events held ~10 MiB resident when idle).
    Event(Box<(Event, Option<i64>)>),
    Span(Box<SpanRecord>),
    SpanEvent(Box<SpanEvent>),
    Metric(Box<MetricPoint>),
    /// A message whose number the submitter waits for.
    Ticketed(Box<Msg>, Arc<crate::ack::Ticket>),
    /// A message whose commit lag is measured: accepted at that instant (see `crate::ack`).
    Probe(Box<(Msg, std::time::Instant)>),
    Flush(SyncSender<()>),
    Shutdown,
}

const _: () = assert!(std::mem::size_of::<Msg>() <= 24);

impl Msg {
    /// How many items a message carries, for the queue's bound.
    pub(crate) fn weight(&self) -> u64 {
        match self {
            Msg::Batch(b) => (b.spans.len() + b.events.len() + b.metrics.len()).max(1) as u64,
            Msg::Ticketed(inner, _) => inner.weight(),
            Msg::Probe(inner) => inner.0.weight(),
            // Control messages bypass `submit` and are not counted.
            Msg::Flush(_) | Msg::Shutdown => 0,
            _ => 1,
        }
    }

    /// About how many bytes a message holds, for the queue's byte bound.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Msg::Batch(b) => {
                b.spans.iter().map(size::span).sum::<u64>()
                    + b.events.iter().map(size::span_event).sum::<u64>()
                    + b.metrics.iter().map(size::point).sum::<u64>()
            }
            Msg::Event(e) => size::event(&e.0),
            Msg::Span(s) => size::span(s),
            Msg::SpanEvent(e) => size::span_event(e),
            Msg::Metric(p) => size::point(p),
            Msg::Ticketed(inner, _) => inner.bytes(),
            Msg::Probe(inner) => inner.0.bytes(),
            Msg::Flush(_) | Msg::Shutdown => 0,
        }
    }
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
    /// Bytes the queue's items may hold.
    max_bytes: u64,
    room: Arc<Room>,
    commits: Arc<crate::ack::Commits>,
}

impl Telemetry {
    fn submit_acked(&self, msg: Msg) -> Result<crate::ack::Ack, SubmitError> {
        let ticket = Arc::new(crate::ack::Ticket::default());
        self.submit(Msg::Ticketed(Box::new(msg), ticket.clone()))?;
        Ok(crate::ack::Ack {
            ticket,
            commits: self.commits.clone(),
        })
    }

    /// [`Telemetry::log_event`], with an acknowledgement to wait for its commit.
    pub fn log_event_acked(
        &self,
        event: Event,
        ttl_seconds: Option<i64>,
    ) -> Result<crate::ack::Ack, SubmitError> {
        self.submit_acked(Msg::Event(Box::new((event, ttl_seconds))))
    }

    /// [`Telemetry::record_batch`], with an acknowledgement to wait for its commit.
    pub fn record_batch_acked(&self, batch: Batch) -> Result<crate::ack::Ack, SubmitError> {
        self.submit_acked(Msg::Batch(Box::new(batch)))
    }

    fn submit(&self, msg: Msg) -> Result<(), SubmitError> {
        let weight = msg.weight();
        let bytes = msg.bytes();
        let depth = self.stats.queue_depth.fetch_add(weight, Ordering::Relaxed);
        let held = self.stats.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
        let unqueue = || {
            self.stats.queue_depth.fetch_sub(weight, Ordering::Relaxed);
            self.stats.queue_bytes.fetch_sub(bytes, Ordering::Relaxed);
        };
        // A batch larger than the whole queue is still accepted into an empty queue.
        if depth > 0
            && (depth.saturating_add(weight) > self.capacity
                || held.saturating_add(bytes) > self.max_bytes)
        {
            unqueue();
            self.stats
                .rejected_full
                .fetch_add(weight, Ordering::Relaxed);
            return Err(SubmitError::Full);
        }
        let probe = self.commits.probe_due();
        let msg = match probe {
            Some(at) => Msg::Probe(Box::new((msg, at))),
            None => msg,
        };
        let refused = |e| {
            unqueue();
            if let Some(at) = probe {
                self.commits.unprobe(at);
            }
            e
        };
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.stats.accepted.fetch_add(weight, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.stats
                    .rejected_full
                    .fetch_add(weight, Ordering::Relaxed);
                Err(refused(SubmitError::Full))
            }
            Err(TrySendError::Disconnected(_)) => Err(refused(SubmitError::Closed)),
        }
    }

    /// Submits a Llama Stack event; `ttl_seconds` overrides the default retention.
    pub fn log_event(&self, event: Event, ttl_seconds: Option<i64>) -> Result<(), SubmitError> {
        self.submit(Msg::Event(Box::new((event, ttl_seconds))))
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

    /// Counts `items` refused by a caller that checked [`Telemetry::has_room`] first and did not
    /// submit (a request refused before its items were decoded counts 1).
    pub fn count_refused(&self, items: u64) {
        self.stats.rejected_full.fetch_add(items, Ordering::Relaxed);
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Whether the queue is below the level at which [`Telemetry::wait_for_room`] waits: three
    /// quarters of its capacity, so that the callers let through together still fit; and the
    /// commit lag is under 100 ms (`API_LAG`).
    pub fn has_room(&self) -> bool {
        self.room.has_room(&self.stats) && self.commits.lag() < API_LAG
    }

    /// Whether ingestion (events API, OTLP receiver) may submit: the queue is below half of
    /// both bounds, and holds less than 25 ms of the pipeline's measured drain (`INGEST_TIME`).
    /// Otherwise senders are refused (503) before their bodies are decoded: what was
    /// acknowledged waits in the queue about that long at most, and the room above stays for
    /// the spans of the API's own requests, which wait for room above 50 ms of it
    /// (`API_TIME`) and three quarters of the bounds: a flood of telemetry cannot starve the
    /// gateway. And the commit lag ([`crate::Commits::lag`]) is under 75 ms (`INGEST_LAG`):
    /// whatever holds the store back, what is acknowledged stays about that far ahead of it.
    pub fn has_room_for_ingest(&self) -> bool {
        self.room.has_room_for_ingest(&self.stats) && self.commits.lag() < INGEST_LAG
    }

    /// Bytes per second the pipeline thread has been draining (a moving average; 0 until
    /// measured): what the queue's time bounds are computed from.
    pub fn drain_pace(&self) -> u64 {
        self.room.pace.load(Ordering::Relaxed)
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
        let in_time = self.wait_until(limit, || self.has_room()).await;
        if !in_time {
            self.stats
                .room_wait_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        in_time
    }

    /// Waits, at most `limit`, until ingestion has room ([`Telemetry::has_room_for_ingest`])
    /// or the pipeline stops; `false` when `limit` passed first. The events API and the OTLP
    /// receiver hold a request this long before answering 503: a sender that honours
    /// `Retry-After` (OpenTelemetry's exporters do, a second at least) then waits only as
    /// long as the queue is full, instead of a second per refusal, and keeps the pipeline busy.
    pub async fn wait_for_ingest_room(&self, limit: Duration) -> bool {
        if self.has_room_for_ingest() {
            return true;
        }
        self.stats.ingest_waits.fetch_add(1, Ordering::Relaxed);
        self.wait_until(limit, || self.has_room_for_ingest()).await
    }

    /// Waits, at most `limit`, until `room()` or the pipeline stops; woken by the pipeline
    /// thread when it makes room.
    async fn wait_until(&self, limit: Duration, room: impl Fn() -> bool) -> bool {
        self.room.waiting.fetch_add(1, Ordering::SeqCst);
        let wait = async {
            loop {
                let mut notified = std::pin::pin!(self.room.notify.notified());
                // Registered before the check, so a wake-up between the two is not missed.
                notified.as_mut().enable();
                if room() || self.room.closed.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        let in_time = tokio::time::timeout(limit, wait).await.is_ok();
        self.room.waiting.fetch_sub(1, Ordering::SeqCst);
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
        let max_bytes = options.queue_max_bytes.max(1);
        let room = Arc::new(Room::new(capacity, max_bytes));
        let redactor = crate::redact::Redactor::new(&options.redaction);
        let commits = options.commits.clone();
        commits.wake_on_commit(&room);
        let worker = Worker::new(
            Assembler::new(options, stats.clone()),
            redactor,
            sinks,
            stats.clone(),
            (room.clone(), commits.clone()),
        );
        let thread = std::thread::Builder::new()
            .name("tokentrace-pipeline".into())
            .spawn(move || {
                thread::set_nice(nice);
                worker.run(rx)
            })?;
        Ok(Pipeline {
            telemetry: Telemetry {
                tx,
                stats,
                capacity: capacity as u64,
                max_bytes,
                room,
                commits,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_shrinks_to_what_the_pipeline_drains_in_its_time() {
        let room = Room::new(65_536, 32 << 20);
        let stats = PipelineStats::default();
        stats.queue_bytes.store(8 << 20, Ordering::Relaxed);
        // Unmeasured: half and three quarters of 32 MiB.
        assert!(room.has_room_for_ingest(&stats) && room.has_room(&stats));
        // 80 MiB/s: ingestion gets 25 ms of it (2 MiB), the API 50 ms (4 MiB).
        assert_eq!((INGEST_TIME.as_millis(), API_TIME.as_millis()), (25, 50));
        room.drained(80 << 20, Duration::from_secs(1));
        assert!(!room.has_room_for_ingest(&stats) && !room.has_room(&stats));
        stats.queue_bytes.store(3 << 20, Ordering::Relaxed);
        assert!(!room.has_room_for_ingest(&stats) && room.has_room(&stats));
        stats.queue_bytes.store(1 << 20, Ordering::Relaxed);
        assert!(room.has_room_for_ingest(&stats));
        // However slow the drain, 1 MiB stays open.
        for _ in 0..50 {
            room.drained(1, Duration::from_secs(1));
        }
        stats.queue_bytes.store((1 << 20) - 1, Ordering::Relaxed);
        assert!(room.has_room_for_ingest(&stats) && room.has_room(&stats));
    }
}
