//! Prometheus sink: token counters and latency histograms derived from what the pipeline
//! carries (token metric points, provider-call spans, request spans), served at `/metrics`.

mod registry;

use std::sync::Arc;

pub use registry::{Format, MAX_SERIES, OVERFLOW, Registry, Sample};
use tokentrace_model::{AttrValue, MetricPoint, SpanEvent, SpanKind, SpanRecord};
use tokentrace_store::CommitObserver;

use crate::Sink;
use crate::genai::{
    self, CALL_LABELS, DURATION_BUCKETS, TOKENS_PER_SECOND_BUCKETS, TTFT_BUCKETS, call_counter,
};

const ROUTE_LABELS: &[&str] = &["route", "status_code", "project"];

/// `tokentrace_sqlite_commit_seconds` bucket boundaries.
pub const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// `tokentrace_sqlite_batch_rows` bucket boundaries (a transaction holds at most 5,000 records).
pub const BATCH_ROWS_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0];

/// Records every transaction the SQLite store commits in `registry`: its duration in
/// `tokentrace_sqlite_commit_seconds` and its size in `tokentrace_sqlite_batch_rows`.
pub fn commit_observer(registry: Arc<Registry>) -> CommitObserver {
    CommitObserver(Arc::new(move |rows, took| {
        registry.observe(
            "tokentrace_sqlite_commit_seconds",
            "Time to write and commit one SQLite transaction.",
            &[],
            COMMIT_SECONDS_BUCKETS,
            Vec::new(),
            took.as_secs_f64(),
        );
        registry.observe(
            "tokentrace_sqlite_batch_rows",
            "Records in one committed SQLite transaction.",
            &[],
            BATCH_ROWS_BUCKETS,
            Vec::new(),
            rows as f64,
        );
    }))
}

/// `tokentrace_commit_lag_seconds` bucket boundaries.
pub const COMMIT_LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];

/// Records the commit lag of each probe (a message sampled as it was accepted, see
/// [`crate::Commits`]) in `registry`: `tokentrace_commit_lag_seconds`, the time from its
/// acceptance to the commit of its rows.
pub fn lag_observer(registry: Arc<Registry>) -> crate::ack::LagObserver {
    Box::new(move |lag| {
        registry.observe(
            "tokentrace_commit_lag_seconds",
            "Time from accepting telemetry to committing it to SQLite (sampled messages).",
            &[],
            COMMIT_LAG_BUCKETS,
            Vec::new(),
            lag.as_secs_f64(),
        );
    })
}

fn label(span: &SpanRecord, key: &str) -> String {
    span.attributes
        .get(key)
        .map(AttrValue::to_label)
        .unwrap_or_default()
}

/// Feeds a [`Registry`].
pub struct PrometheusSink {
    registry: Arc<Registry>,
}

impl PrometheusSink {
    /// A sink recording into `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Sink for PrometheusSink {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        if span.end_time.is_none() {
            return;
        }
        if let Some(o) = genai::observe(span) {
            let labels = o.labels.to_vec();
            if o.unpriced {
                self.registry.add(
                    "tokentrace_unpriced_calls_total",
                    "Inference calls counted in tokens whose model has no price (no cost recorded).",
                    CALL_LABELS,
                    labels.clone(),
                    1.0,
                );
            }
            self.registry.observe(
                "llama_stack_request_duration_seconds",
                "Duration of inference provider calls.",
                CALL_LABELS,
                DURATION_BUCKETS,
                labels.clone(),
                o.duration,
            );
            if let Some(t) = o.time_to_first_token {
                self.registry.observe(
                    "llama_stack_time_to_first_token_seconds",
                    "Time from the provider call to its first streamed token.",
                    CALL_LABELS,
                    TTFT_BUCKETS,
                    labels.clone(),
                    t,
                );
            }
            if let Some(tps) = o.output_tokens_per_second {
                self.registry.observe(
                    "llama_stack_output_tokens_per_second",
                    "Output tokens per second of generation (after the first token when streaming).",
                    CALL_LABELS,
                    TOKENS_PER_SECOND_BUCKETS,
                    labels,
                    tps,
                );
            }
        }
        if span.kind == SpanKind::Server
            && let Some(route) = span
                .attributes
                .get("http.route")
                .or_else(|| span.attributes.get("url.path"))
        {
            self.registry.add(
                "tokentrace_http_requests_total",
                "API requests by route and status code.",
                ROUTE_LABELS,
                vec![
                    route.to_label(),
                    label(span, "http.response.status_code"),
                    label(span, tokentrace_model::PROJECT_ATTRIBUTE),
                ],
                1.0,
            );
        }
    }

    fn event(&mut self, _event: &SpanEvent) {}

    fn metric(&mut self, point: &MetricPoint) {
        if let Some(c) = call_counter(&point.name) {
            let labels = CALL_LABELS
                .iter()
                .map(|k| {
                    // The project travels as the point's label `tokentrace.project`.
                    let key = match *k {
                        "project" => tokentrace_model::PROJECT_ATTRIBUTE,
                        other => other,
                    };
                    point
                        .labels
                        .get(key)
                        .map(AttrValue::to_label)
                        .unwrap_or_default()
                })
                .collect();
            self.registry
                .add(c.prometheus, c.help, CALL_LABELS, labels, point.value);
        }
    }
}
