//! OTLP exporters, tokentrace → a collector: `otel_trace` (spans over OTLP/HTTP protobuf) and
//! `otel_metric` (token counters, GenAI histograms and every metric event, cumulative, exported
//! periodically). The receiving direction, a collector-compatible endpoint for OTel SDKs, is the
//! server's `ingest/otlp.rs`.
//!
//! Each sink owns a thread with a blocking HTTP client: export never runs on the pipeline
//! thread or the async runtime, a bounded queue sits in front of it, retryable failures are
//! retried with backoff, and what cannot be sent is dropped and counted.

mod config;
mod export;
mod metrics;
mod traces;

pub use config::{OtelMetricConfig, OtelTraceConfig};
pub use export::{ExportConfig, ExportStats};
pub use metrics::OtlpMetricSink;
pub use traces::OtlpTraceSink;
