//! OpenTelemetry sinks: `otel_trace` (spans over OTLP/HTTP protobuf) and `otel_metric` (token
//! counters, GenAI histograms and every metric event, cumulative, exported periodically).
//!
//! Each sink owns a thread with a blocking HTTP client: export never runs on the pipeline
//! thread or the async runtime, a bounded queue sits in front of it, retryable failures are
//! retried with backoff, and what cannot be sent is dropped and counted.

mod export;
mod metrics;
mod traces;

pub use export::{ExportConfig, ExportStats};
pub use metrics::OtlpMetricSink;
pub use traces::OtlpTraceSink;
