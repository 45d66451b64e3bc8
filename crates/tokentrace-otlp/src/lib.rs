//! OTLP mapping: OpenTelemetry protobuf and JSON payloads to tokentrace's spans, events and
//! metric points (for the receiver), and back (for the exporters).

mod decode;
pub mod encode;
pub mod from_model;
mod response;
mod to_model;

pub use decode::{DecodeError, Encoding, decode_logs, decode_metrics, decode_traces, gunzip};
pub use opentelemetry_proto::tonic as proto;
pub use response::{RpcStatus, Signal, export_response, status_body};
pub use to_model::{Converted, logs_to_events, metrics_to_points, traces_to_spans};
