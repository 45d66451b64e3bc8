//! In-memory sink: keeps everything it receives, for tests and embedding.

use std::sync::{Arc, Mutex, MutexGuard};

use tokentrace_model::{MetricPoint, SpanEvent, SpanRecord};

use crate::{Sink, SpanStart};

/// What a [`MemorySink`] has received, in arrival order.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Span starts.
    pub starts: Vec<SpanStart>,
    /// Ended (or unfinished) spans.
    pub spans: Vec<SpanRecord>,
    /// Events.
    pub events: Vec<SpanEvent>,
    /// Metric points.
    pub metrics: Vec<MetricPoint>,
    /// Number of `sync` calls.
    pub syncs: usize,
}

/// A sink that records into shared memory; clone the handle from [`MemorySink::recorded`].
#[derive(Clone, Default)]
pub struct MemorySink {
    recorded: Arc<Mutex<Recorded>>,
}

impl MemorySink {
    /// A new, empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks and returns what was recorded so far.
    pub fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn wants_span_events(&self) -> bool {
        true
    }

    fn span_started(&mut self, start: &SpanStart) {
        self.recorded().starts.push(start.clone());
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        self.recorded().spans.push(span.clone());
    }

    fn event(&mut self, event: &SpanEvent) {
        self.recorded().events.push(event.clone());
    }

    fn metric(&mut self, point: &MetricPoint) {
        self.recorded().metrics.push(point.clone());
    }

    fn sync(&mut self) -> Result<(), crate::SinkError> {
        self.recorded().syncs += 1;
        Ok(())
    }
}
