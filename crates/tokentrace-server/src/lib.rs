//! tokentrace's HTTP server: the Llama Stack telemetry API, datasetio and health routes.

mod error;
pub mod extract;
pub mod inference;
pub mod otlp;
mod request_trace;
mod telemetry_api;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokentrace_model::Timestamp;
use tokentrace_pipeline::Telemetry;
use tokentrace_pipeline::sinks::otlp::ExportStats;
use tokentrace_pipeline::sinks::prometheus::{Format, Registry, Sample};
use tokentrace_store::{StoreReader, StoreWriter};

pub use error::ApiError;
pub use inference::Inference;
pub use request_trace::RequestContext;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Submits telemetry to the pipeline.
    pub telemetry: Telemetry,
    store: Option<Arc<StoreHandles>>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests not answered within this time get 504.
    pub request_timeout: Duration,
    /// How long a traced request waits for room in a nearly full telemetry queue.
    pub backpressure: Duration,
    /// Providers and models.
    pub inference: Arc<Inference>,
    /// Record request and response content on provider spans.
    pub capture_content: bool,
    /// Also trace calls of the telemetry query API and datasetio.
    pub trace_telemetry_api: bool,
    /// What `/metrics` serves (fed by the pipeline's prometheus sink).
    pub metrics: Arc<Registry>,
    /// Largest OTLP request body accepted (compressed and decompressed), in bytes.
    pub otlp_max_body_bytes: usize,
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
        max_body_bytes: usize,
        inference: Inference,
    ) -> Self {
        Self {
            telemetry,
            store: store.map(|(reader, writer)| Arc::new(StoreHandles { reader, writer })),
            max_body_bytes,
            request_timeout: Duration::from_secs(30),
            backpressure: Duration::from_secs(1),
            inference: Arc::new(inference),
            capture_content: true,
            trace_telemetry_api: false,
            metrics: Arc::new(Registry::new()),
            otlp_max_body_bytes: 16 << 20,
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

/// The whole application.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let timeout = state.request_timeout;
    Router::new()
        .nest("/v1/telemetry", telemetry_api::routes())
        .nest("/v1alpha/telemetry", telemetry_api::routes())
        .nest("/v1/datasetio", telemetry_api::datasetio_routes())
        .nest(
            "/v1/openai/v1",
            inference::openai_routes().merge(inference::openai_models_route()),
        )
        .nest(
            "/v1",
            inference::openai_routes().merge(inference::native_routes()),
        )
        .merge(otlp::routes())
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(timeout, time_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_trace::trace_requests,
        ))
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

/// Only the OTLP receiver, for its own port (`server.otlp_port`).
pub fn otlp_router(state: AppState) -> Router {
    otlp::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format, or OpenMetrics when the scraper asks for it.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let format = Format::from_accept(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let p = state.telemetry.stats();
    let load =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let sample = |name, help, counter, value| Sample {
        name,
        help,
        counter,
        labels: Vec::new(),
        value,
    };
    let mut live = vec![
        sample(
            "tokentrace_pipeline_queue_depth",
            "Telemetry messages waiting in the pipeline queue.",
            false,
            load(&p.queue_depth),
        ),
        sample(
            "tokentrace_pipeline_accepted_total",
            "Telemetry messages accepted into the pipeline.",
            true,
            load(&p.accepted),
        ),
        Sample {
            name: "tokentrace_dropped_events_total",
            help: "Telemetry refused or lost, by reason.",
            counter: true,
            labels: vec![("reason", "queue_full".into())],
            value: load(&p.rejected_full),
        },
        sample(
            "tokentrace_spans_unfinished_total",
            "Spans stored unfinished (timeout, open-span limit, shutdown).",
            true,
            load(&p.spans_unfinished),
        ),
        sample(
            "tokentrace_span_starts_duplicate_total",
            "Duplicate span_start events ignored.",
            true,
            load(&p.duplicate_starts),
        ),
        sample(
            "tokentrace_span_ends_orphan_total",
            "span_end events without a known start.",
            true,
            load(&p.orphan_ends),
        ),
        sample(
            "tokentrace_backpressure_waits_total",
            "Traced requests that waited for room in a nearly full pipeline queue.",
            true,
            load(&p.room_waits),
        ),
        sample(
            "tokentrace_backpressure_timeouts_total",
            "Traced requests that stopped waiting for room and went on (their spans may be dropped).",
            true,
            load(&p.room_wait_timeouts),
        ),
        sample(
            "tokentrace_sink_errors_total",
            "Sink flush failures.",
            true,
            load(&p.sink_errors),
        ),
    ];
    if let Some(store) = &state.store {
        let w = store.writer.stats();
        live.extend([
            sample(
                "tokentrace_sqlite_rows_committed_total",
                "Rows committed to SQLite.",
                true,
                w.rows_committed as f64,
            ),
            sample(
                "tokentrace_sqlite_batches_committed_total",
                "SQLite transactions committed.",
                true,
                w.batches_committed as f64,
            ),
            sample(
                "tokentrace_sqlite_write_errors_total",
                "SQLite batches that failed to commit.",
                true,
                w.write_errors as f64,
            ),
            sample(
                "tokentrace_sqlite_rows_expired_total",
                "Rows deleted by retention.",
                true,
                w.rows_expired as f64,
            ),
        ]);
    }
    for (signal, stats) in &state.exporters {
        let dropped_name = if *signal == "traces" {
            "tokentrace_exporter_dropped_spans_total"
        } else {
            "tokentrace_exporter_dropped_metric_points_total"
        };
        live.push(sample(dropped_name, "Items the OTLP exporter could not deliver (queue full, or still failing after retries).", true, load(&stats.dropped)));
        live.push(Sample {
            name: "tokentrace_exporter_errors_total",
            help: "Failed OTLP export attempts, by signal.",
            counter: true,
            labels: vec![("signal", signal.to_string())],
            value: load(&stats.errors),
        });
        live.push(Sample {
            name: "tokentrace_exporter_exported_total",
            help: "Items delivered by the OTLP exporters, by signal.",
            counter: true,
            labels: vec![("signal", signal.to_string())],
            value: load(&stats.exported),
        });
    }
    let body = state.metrics.render(format, &live);
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
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

/// Deletes expired rows every `interval` until the writer is closed. Runs on the store's writer
/// thread in small transactions, so writes keep flowing.
pub fn spawn_retention(writer: StoreWriter, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let w = writer.clone();
            match tokio::task::spawn_blocking(move || w.expire(Timestamp::now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!("retention: deleted {n} expired rows"),
                Ok(Err(tokentrace_store::StoreError::Closed)) => return,
                Ok(Err(e)) => tracing::error!("retention: {e}"),
                Err(e) => tracing::error!("retention task: {e}"),
            }
        }
    })
}
