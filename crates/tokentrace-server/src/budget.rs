//! The budget of request bodies held at once, in bytes: every body is read whole (and an
//! OTLP body decompressed) before it is handled, so without it memory would grow with the
//! number of connections times the body limits. A request takes its share before its body is
//! read — its declared `Content-Length`, or the route's limit when it declares none — and
//! gives it back when its answer is ready; a gzip OTLP body takes its decompressed size too.
//! A request that finds the budget spent is answered 503 with `Retry-After` at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiError;

/// Bytes of request bodies held at once: this many times the OTLP body limit (64 MiB with the
/// defaults).
pub const BODIES_PER_BUDGET: usize = 4;

/// The budget, counted in KiB.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total_kib: usize,
    refused: Arc<AtomicU64>,
    max_body: usize,
    otlp_max_body: usize,
}

impl BodyBudget {
    /// A budget of [`BODIES_PER_BUDGET`] bodies of the largest limit.
    pub fn new(max_body: usize, otlp_max_body: usize) -> Self {
        let bytes = BODIES_PER_BUDGET.saturating_mul(max_body.max(otlp_max_body));
        let total_kib = kib(bytes) as usize;
        Self {
            permits: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            refused: Arc::new(AtomicU64::new(0)),
            max_body,
            otlp_max_body,
        }
    }

    /// `bytes` of the budget, if that much is left.
    pub fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits
            .clone()
            .try_acquire_many_owned(kib(bytes))
            .map_err(|_| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many request bodies are being received at once; retry after the Retry-After delay",
                );
                err.retry_after = Some(1);
                err
            })
    }

    /// Bytes of the budget held now (counted in whole KiB).
    pub fn held_bytes(&self) -> u64 {
        let held = self
            .total_kib
            .saturating_sub(self.permits.available_permits());
        held as u64 * 1024
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_kib as u64 * 1024
    }

    /// Requests answered 503 because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// What a request's body may hold before it is read.
    fn share(&self, path: &str, headers: &HeaderMap) -> usize {
        let limit = if crate::ingest::otlp::is_otlp_path(path) {
            self.otlp_max_body
        } else {
            self.max_body
        };
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(limit, |n| n.min(limit))
    }
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Takes the request's share of the budget for as long as it is handled.
pub async fn hold_bodies(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    let bodyless = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && !req.headers().contains_key(header::CONTENT_LENGTH);
    if bodyless {
        return next.run(req).await;
    }
    let share = budget.share(req.uri().path(), req.headers());
    match budget.take(share) {
        Ok(permit) => {
            let response = next.run(req).await;
            drop(permit);
            response
        }
        Err(e) => e.into_response(),
    }
}
