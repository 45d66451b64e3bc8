//! The otel_trace and otel_metric sinks against a real OTLP/HTTP receiver on 127.0.0.1 that
//! decodes the protobuf with opentelemetry-proto's types; exported spans are compared field by
//! field with the SQLite rows of the same requests, token counters with the stored metric rows,
//! and metric events logged through the API with the instruments they become. A collector that
//! is down, or that never answers, slows no request; drops are counted; export resumes.
//!
//! Over 500 lines: the receiver that decodes OTLP bytes lives here with the tests that read it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::{free_port, signal, start, wait_exit};
use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::metrics::v1::metric;
use tokentrace_otlp::proto::trace::v1::Span;

#[derive(Default)]
struct Received {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    headers: Mutex<Vec<HeaderMap>>,
    metrics_headers: Mutex<Vec<HeaderMap>>,
    /// Answer 503 to this many trace requests first.
    fail_first: AtomicUsize,
}

async fn traces(
    State(r): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    if r.fail_first.load(Ordering::SeqCst) > 0 {
        r.fail_first.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response();
    }
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut raw)
            .unwrap();
        raw
    } else {
        body.to_vec()
    };
    r.traces
        .lock()
        .unwrap()
        .push(ExportTraceServiceRequest::decode(&body[..]).unwrap());
    r.headers.lock().unwrap().push(headers);
    StatusCode::OK.into_response()
}

async fn metrics(State(r): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.metrics_headers.lock().unwrap().push(headers);
    r.metrics
        .lock()
        .unwrap()
        .push(ExportMetricsServiceRequest::decode(&body[..]).unwrap());
    StatusCode::OK
}

fn receiver(rt: &tokio::runtime::Runtime, port: u16) -> Arc<Received> {
    let received = Arc::new(Received::default());
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(received.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    received
}

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("run.yaml");
    std::fs::write(
        &path,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite,otel_trace,otel_metric\n      sqlite_db_path: {}/trace_store.db\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn chat(rt: &tokio::runtime::Runtime, base: &str, n: usize) {
    rt.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..n {
            let res = client
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": "echo", "messages": [{"role": "user", "content": format!("hello number {i}")}], "stream": i % 2 == 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap();
        }
    });
}

fn attr_json(v: &tokentrace_otlp::proto::common::v1::AnyValue) -> Value {
    use tokentrace_otlp::proto::common::v1::any_value::Value as V;
    match &v.value {
        Some(V::StringValue(s)) => json!(s),
        Some(V::IntValue(i)) => json!(i),
        Some(V::DoubleValue(d)) => json!(d),
        Some(V::BoolValue(b)) => json!(b),
        Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(attr_json).collect()),
        _ => Value::Null,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn nanos(sql: &str) -> u64 {
    tokentrace_model::Timestamp::parse_iso(sql)
        .unwrap()
        .unix_nanos() as u64
}

#[test]
fn exported_spans_and_metrics_match_the_sqlite_rows_and_survive_a_503() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let received = receiver(&rt, port);
    received.fail_first.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = start(
        dir.path(),
        &["--config", config(dir.path()).to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "tt-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    chat(&rt, &server.base, 4);
    // Metric events logged through the telemetry API become instruments, by name and unit: a
    // count is a cumulative sum even with a fractional value, a level is a gauge even when whole.
    for (name, unit, value) in [
        ("cache_hits", "{request}", 3.0),
        ("cache_hits", "{request}", 4.5),
        ("queue_depth", "1", 2.5),
        ("queue_depth", "1", 6.0),
    ] {
        log_metric(&rt, &server.base, name, unit, value);
    }
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());

    let exported: HashMap<String, (Span, String, Vec<(String, String)>)> = received
        .traces
        .lock()
        .unwrap()
        .iter()
        .flat_map(|req| req.resource_spans.iter())
        .flat_map(|rs| {
            let resource: Vec<(String, String)> = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        attr_json(kv.value.as_ref().unwrap())
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            let service = resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .unwrap()
                .1
                .clone();
            rs.scope_spans.iter().flat_map(move |ss| {
                ss.spans.iter().map({
                    let (service, resource) = (service.clone(), resource.clone());
                    move |s| {
                        (
                            hex(&s.span_id),
                            (s.clone(), service.clone(), resource.clone()),
                        )
                    }
                })
            })
        })
        .collect();
    let conn = rusqlite::Connection::open(dir.path().join("trace_store.db")).unwrap();
    let mut st = conn.prepare("SELECT trace_id, span_id, parent_span_id, name, kind, start_time, end_time, status, attributes FROM spans").unwrap();
    let rows: Vec<(
        String,
        String,
        Option<String>,
        String,
        String,
        String,
        String,
        String,
        String,
    )> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 8, "4 request spans and 4 provider spans");
    assert_eq!(
        exported.len(),
        rows.len(),
        "every stored span was exported, despite two 503s"
    );
    for (trace, span, parent, name, kind, start, end, status, attrs) in &rows {
        let (e, service, resource) = &exported[span];
        assert_eq!(&hex(&e.trace_id), trace);
        assert_eq!(parent.clone().unwrap_or_default(), hex(&e.parent_span_id));
        assert_eq!(&e.name, name);
        let kinds = [
            "unspecified",
            "internal",
            "server",
            "client",
            "producer",
            "consumer",
        ];
        assert_eq!(kinds[e.kind as usize], kind);
        assert_eq!(e.start_time_unix_nano, nanos(start));
        assert_eq!(e.end_time_unix_nano, nanos(end));
        assert_eq!(
            e.status.as_ref().unwrap().code,
            if status == "ok" { 1 } else { 2 }
        );
        let stored: serde_json::Map<String, Value> = serde_json::from_str(attrs).unwrap();
        let sent: serde_json::Map<String, Value> = e
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), attr_json(kv.value.as_ref().unwrap())))
            .collect();
        assert_eq!(sent, stored, "attributes of {name}");
        assert_eq!(service, "tt-test");
        assert!(resource.contains(&("deployment.environment".into(), "ci".into())));
        if name.starts_with("POST") {
            let events: Vec<&str> = e.events.iter().map(|ev| ev.name.as_str()).collect();
            assert_eq!(
                events,
                [
                    "prompt_tokens",
                    "completion_tokens",
                    "total_tokens",
                    "cost_usd"
                ],
                "token and cost metrics ride along as span events"
            );
        }
    }
    for h in received.headers.lock().unwrap().iter() {
        assert_eq!(h["x-api-key"], "secret");
        assert_eq!(
            h["content-encoding"], "gzip",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"
        );
    }

    for h in received.metrics_headers.lock().unwrap().iter() {
        assert!(
            h.get("content-encoding").is_none(),
            "metrics are not compressed unless asked"
        );
    }

    // metrics: cumulative token counters equal to the SQLite metric rows, histograms per call
    let last = received
        .metrics
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("metrics were exported");
    let metrics = &last.resource_metrics[0].scope_metrics[0].metrics;
    let stored_total: f64 = conn
        .query_row(
            "SELECT sum(value) FROM metrics WHERE name = 'total_tokens'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let tokens = metrics
        .iter()
        .find(|m| m.name == "llama_stack_tokens")
        .expect("llama_stack_tokens");
    assert_eq!(tokens.unit, "tokens");
    let Some(metric::Data::Sum(sum)) = &tokens.data else {
        panic!("a sum")
    };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, 2, "cumulative");
    let value = match sum.data_points[0].value {
        Some(tokentrace_otlp::proto::metrics::v1::number_data_point::Value::AsDouble(v)) => v,
        _ => panic!(),
    };
    assert_eq!(value, stored_total);
    let labels: Vec<&str> = sum.data_points[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    assert_eq!(labels, ["model_id", "provider_id"]);
    for name in ["llama_stack_prompt_tokens", "llama_stack_completion_tokens"] {
        assert!(metrics.iter().any(|m| m.name == name), "{name}");
    }
    let duration = metrics
        .iter()
        .find(|m| m.name == "llama_stack_request_duration")
        .unwrap();
    let Some(metric::Data::Histogram(h)) = &duration.data else {
        panic!("a histogram")
    };
    assert_eq!(h.data_points[0].count, 4);
    assert!(
        metrics
            .iter()
            .any(|m| m.name == "llama_stack_time_to_first_token"),
        "the streamed calls have a TTFT"
    );

    // The GenAI conventions' client metrics, with their attributes: one token-usage observation
    // per call and token type, summing to the stored prompt and completion tokens.
    let genai = |name: &str| {
        let m = metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} exported"));
        let Some(metric::Data::Histogram(h)) = &m.data else {
            panic!("{name} is a histogram")
        };
        (m.unit.clone(), h.data_points.clone())
    };
    let (unit, points) = genai("gen_ai.client.operation.duration");
    assert_eq!(unit, "s");
    assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 4);
    let keys: Vec<&str> = points[0]
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    for key in [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    let (unit, points) = genai("gen_ai.client.token.usage");
    assert_eq!(unit, "{token}");
    let of_type = |t: &str| -> f64 {
        points
            .iter()
            .filter(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "gen_ai.token.type" && attr_json(kv.value.as_ref().unwrap()) == t
                })
            })
            .map(|p| p.sum.unwrap_or_default())
            .sum()
    };
    let stored = |name: &str| -> f64 {
        conn.query_row(
            "SELECT sum(value) FROM metrics WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(of_type("input"), stored("prompt_tokens"));
    assert_eq!(of_type("output"), stored("completion_tokens"));
    genai("gen_ai.client.operation.time_to_first_chunk");

    use tokentrace_otlp::proto::metrics::v1::number_data_point::Value as N;
    let logged = |name: &str| metrics.iter().find(|m| m.name == name).cloned();
    let hits = logged("cache_hits").expect("cache_hits exported");
    assert_eq!(hits.unit, "{request}");
    let Some(metric::Data::Sum(sum)) = &hits.data else {
        panic!("cache_hits is a sum: {hits:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, 2, "cumulative");
    assert_eq!(sum.data_points[0].value, Some(N::AsDouble(7.5)));
    assert_eq!(
        sum.data_points[0].attributes[0].key, "cache",
        "the event's attributes are its labels"
    );
    let depth = logged("queue_depth").expect("queue_depth exported");
    let Some(metric::Data::Gauge(gauge)) = &depth.data else {
        panic!("queue_depth is a gauge: {depth:?}")
    };
    assert_eq!(
        gauge.data_points[0].value,
        Some(N::AsDouble(6.0)),
        "the last value"
    );
}

/// Logs a metric event through the telemetry API, on a span of its own.
fn log_metric(rt: &tokio::runtime::Runtime, base: &str, name: &str, unit: &str, value: f64) {
    let event = json!({"event": {
        "type": "metric", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7", "timestamp": "2026-11-25T10:00:00Z",
        "attributes": {"cache": "prompt"}, "metric": name, "value": value, "unit": unit,
    }, "ttl_seconds": 3600});
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base}/v1/telemetry/events"))
            .json(&event)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "{status}");
}

/// A collector that accepts connections, reads what is sent and never answers; closed on drop.
struct Stalled {
    /// Connections on which a trace export request arrived.
    requests: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stalled {
    fn listen(port: u16) -> Stalled {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, st) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<(std::net::TcpStream, bool)> = Vec::new();
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::SeqCst) {
                if let Ok((c, _)) = listener.accept() {
                    c.set_nonblocking(true).unwrap();
                    conns.push((c, false));
                }
                for (c, seen) in &mut conns {
                    if let Ok(n) = c.read(&mut buf)
                        && buf[..n].starts_with(b"POST /v1/traces")
                        && !*seen
                    {
                        *seen = true;
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Stalled {
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn metric_value(rt: &tokio::runtime::Runtime, base: &str, name: &str) -> f64 {
    let text = rt.block_on(async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    common::metric_sample(&text, name).unwrap_or(0.0)
}

#[test]
fn a_collector_that_is_down_slows_nothing_drops_are_counted_and_export_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = start(
        dir.path(),
        &["--config", config(dir.path()).to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ],
    );
    chat(&rt, &server.base, 10);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&rt, &server.base, "tokentrace_exporter_dropped_spans_total") == 0.0 {
        assert!(Instant::now() < deadline, "drops were never counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        metric_value(
            &rt,
            &server.base,
            "tokentrace_exporter_errors_total{signal=\"traces\"}"
        ) > 0.0
    );
    // A collector that takes the connection and never answers: once an export is stuck on it,
    // requests are still answered, and the stuck export has delivered nothing meanwhile.
    let stalled = Stalled::listen(port);
    chat(&rt, &server.base, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stalled.requests.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no export reached the stalled collector"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    chat(&rt, &server.base, 10);
    assert_eq!(
        metric_value(
            &rt,
            &server.base,
            "tokentrace_exporter_exported_total{signal=\"traces\"}"
        ),
        0.0,
        "the requests were answered while the export was stuck"
    );
    drop(stalled);

    // the collector comes back
    let received = receiver(&rt, port);
    chat(&rt, &server.base, 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.traces.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "export never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
}
