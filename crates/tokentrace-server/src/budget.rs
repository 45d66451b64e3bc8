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

/// Connections answered at once with a 503 while the limit is reached; past it a new
/// connection is closed without an answer.
pub const REFUSING_AT_ONCE: usize = 64;

/// The connections open at once on both ports (`server.max_connections`): each holds buffers
/// (and, with TLS, a session) whether or not it sends anything, so without a bound a flood of
/// connections would take memory without end. A connection takes a permit when it is accepted
/// and gives it back when it closes; one that finds none left is answered 503 with
/// `Retry-After` and closed, 64 at a time (`REFUSING_AT_ONCE`).
#[derive(Clone, Debug)]
pub struct ConnectionBudget {
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    max: usize,
    refused: Arc<AtomicU64>,
}

/// What a connection found when it was accepted.
pub enum Admission {
    /// Served; the permit is given back when it is dropped.
    Open(OwnedSemaphorePermit),
    /// To be answered 503 ([`ConnectionBudget::refusal`]) and closed; the permit bounds the
    /// connections being refused at once.
    Refuse(OwnedSemaphorePermit),
    /// To be closed at once.
    Close,
}

impl ConnectionBudget {
    /// At most `max` connections open at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            open: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
            max,
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Admits a connection just accepted, or says how to refuse it (counted).
    pub fn admit(&self) -> Admission {
        if let Ok(permit) = self.open.clone().try_acquire_owned() {
            return Admission::Open(permit);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        match self.refusing.clone().try_acquire_owned() {
            Ok(permit) => Admission::Refuse(permit),
            Err(_) => Admission::Close,
        }
    }

    /// The answer to every request of a refused connection.
    pub fn refusal(&self) -> Response {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many connections are open (server.max_connections: {}); retry after the Retry-After delay",
                self.max
            ),
        );
        err.retry_after = Some(1);
        let mut res = err.into_response();
        res.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        res
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.open.available_permits())
    }

    /// The most connections open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections refused (answered 503 or closed) because the limit was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
