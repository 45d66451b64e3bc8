//! Errors of the telemetry API: `{"detail": "..."}` with the right status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokentrace_model::query::InvalidQuery;
use tokentrace_pipeline::SubmitError;
use tokentrace_store::StoreError;

/// An error answered as `{"detail": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub detail: String,
    /// Seconds after which a retry may succeed (503/429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// 400: the request is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// Any status with a detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 503 + `Retry-After`: accepted, but the commit `telemetry.ack: committed` waits for did
    /// not come (in time, or at all).
    pub fn not_committed(e: tokentrace_pipeline::AckError) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        err.retry_after = Some(1);
        err
    }

    /// 500: something failed on our side; the cause is logged, not sent.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context} failed; see the server log"),
        )
    }
}

impl From<InvalidQuery> for ApiError {
    fn from(e: InvalidQuery) -> Self {
        Self::bad_request(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(detail) | StoreError::BadQuery(detail) => {
                Self::bad_request(detail)
            }
            e if e.is_interrupted() => {
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the query was stopped: it ran past its time budget (query_timeout_seconds) or tokentrace is stopping; narrow it with attribute_filters (a start_time window, an indexed attribute) and retry",
                );
                err.retry_after = Some(1);
                err
            }
            e => Self::internal("trace store query", &e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        if e == SubmitError::Full {
            err.retry_after = Some(1);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(serde_json::json!({ "detail": self.detail })),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}
