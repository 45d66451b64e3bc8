//! Request bodies: protobuf or OTLP/JSON, optionally gzip-compressed.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// How a body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP/JSON: hex ids, camelCase, 64-bit integers as strings).
    Json,
}

impl Encoding {
    /// The encoding of a `Content-Type`, if it is one OTLP/HTTP allows.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let media = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not valid for its encoding.
    #[error("cannot decode the {0}")]
    Invalid(String),
    /// Larger than allowed once decompressed.
    #[error("the decompressed body is larger than {0} bytes")]
    TooLarge(usize),
}

/// Decompresses a gzip body, refusing to grow past `limit` bytes.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Invalid(format!("gzip body: {e}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(out)
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    body: &[u8],
    encoding: Encoding,
    what: &str,
) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Protobuf => {
            T::decode(body).map_err(|e| DecodeError::Invalid(format!("protobuf {what}: {e}")))
        }
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| DecodeError::Invalid(format!("JSON {what}: {e}"))),
    }
}

/// Decodes an `ExportTraceServiceRequest`.
pub fn decode_traces(
    body: &[u8],
    encoding: Encoding,
) -> Result<ExportTraceServiceRequest, DecodeError> {
    decode(body, encoding, "ExportTraceServiceRequest")
}

/// Decodes an `ExportMetricsServiceRequest`.
pub fn decode_metrics(
    body: &[u8],
    encoding: Encoding,
) -> Result<ExportMetricsServiceRequest, DecodeError> {
    decode(body, encoding, "ExportMetricsServiceRequest")
}

/// Decodes an `ExportLogsServiceRequest`.
pub fn decode_logs(
    body: &[u8],
    encoding: Encoding,
) -> Result<ExportLogsServiceRequest, DecodeError> {
    decode(body, encoding, "ExportLogsServiceRequest")
}
