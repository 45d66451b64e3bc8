//! SQLite sink: hands spans, events and metric points to the trace store's writer thread.

use tokentrace_model::{MetricPoint, SpanEvent, SpanRecord};
use tokentrace_store::{Record, StoreWriter};

use crate::{Sink, SinkError};

/// Buffers what the pipeline emits and passes each drained batch to the store in one call.
pub struct SqliteSink {
    writer: StoreWriter,
    buffer: Vec<Record>,
}

impl SqliteSink {
    /// A sink writing through this store writer.
    pub fn new(writer: StoreWriter) -> Self {
        Self {
            writer,
            buffer: Vec::new(),
        }
    }

    fn error(e: impl std::fmt::Display) -> SinkError {
        SinkError {
            sink: "sqlite",
            message: e.to_string(),
        }
    }
}

impl Sink for SqliteSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        // The span's events reach `event` one by one; the row holds the span alone.
        self.buffer.push(Record::Span(SpanRecord {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            name: span.name.clone(),
            kind: span.kind,
            start_time: span.start_time,
            end_time: span.end_time,
            status: span.status,
            status_message: span.status_message.clone(),
            attributes: span.attributes.clone(),
            events: Vec::new(),
            links: span.links.clone(),
            service_name: span.service_name.clone(),
            expires_at: span.expires_at,
        }));
    }

    fn event(&mut self, event: &SpanEvent) {
        self.buffer.push(Record::Event(event.clone()));
    }

    fn metric(&mut self, point: &MetricPoint) {
        self.buffer.push(Record::Metric(point.clone()));
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buffer);
        self.writer.write(batch).map_err(Self::error)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.writer.flush().map_err(Self::error)
    }
}
