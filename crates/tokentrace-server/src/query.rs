//! The Llama Stack telemetry query API (`/v1/telemetry/*`, also under `/v1alpha/telemetry/*`:
//! traces, spans, span trees, metrics, export to datasets) and the datasetio route that reads
//! exported spans back. Queries run on the store's read-only connections off the async runtime.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokentrace_model::query::{
    Data, GetSpanTreeRequest, MetricSeries, QueryMetricsRequest, QuerySpansRequest,
    QueryTracesRequest, SaveSpansToDatasetRequest, validate_dataset_id, validate_filters,
    validate_keys, validate_max_depth,
};
use tokentrace_model::{Span, SpanId, SpanWithStatus, Timestamp, Trace, TraceId};
use tokentrace_store::{MetricQuery, StoreReader, StoreWriter};

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::guard::Access;
use crate::{ApiError, AppState};

/// The query routes, relative to a prefix such as `/v1/telemetry`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/traces", post(query_traces))
        .route("/traces/{trace_id}", get(get_trace))
        .route("/traces/{trace_id}/spans/{span_id}", get(get_span))
        .route("/spans/{span_id}/tree", post(get_span_tree))
        .route("/spans", post(query_spans))
        .route("/spans/export", post(save_spans_to_dataset))
        .route("/metrics/{metric_name}", post(query_metrics))
}

/// The datasetio routes (`/v1/datasetio/...`).
pub fn datasetio_routes() -> Router<AppState> {
    Router::new().route("/iterrows/{dataset_id}", get(iterrows))
}

fn parse_trace_id(s: &str) -> Result<TraceId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("trace_id: {e}")))
}

fn parse_span_id(s: &str) -> Result<SpanId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("span_id: {e}")))
}

/// Runs `f` on a store handle off the async runtime.
async fn off_runtime<H: Send + 'static, T: Send + 'static>(
    handle: H,
    what: &'static str,
    f: impl FnOnce(&H) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&handle))
        .await
        .map_err(|e| ApiError::internal(what, &e))?
}

/// Runs `f` off the async runtime on a reader that sees only the projects `access` reads.
pub(crate) async fn with_reader<T: Send + 'static>(
    state: &AppState,
    access: &Access,
    f: impl FnOnce(&StoreReader) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let reader = state.reader()?.for_projects(access.reads.clone());
    off_runtime(reader, "trace store query", f).await
}

async fn with_writer<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&StoreWriter) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    off_runtime(state.writer()?.clone(), "trace store write", f).await
}

async fn query_traces(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<QueryTracesRequest>,
) -> Result<Json<Data<Vec<Trace>>>, ApiError> {
    let query = req.validate()?;
    let data = with_reader(&state, &access, move |r| Ok(r.query_traces(&query)?)).await?;
    Ok(Json(Data { data }))
}

async fn get_trace(
    State(state): State<AppState>,
    access: Access,
    ApiPath(trace_id): ApiPath<String>,
) -> Result<Json<Trace>, ApiError> {
    let id = parse_trace_id(&trace_id)?;
    with_reader(&state, &access, move |r| {
        r.get_trace(id)?
            .ok_or_else(|| ApiError::not_found(format!("trace {id} not found")))
    })
    .await
    .map(Json)
}

async fn get_span(
    State(state): State<AppState>,
    access: Access,
    ApiPath((trace_id, span_id)): ApiPath<(String, String)>,
) -> Result<Json<Span>, ApiError> {
    let (t, s) = (parse_trace_id(&trace_id)?, parse_span_id(&span_id)?);
    with_reader(&state, &access, move |r| {
        r.get_span(t, s)?
            .ok_or_else(|| ApiError::not_found(format!("span {s} not found in trace {t}")))
    })
    .await
    .map(Json)
}

async fn get_span_tree(
    State(state): State<AppState>,
    access: Access,
    ApiPath(span_id): ApiPath<String>,
    ApiJson(req): ApiJson<GetSpanTreeRequest>,
) -> Result<Json<Data<BTreeMap<String, SpanWithStatus>>>, ApiError> {
    let id = parse_span_id(&span_id)?;
    let keys = req.attributes_to_return;
    if let Some(k) = &keys {
        validate_keys(k)?;
    }
    let depth = validate_max_depth(req.max_depth)?;
    let data = with_reader(&state, &access, move |r| {
        r.get_span_tree(id, keys.as_deref(), depth)?
            .ok_or_else(|| ApiError::not_found(format!("span {id} not found")))
    })
    .await?;
    Ok(Json(Data { data }))
}

async fn query_spans(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<QuerySpansRequest>,
) -> Result<Json<Data<Vec<Span>>>, ApiError> {
    let filters = validate_filters(&req.attribute_filters)?;
    validate_keys(&req.attributes_to_return)?;
    let depth = validate_max_depth(req.max_depth)?;
    let keys = req.attributes_to_return;
    let data = with_reader(&state, &access, move |r| {
        Ok(r.query_spans(&filters, &keys, depth)?)
    })
    .await?;
    Ok(Json(Data { data }))
}

async fn save_spans_to_dataset(
    State(state): State<AppState>,
    access: Access,
    ApiJson(req): ApiJson<SaveSpansToDatasetRequest>,
) -> Result<Json<Value>, ApiError> {
    let filters = validate_filters(&req.attribute_filters)?;
    validate_keys(&req.attributes_to_save)?;
    validate_dataset_id(&req.dataset_id)?;
    let depth = validate_max_depth(req.max_depth)?;
    let keys = req.attributes_to_save;
    let spans = {
        let keys = keys.clone();
        with_reader(&state, &access, move |r| {
            Ok(r.query_spans(&filters, &keys, depth)?)
        })
        .await?
    };
    let rows: Vec<Map<String, Value>> = spans.into_iter().map(|s| dataset_row(s, &keys)).collect();
    let dataset_id = req.dataset_id;
    let project = access.writes.clone();
    let ttl = i64::try_from(state.settings.dataset_ttl.as_nanos()).unwrap_or(i64::MAX);
    let expires_at = Timestamp::from_unix_nanos(Timestamp::now().unix_nanos().saturating_add(ttl));
    with_writer(&state, move |w| {
        Ok(w.append_dataset_rows(&dataset_id, &project, rows, Some(expires_at))?)
    })
    .await?;
    Ok(Json(Value::Null))
}

/// One dataset row per span: its identity and times, then the saved attributes.
fn dataset_row(span: Span, keys: &[String]) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("trace_id".into(), span.trace_id.to_string().into());
    row.insert("span_id".into(), span.span_id.to_string().into());
    row.insert(
        "parent_span_id".into(),
        span.parent_span_id.map(|p| p.to_string()).into(),
    );
    row.insert("name".into(), span.name.into());
    row.insert("start_time".into(), span.start_time.to_iso().into());
    row.insert(
        "end_time".into(),
        span.end_time.map(Timestamp::to_iso).into(),
    );
    for key in keys {
        let value = span
            .attributes
            .get(key)
            .map_or(Value::Null, |v| v.to_json());
        row.insert(key.clone(), value);
    }
    row
}

async fn query_metrics(
    State(state): State<AppState>,
    access: Access,
    ApiPath(metric_name): ApiPath<String>,
    ApiJson(req): ApiJson<QueryMetricsRequest>,
) -> Result<Json<Data<Vec<MetricSeries>>>, ApiError> {
    if metric_name.is_empty()
        || metric_name.len() > 256
        || metric_name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "metric_name must be 1 to 256 characters with no control characters",
        ));
    }
    let query = MetricQuery::from_request(&req, Timestamp::now())?;
    let data = with_reader(&state, &access, move |r| {
        Ok(r.query_metrics(&metric_name, &query)?)
    })
    .await?;
    Ok(Json(Data { data }))
}

#[derive(Deserialize)]
struct IterrowsParams {
    start_index: Option<i64>,
    limit: Option<i64>,
}

async fn iterrows(
    State(state): State<AppState>,
    access: Access,
    ApiPath(dataset_id): ApiPath<String>,
    ApiQuery(params): ApiQuery<IterrowsParams>,
) -> Result<Json<Value>, ApiError> {
    validate_dataset_id(&dataset_id)?;
    let start = params.start_index.unwrap_or(0);
    if start < 0 {
        return Err(ApiError::bad_request(format!(
            "start_index must not be negative, got {start}"
        )));
    }
    // Llama Stack reads limit -1 as "all rows".
    let limit = match params.limit {
        None | Some(-1) => None,
        Some(l) if l >= 0 => Some(l as u64),
        Some(l) => {
            return Err(ApiError::bad_request(format!(
                "limit must be -1 (all) or not negative, got {l}"
            )));
        }
    };
    let (rows, has_more) = with_reader(&state, &access, move |r| {
        r.iterrows(&dataset_id, start as u64, limit)?
            .ok_or_else(|| ApiError::not_found(format!("dataset {dataset_id} not found")))
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "data": rows, "has_more": has_more }),
    ))
}
