//! tokentrace's own read routes (`/v1/tokentrace/*`), beside the Llama Stack API: the trace
//! list, a trace in full, the span feed, read-only SQL, export, usage totals, sessions and the
//! metric names. The CLI's `--url` mode and the web UI read through them; the CLI's `--db` mode
//! calls the same store functions directly.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokentrace_model::query::{
    ListTracesRequest, MetricName, SessionsAnswer, SessionsRequest, SpanFeed, SpanFeedRequest,
    SpanLine, SqlAnswer, SqlRequest, TraceDetail, TracePage, UsageAnswer, UsageRequest,
};
use tokentrace_model::{Timestamp, TraceId};

use tokentrace_otlp::from_model::{TraceExport, trace_request};

use crate::extract::{ApiJson, ApiPath};
use crate::guard::Access;
use crate::query::with_reader;
use crate::{ApiError, AppState};

/// The routes, relative to `/v1/tokentrace`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/traces", post(list_traces))
        .route("/spans/feed", post(span_feed))
        .route("/sql", post(sql))
        .route("/export", post(export))
        .route("/usage", post(usage))
        .route("/sessions", post(sessions))
        .route("/traces/{trace_id}", get(trace_detail))
        .route("/metrics", get(metric_names))
}

async fn list_traces(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<ListTracesRequest>,
) -> Result<Json<TracePage>, ApiError> {
    let query = req.validate()?;
    let page = with_reader(&state, &access, move |r| Ok(r.list_traces(&query)?)).await?;
    Ok(Json(page))
}

async fn span_feed(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<SpanFeedRequest>,
) -> Result<Json<SpanFeed>, ApiError> {
    let query = req.validate()?;
    let feed = with_reader(&state, &access, move |r| Ok(r.spans_after(&query)?)).await?;
    Ok(Json(feed))
}

async fn export(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<ListTracesRequest>,
) -> Result<Json<TraceExport>, ApiError> {
    let query = req.validate()?;
    let page = with_reader(&state, &access, move |r| Ok(r.export_traces(&query)?)).await?;
    Ok(Json(TraceExport {
        otlp: trace_request(&page.spans),
        traces: page.traces as u64,
        spans: page.spans.len() as u64,
        next: page.next,
    }))
}

async fn usage(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<UsageRequest>,
) -> Result<Json<UsageAnswer>, ApiError> {
    let query = req.validate(Timestamp::now())?;
    let answer = with_reader(&state, &access, move |r| Ok(r.usage(&query)?)).await?;
    Ok(Json(answer))
}

async fn sessions(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<SessionsRequest>,
) -> Result<Json<SessionsAnswer>, ApiError> {
    let query = req.validate(Timestamp::now())?;
    let answer = with_reader(&state, &access, move |r| Ok(r.sessions(&query)?)).await?;
    Ok(Json(answer))
}

async fn trace_detail(
    State(state): State<AppState>,
    access: Access,
    ApiPath(trace_id): ApiPath<String>,
) -> Result<Json<TraceDetail>, ApiError> {
    let id: TraceId = trace_id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("trace_id: {e}")))?;
    let (trace, spans) = with_reader(&state, &access, move |r| {
        r.trace_records(id)?
            .ok_or_else(|| ApiError::not_found(format!("trace {id} not found")))
    })
    .await?;
    Ok(Json(TraceDetail {
        trace,
        spans: spans.iter().map(SpanLine::from_record).collect(),
    }))
}

async fn metric_names(
    State(state): State<AppState>,
    access: Access,
) -> Result<Json<Vec<MetricName>>, ApiError> {
    let names = with_reader(&state, &access, |r| Ok(r.metric_names()?)).await?;
    Ok(Json(names))
}

async fn sql(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<SqlRequest>,
) -> Result<Json<SqlAnswer>, ApiError> {
    if access.reads.is_some() {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "read-only SQL reads every project: it needs a credential that sees them all (admin), sent without X-Tokentrace-Project",
        ));
    }
    let answer = with_reader(&state, &access, move |r| Ok(r.read_sql(&req.sql)?)).await?;
    Ok(Json(answer))
}
