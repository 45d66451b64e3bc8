//! One root span per API call: W3C `traceparent` in, `x-trace-id` out, the span ended when the
//! response body has been sent (or the client went away).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame};
use tokentrace_model::{
    AttrValue, Attributes, SpanEvent, SpanId, SpanKind, SpanRecord, SpanStatus, Timestamp, TraceId,
    TraceParent,
};
use tokentrace_pipeline::Telemetry;

use crate::AppState;

/// The trace context of the request being handled; handlers make their spans children of it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The request's trace (the caller's when it sent `traceparent`).
    pub trace_id: TraceId,
    /// The request's root span.
    pub span_id: SpanId,
    /// The project its telemetry is stored in.
    pub project: Arc<str>,
    /// Events to record inside the request span when it ends (token metrics); `None` when no
    /// request span will be recorded.
    events: Option<Arc<Mutex<Vec<SpanEvent>>>>,
}

impl RequestContext {
    /// A fresh context for work not started by a traced request.
    pub fn detached() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            project: Arc::from(tokentrace_model::DEFAULT_PROJECT),
            events: None,
        }
    }

    /// Records an event inside the request span; gives it back when there is no request span to
    /// carry it (the caller should submit it on its own).
    pub fn add_event(&self, event: SpanEvent) -> Option<SpanEvent> {
        match &self.events {
            Some(events) => {
                events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
                None
            }
            None => Some(event),
        }
    }
}

/// Whether a request is traced. Never: telemetry ingestion (events and OTLP: a span per
/// ingested batch would add writes to every write), health checks, Prometheus scrapes and the
/// web UI's pages and assets (looking at traces must not fill the list with its own). The
/// telemetry query API, datasetio and tokentrace's own read routes only when asked (`server.trace_telemetry_api`): by
/// default, looking at telemetry does not create more.
fn is_traced(path: &str, trace_telemetry_api: bool) -> bool {
    if matches!(
        path,
        "/v1/telemetry/events"
            | "/v1alpha/telemetry/events"
            | "/v1/traces"
            | "/v1/metrics"
            | "/v1/logs"
            | "/v1/health"
            | "/metrics"
    ) || crate::ui::is_ui_path(path)
    {
        return false;
    }
    let telemetry_api = path.starts_with("/v1/telemetry/")
        || path.starts_with("/v1alpha/telemetry/")
        || path.starts_with("/v1/datasetio/")
        || path.starts_with("/v1/tokentrace/");
    trace_telemetry_api || !telemetry_api
}

fn header_attr(req: &Request, name: &str, attributes: &mut Attributes) {
    if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
        attributes.insert(format!("http.request.header.{name}"), AttrValue::from(v));
    }
}

/// The middleware.
pub async fn trace_requests(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if !is_traced(&path, state.settings.trace_telemetry_api) {
        return next.run(req).await;
    }
    // A path no route matches is counted, never stored: unique unknown paths must not grow
    // the store (or a label set) without bound.
    if req.extensions().get::<MatchedPath>().is_none() {
        let res = next.run(req).await;
        state.metrics.add(
            "tokentrace_http_unmatched_total",
            "Requests to paths no route matches (answered 404 or 405, not traced).",
            &["status_code"],
            vec![res.status().as_u16().to_string()],
            1.0,
        );
        return res;
    }
    // Under load beyond what the sinks absorb, slow requests down rather than lose their spans.
    if !state.settings.backpressure.is_zero() {
        state
            .telemetry
            .wait_for_room(state.settings.backpressure)
            .await;
    }
    let remote = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TraceParent::parse(v).ok());
    let events = Arc::new(Mutex::new(Vec::new()));
    let project = req.extensions().get::<crate::guard::Access>().map_or_else(
        || Arc::from(tokentrace_model::DEFAULT_PROJECT),
        |a| a.writes.clone(),
    );
    let ctx = RequestContext {
        trace_id: remote.map_or_else(TraceId::random, |p| p.trace_id),
        span_id: SpanId::random(),
        project: project.clone(),
        events: Some(events.clone()),
    };
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut attributes = Attributes::new();
    attributes.insert(
        "http.request.method".into(),
        AttrValue::from(method.as_str()),
    );
    attributes.insert("url.path".into(), AttrValue::from(path.as_str()));
    if let Some(r) = &route {
        attributes.insert("http.route".into(), AttrValue::from(r.as_str()));
    }
    header_attr(&req, "x-telemetry-service", &mut attributes);
    header_attr(&req, "x-telemetry-version", &mut attributes);
    header_attr(&req, "user-agent", &mut attributes);
    tokentrace_model::stamp_project(&mut attributes, &project);
    let (trace_id, span_id) = (ctx.trace_id, ctx.span_id);
    req.extensions_mut().insert(ctx);

    let start = Timestamp::now();
    let span = SpanRecord {
        trace_id,
        span_id,
        parent_span_id: remote.map(|p| p.parent_id),
        name: format!("{method} {}", route.as_deref().unwrap_or(&path)),
        kind: SpanKind::Server,
        start_time: start,
        end_time: None,
        status: None,
        status_message: None,
        attributes,
        events: Vec::new(),
        links: Vec::new(),
        service_name: None,
        expires_at: None,
    };
    // Held across the handler: a client that goes away before the answer drops this future,
    // and the guard still records the span (cancelled).
    let mut guard = SpanGuard {
        telemetry: state.telemetry.clone(),
        span: Some(span),
        status: None,
        events,
    };
    let res = next.run(req).await;
    let status = res.status();
    guard.answered(status);
    let (mut parts, body) = res.into_parts();
    if let Ok(v) = HeaderValue::from_str(&trace_id.to_string()) {
        parts.headers.insert("x-trace-id", v);
    }
    Response::from_parts(parts, Body::new(GuardedBody { inner: body, guard }))
}

/// Ends the request span once: when the body is done or dropped, or, when the client went away
/// before the handler answered, when the handler's future is dropped.
struct SpanGuard {
    telemetry: Telemetry,
    span: Option<SpanRecord>,
    /// The answer's status, once the handler answered.
    status: Option<StatusCode>,
    events: Arc<Mutex<Vec<SpanEvent>>>,
}

impl SpanGuard {
    /// The handler answered with `status`.
    fn answered(&mut self, status: StatusCode) {
        self.status = Some(status);
        if let Some(span) = &mut self.span {
            span.attributes.insert(
                "http.response.status_code".into(),
                AttrValue::Int(i64::from(status.as_u16())),
            );
        }
    }

    fn finish(&mut self, cancelled: bool) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        span.end_time = Some(Timestamp::now());
        span.events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        match (cancelled, self.status) {
            (_, None) => {
                span.status = Some(SpanStatus::Error);
                span.status_message =
                    Some("the client disconnected before the request was answered".into());
                span.attributes
                    .insert("error.type".into(), AttrValue::from("cancelled"));
            }
            (true, Some(_)) => {
                span.status = Some(SpanStatus::Error);
                span.status_message =
                    Some("the client disconnected before the response was sent".into());
                span.attributes
                    .insert("error.type".into(), AttrValue::from("cancelled"));
            }
            (false, Some(s)) if s.is_server_error() => {
                span.status = Some(SpanStatus::Error);
                span.attributes
                    .insert("error.type".into(), AttrValue::from(s.as_u16().to_string()));
            }
            (false, Some(_)) => span.status = Some(SpanStatus::Ok),
        }
        if self.telemetry.record_span(span).is_err() {
            tracing::debug!("request span dropped: telemetry pipeline full or stopped");
        }
    }
}

/// A response body that ends the request span when it completes.
struct GuardedBody {
    inner: Body,
    guard: SpanGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.guard.finish(false),
            Poll::Ready(Some(Err(_))) => this.guard.finish(true),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.guard.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        self.finish(true);
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.guard.finish(!complete);
    }
}
