//! SQLite sink: encodes spans, events and metric points into store rows and hands each drained
//! batch to the trace store's writer thread.

use tokentrace_model::{MetricPoint, SpanEvent, SpanRecord};
use tokentrace_store::{Row, StoreError, StoreWriter};

use crate::{Sink, SinkError};

/// Encodes what the pipeline emits (on the pipeline thread) and passes each batch to the store
/// in one call; the store's writer thread only executes the inserts.
pub struct SqliteSink {
    writer: StoreWriter,
    buffer: Vec<Row>,
    encode_errors: u64,
    /// The pipeline's message number the buffered rows reach, and the one last passed on.
    mark: u64,
    mark_sent: u64,
}

impl SqliteSink {
    /// A sink writing through this store writer.
    pub fn new(writer: StoreWriter) -> Self {
        Self {
            writer,
            buffer: Vec::new(),
            encode_errors: 0,
            mark: 0,
            mark_sent: 0,
        }
    }

    fn error(e: impl std::fmt::Display) -> SinkError {
        SinkError {
            sink: "sqlite",
            message: e.to_string(),
        }
    }

    fn push(&mut self, row: Result<Row, StoreError>) {
        match row {
            Ok(row) => self.buffer.push(row),
            Err(e) => {
                self.encode_errors += 1;
                tracing::error!("sqlite sink: cannot encode a record: {e}");
            }
        }
    }
}

impl Sink for SqliteSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        // The span's events reach `event` one by one; the row holds the span alone.
        self.push(self.writer.span_row(span));
    }

    fn event(&mut self, event: &SpanEvent) {
        self.push(Row::event(event));
    }

    fn metric(&mut self, point: &MetricPoint) {
        self.push(Row::metric(point));
    }

    fn mark(&mut self, upto: u64) {
        self.mark = upto;
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.buffer.is_empty() && self.mark == self.mark_sent {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buffer);
        self.mark_sent = self.mark;
        self.writer
            .write_rows_marked(batch, self.mark)
            .map_err(Self::error)
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.flush()?;
        self.writer.flush().map_err(Self::error)
    }
}
