//! `POST /v1/telemetry/events` (also under `/v1alpha/telemetry`): one Llama Stack event, as the
//! `llama-stack-client` SDK sends it. Span start/end events become spans in the pipeline's
//! assembler.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokentrace_model::LogEventRequest;

use crate::extract::ApiJson;
use crate::guard::Access;
use crate::{ApiError, AppState};

/// The events route, relative to a prefix such as `/v1/telemetry`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/events", post(log_event))
}

async fn log_event(
    State(state): State<AppState>,
    access: Access,
    ApiJson(mut req): ApiJson<LogEventRequest>,
) -> Result<Json<Value>, ApiError> {
    tokentrace_model::stamp_event(&mut req.event, &access.writes);
    if let Some(ttl) = req.ttl_seconds
        && ttl <= 0
    {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be positive, got {ttl}"
        )));
    }
    // Past half the queue (or 100 ms of its drain), ingestion waits outside: the rest is for
    // the API's own spans.
    if !state
        .telemetry
        .wait_for_ingest_room(state.settings.backpressure)
        .await
    {
        state.telemetry.count_refused(1);
        return Err(tokentrace_pipeline::SubmitError::Full.into());
    }
    if state.settings.ack_committed {
        let ack = state
            .telemetry
            .log_event_acked(req.event, req.ttl_seconds)?;
        ack.committed(state.settings.request_timeout)
            .await
            .map_err(ApiError::not_committed)?;
    } else {
        state.telemetry.log_event(req.event, req.ttl_seconds)?;
    }
    Ok(Json(Value::Null))
}
