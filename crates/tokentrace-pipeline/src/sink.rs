//! The interface every sink implements.

use tokentrace_model::{
    Attributes, MetricPoint, SpanEvent, SpanId, SpanRecord, Timestamp, TraceId,
};

/// A span has started (the console shows it; stores wait for its end).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanStart {
    /// Trace.
    pub trace_id: TraceId,
    /// Span.
    pub span_id: SpanId,
    /// Parent span, if any.
    pub parent_span_id: Option<SpanId>,
    /// Operation name.
    pub name: String,
    /// Start time.
    pub timestamp: Timestamp,
    /// Attributes known at start.
    pub attributes: Attributes,
}

/// A sink failed in a way the pipeline should report.
#[derive(Debug, thiserror::Error)]
#[error("{sink} sink: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Receives everything the pipeline assembles. Methods are called from the pipeline thread, in
/// arrival order; a sink that does I/O buffers in the `span_*`/`event`/`metric` calls and writes
/// in [`Sink::flush`], which the pipeline calls after each batch it drains.
pub trait Sink: Send {
    /// Short name for messages (`console`, `sqlite`, ...).
    fn name(&self) -> &'static str;

    /// Whether this sink reads `span.events` in [`Sink::span_ended`] (exporters do). When no sink
    /// does, the pipeline does not keep copies of events inside open spans.
    fn wants_span_events(&self) -> bool {
        false
    }

    /// A span has started.
    fn span_started(&mut self, _start: &SpanStart) {}

    /// A span has ended, or was flushed unfinished (then `end_time` is `None`). `span.events`
    /// repeats the events already passed to [`Sink::event`] while the span was open, for sinks
    /// that export events inside their span.
    fn span_ended(&mut self, span: &SpanRecord);

    /// A log, metric or other event, called once for every event as it arrives, whether or not its
    /// span is known.
    fn event(&mut self, event: &SpanEvent);

    /// A metric data point (every metric event also arrives here).
    fn metric(&mut self, _point: &MetricPoint) {}

    /// Everything emitted so far belongs to the pipeline's numbered messages up to `upto`;
    /// called before [`Sink::flush`] and [`Sink::sync`]. A sink that stores durably passes it
    /// on, so that the commit of those messages can be acknowledged (`telemetry.ack`).
    fn mark(&mut self, _upto: u64) {}

    /// Writes what is buffered. May block: that is how the pipeline feels back-pressure.
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Writes what is buffered and waits until it is durable (for SQLite: committed). Called when
    /// a caller asks the pipeline to flush.
    fn sync(&mut self) -> Result<(), SinkError> {
        self.flush()
    }

    /// Flushes and releases resources; called once when the pipeline stops.
    fn shutdown(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}
