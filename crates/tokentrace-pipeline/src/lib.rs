//! tokentrace's in-process telemetry pipeline: span assembly and fan-out to the sinks.

mod pipeline;
mod sink;
pub mod sinks;

pub use pipeline::{Batch, Pipeline, PipelineOptions, PipelineStats, SubmitError, Telemetry};
pub use sink::{Sink, SinkError, SpanStart};
