//! OTLP/HTTP answers: export responses with `partial_success`, and `Status` error bodies.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use crate::Encoding;

/// Which signal an answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `/v1/traces`.
    Traces,
    /// `/v1/metrics`.
    Metrics,
    /// `/v1/logs`.
    Logs,
}

fn encode<T: Message + serde::Serialize>(msg: &T, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

/// The success answer, with `partial_success` when some items were rejected.
pub fn export_response(
    signal: Signal,
    encoding: Encoding,
    rejected: i64,
    message: String,
) -> Vec<u8> {
    let partial = rejected > 0 || !message.is_empty();
    match signal {
        Signal::Traces => encode(
            &ExportTraceServiceResponse {
                partial_success: partial.then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
        Signal::Metrics => encode(
            &ExportMetricsServiceResponse {
                partial_success: partial.then_some(ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
        Signal::Logs => encode(
            &ExportLogsServiceResponse {
                partial_success: partial.then_some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct RpcStatus {
    /// gRPC status code (3: invalid argument, 8: resource exhausted, 14: unavailable).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// An error body in the request's encoding.
pub fn status_body(encoding: Encoding, code: i32, message: &str) -> Vec<u8> {
    encode(
        &RpcStatus {
            code,
            message: message.to_string(),
        },
        encoding,
    )
}
