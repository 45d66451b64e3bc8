//! tokentrace's HTTP server. Its rooms follow the flow: telemetry comes in at [`ingest`] (the
//! events endpoint and the OTLP receiver) and from the [`gateway`] (inference calls, each traced
//! under the request's span from `request_span.rs`); it is read back through [`query`] (the
//! telemetry query API and datasetio) and `GET /metrics`. This file holds the router and the
//! shared state only.

mod budget;
mod error;
pub mod explore;
pub mod extract;
pub mod gateway;
pub mod guard;
pub mod ingest;
pub mod jwt;
mod metrics;
pub mod query;
mod request_span;
mod retention;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokentrace_config::{ServerConfig, TelemetryConfig};
use tokentrace_pipeline::Telemetry;
use tokentrace_pipeline::sinks::otlp_export::ExportStats;
use tokentrace_pipeline::sinks::prometheus::Registry;
use tokentrace_store::{StoreReader, StoreWriter};

pub use budget::{Admission, ConnectionBudget};
pub use error::ApiError;
pub use gateway::Inference;
pub use request_span::RequestContext;
pub use retention::spawn_retention;

/// The server's settings, from the run config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests not answered within this time get 504.
    pub request_timeout: Duration,
    /// How long a traced request waits for room in a nearly full telemetry queue.
    pub backpressure: Duration,
    /// Record request and response content on provider spans.
    pub capture_content: bool,
    /// The attributes content is recorded in.
    pub content_format: tokentrace_config::ContentFormat,
    /// The events API and the OTLP receiver answer after the commit.
    pub ack_committed: bool,
    /// Also trace calls of the telemetry query API and datasetio.
    pub trace_telemetry_api: bool,
    /// Largest OTLP request body accepted (compressed and decompressed), in bytes.
    pub otlp_max_body_bytes: usize,
    /// How long a dataset is kept after its last append (the telemetry's default retention).
    pub dataset_ttl: Duration,
    /// Hosts, origins, content types and keys every request is checked for.
    pub guard: Arc<guard::Guard>,
    /// Request bodies held at once, in bytes.
    pub bodies: budget::BodyBudget,
    /// Connections open at once on both ports.
    pub connections: budget::ConnectionBudget,
}

impl Settings {
    /// The settings a run config asks for.
    pub fn from_config(server: &ServerConfig, tc: &TelemetryConfig) -> Self {
        Self {
            max_body_bytes: server.max_body_bytes,
            request_timeout: Duration::from_secs(server.request_timeout_seconds),
            backpressure: Duration::from_millis(tc.backpressure_ms),
            capture_content: tc.capture_content,
            content_format: tc.capture_content_format,
            ack_committed: tc.ack == tokentrace_config::AckMode::Committed,
            trace_telemetry_api: server.trace_telemetry_api,
            otlp_max_body_bytes: server.otlp_max_body_bytes,
            dataset_ttl: Duration::from_secs(tc.default_ttl_seconds.max(0) as u64),
            guard: Arc::new(guard::Guard::from_config(server)),
            bodies: budget::BodyBudget::new(server.max_body_bytes, server.otlp_max_body_bytes),
            connections: budget::ConnectionBudget::new(server.max_connections),
        }
    }
}

impl Default for Settings {
    /// The settings of the default run config.
    fn default() -> Self {
        Self::from_config(&ServerConfig::default(), &TelemetryConfig::default())
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Submits telemetry to the pipeline.
    pub telemetry: Telemetry,
    store: Option<Arc<StoreHandles>>,
    /// Limits and switches.
    pub settings: Settings,
    /// Providers and models.
    pub inference: Arc<Inference>,
    /// What `/metrics` serves (fed by the pipeline's prometheus sink).
    pub metrics: Arc<Registry>,
    /// The OTLP exporters' counters, by signal (`traces`, `metrics`), for `/metrics`.
    pub exporters: Vec<(&'static str, Arc<ExportStats>)>,
}

struct StoreHandles {
    reader: StoreReader,
    writer: StoreWriter,
}

impl AppState {
    /// State for a server; `store` is `None` when the sqlite sink is off (queries then answer 503).
    pub fn new(
        telemetry: Telemetry,
        store: Option<(StoreReader, StoreWriter)>,
        inference: Inference,
        settings: Settings,
    ) -> Self {
        Self {
            telemetry,
            store: store.map(|(reader, writer)| Arc::new(StoreHandles { reader, writer })),
            settings,
            inference: Arc::new(inference),
            metrics: Arc::new(Registry::new()),
            exporters: Vec::new(),
        }
    }

    fn store(&self) -> Result<&StoreHandles, ApiError> {
        self.store.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "telemetry queries need the sqlite sink; add `sqlite` to telemetry sinks",
            )
        })
    }

    fn reader(&self) -> Result<&StoreReader, ApiError> {
        Ok(&self.store()?.reader)
    }

    fn writer(&self) -> Result<&StoreWriter, ApiError> {
        Ok(&self.store()?.writer)
    }
}

/// The telemetry routes under one prefix: the events endpoint (ingest) and the query API.
fn telemetry_routes() -> Router<AppState> {
    ingest::events::routes().merge(query::routes())
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let timeout = state.settings.request_timeout;
    Router::new()
        .nest("/v1/telemetry", telemetry_routes())
        .nest("/v1alpha/telemetry", telemetry_routes())
        .nest("/v1/datasetio", query::datasetio_routes())
        .nest("/v1/tokentrace", explore::routes())
        .nest(
            "/v1/openai/v1",
            gateway::openai_routes().merge(gateway::openai_models_route()),
        )
        .nest(
            "/v1",
            gateway::openai_routes().merge(gateway::native_routes()),
        )
        .merge(ingest::otlp::routes())
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(timeout, time_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.settings.bodies.clone(),
            budget::hold_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_span::trace_requests,
        ))
        // Outermost: a refused request is neither handled nor traced.
        .layer(axum::middleware::from_fn_with_state(
            state.settings.guard.clone(),
            guard::guard,
        ))
        .with_state(state)
}

/// Only the OTLP receiver, for its own port (`server.otlp_port`).
pub fn otlp_router(state: AppState) -> Router {
    let guard = state.settings.guard.clone();
    ingest::otlp::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.settings.bodies.clone(),
            budget::hold_bodies,
        ))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .with_state(state)
}

/// Answers 504 `{"detail"}` when a handler takes longer than the configured limit (the time to
/// the response head; a streaming body may take longer).
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request did not complete within {} s",
                limit.as_secs_f64()
            ),
        )),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "OK" }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
