//! The OTLP/HTTP receiver, OTel SDKs and collectors → tokentrace: `POST /v1/traces`,
//! `/v1/metrics`, `/v1/logs` in protobuf or JSON, optionally gzip-compressed. Received telemetry
//! goes through the same pipeline and sinks as the gateway's own. (The other direction,
//! tokentrace → a collector, is the pipeline's `sinks/otlp_export`.)

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokentrace_otlp::{
    Converted, DecodeError, Encoding, Signal, decode_logs, decode_metrics, decode_traces,
    export_response, gunzip, logs_to_events, metrics_to_points, status_body, traces_to_spans,
};
use tokentrace_pipeline::{Batch, SubmitError};

use crate::AppState;
use crate::guard::Access;

const TRACES_PATH: &str = "/v1/traces";
const METRICS_PATH: &str = "/v1/metrics";
const LOGS_PATH: &str = "/v1/logs";

/// Whether `path` is one of the receiver's (their bodies have `otlp_max_body_bytes`).
pub fn is_otlp_path(path: &str) -> bool {
    [TRACES_PATH, METRICS_PATH, LOGS_PATH].contains(&path)
}

/// The OTLP routes (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(TRACES_PATH, post(traces))
        .route(METRICS_PATH, post(metrics))
        .route(LOGS_PATH, post(logs))
}

/// An OTLP/HTTP error: status plus a `Status` body in the request's encoding.
struct OtlpError {
    status: StatusCode,
    encoding: Encoding,
    code: i32,
    message: String,
}

impl IntoResponse for OtlpError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, self.encoding.content_type())],
            status_body(self.encoding, self.code, &self.message),
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        res
    }
}

const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

/// A body read and decompressed: its encoding, its bytes and, for a decompressed one, the share
/// of the body budget its bytes take (held while the request is handled).
type ReadBody = (Encoding, Vec<u8>, Option<tokio::sync::OwnedSemaphorePermit>);

/// Reads, decompresses and checks the body.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReadBody, OtlpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        return Err(OtlpError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            encoding: Encoding::Json,
            code: INVALID_ARGUMENT,
            message: format!(
                "unsupported content type {content_type:?}: use application/x-protobuf or application/json"
            ),
        });
    };
    let err = |status, code, message: String| OtlpError {
        status,
        encoding,
        code,
        message,
    };
    let limit = state.settings.otlp_max_body_bytes;
    let raw = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(s) = source {
            too_large |= s.is::<http_body_util::LengthLimitError>();
            source = s.source();
        }
        if too_large {
            err(
                StatusCode::PAYLOAD_TOO_LARGE,
                RESOURCE_EXHAUSTED,
                format!("the body is larger than {limit} bytes"),
            )
        } else {
            err(
                StatusCode::BAD_REQUEST,
                INVALID_ARGUMENT,
                format!("cannot read the body: {e}"),
            )
        }
    })?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let (bytes, held) = match content_encoding.as_str() {
        "identity" | "" => (raw.to_vec(), None),
        "gzip" => {
            let bytes = gunzip(&raw, limit).map_err(|e| match e {
                DecodeError::TooLarge(_) => err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    RESOURCE_EXHAUSTED,
                    e.to_string(),
                ),
                DecodeError::Invalid(_) => {
                    err(StatusCode::BAD_REQUEST, INVALID_ARGUMENT, e.to_string())
                }
            })?;
            // The compressed body took its share before it was read; the decompressed one
            // takes its own.
            let held = state.settings.bodies.take(bytes.len()).map_err(|e| {
                err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    UNAVAILABLE,
                    e.detail.clone(),
                )
            })?;
            (bytes, Some(held))
        }
        other => {
            return Err(err(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID_ARGUMENT,
                format!("unsupported content encoding {other:?}: use gzip or none"),
            ));
        }
    };
    Ok((encoding, bytes, held))
}

/// A decoded request turned into one pipeline batch: the batch, how many items were rejected,
/// and why.
type Accepted = (Batch, i64, String);

/// Reads the body, decodes and converts it with `convert`, and submits the batch.
async fn receive(
    state: &AppState,
    access: &Access,
    headers: &HeaderMap,
    body: Body,
    signal: Signal,
    convert: impl FnOnce(&[u8], Encoding) -> Result<Accepted, DecodeError>,
) -> Response {
    let (encoding, bytes, _held) = match read_body(state, headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // A queue without room refuses before decoding: under overload, senders that retry quickly
    // would otherwise have every refused body decoded, taking CPU from the sinks that drain it.
    // It waits for room (up to `backpressure_ms`) first, holding only its raw body.
    if !state
        .telemetry
        .wait_for_ingest_room(state.settings.backpressure)
        .await
    {
        state.telemetry.count_refused(1);
        return full(encoding, SubmitError::Full);
    }
    let (mut batch, rejected, message) = match convert(&bytes, encoding) {
        Ok(accepted) => accepted,
        Err(e) => {
            return OtlpError {
                status: StatusCode::BAD_REQUEST,
                encoding,
                code: INVALID_ARGUMENT,
                message: e.to_string(),
            }
            .into_response();
        }
    };
    batch.stamp_project(&access.writes);
    let submitted = if state.settings.ack_committed {
        match state.telemetry.record_batch_acked(batch) {
            Ok(ack) => match ack.committed(state.settings.request_timeout).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    return OtlpError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        encoding,
                        code: UNAVAILABLE,
                        message: e.to_string(),
                    }
                    .into_response();
                }
            },
            Err(e) => Err(e),
        }
    } else {
        state.telemetry.record_batch(batch)
    };
    match submitted {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoding.content_type())],
            export_response(signal, encoding, rejected, message),
        )
            .into_response(),
        Err(e) => full(encoding, e),
    }
}

/// 503 with `Retry-After`: the pipeline is full or stopping.
fn full(encoding: Encoding, e: SubmitError) -> Response {
    OtlpError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        encoding,
        code: UNAVAILABLE,
        message: match e {
            SubmitError::Full => {
                "the telemetry pipeline is full; retry after the Retry-After delay".into()
            }
            SubmitError::Closed => "tokentrace is shutting down".into(),
        },
    }
    .into_response()
}

/// A conversion's items as a batch (placed by `into`), with its rejected count and message.
fn accepted<T>(c: Converted<T>, into: impl FnOnce(Vec<T>) -> Batch) -> Accepted {
    let message = c.error_message();
    (into(c.items), c.rejected, message)
}

async fn traces(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(&state, &access, &headers, body, Signal::Traces, |b, e| {
        let spans = traces_to_spans(&decode_traces(b, e)?, None);
        Ok(accepted(spans, |spans| Batch {
            spans,
            ..Batch::default()
        }))
    })
    .await
}

async fn metrics(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(&state, &access, &headers, body, Signal::Metrics, |b, e| {
        let points = metrics_to_points(&decode_metrics(b, e)?, None);
        Ok(accepted(points, |metrics| Batch {
            metrics,
            ..Batch::default()
        }))
    })
    .await
}

async fn logs(
    State(state): State<AppState>,
    access: Access,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(&state, &access, &headers, body, Signal::Logs, |b, e| {
        let events = logs_to_events(&decode_logs(b, e)?, None);
        Ok(accepted(events, |events| Batch {
            events,
            ..Batch::default()
        }))
    })
    .await
}
