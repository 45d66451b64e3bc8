//! tokentrace's in-process telemetry pipeline, in the order telemetry flows through it:
//! `telemetry.rs` ([`Telemetry`], the handle producers submit through, and its bounded queue) →
//! [`assemble`] (where events become spans) → `worker.rs` (fan-out, in arrival order) →
//! [`sinks`] (console, sqlite, otlp_export, prometheus, memory).

pub mod ack;
pub mod assemble;
pub mod genai;
pub mod redact;
mod sink;
pub mod sinks;
mod size;
mod telemetry;
pub mod thread;
mod worker;

pub use ack::{Ack, AckError, Commits};
pub use assemble::metric_records;
pub use sink::{Sink, SinkError, SpanStart};
pub use telemetry::{Batch, Pipeline, PipelineOptions, PipelineStats, SubmitError, Telemetry};
