//! The OTLP/HTTP receiver with real protobuf and JSON bodies built from opentelemetry-proto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::TestServer;
use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::logs::v1::ExportLogsServiceRequest;
use tokentrace_otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tokentrace_otlp::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokentrace_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use tokentrace_otlp::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokentrace_otlp::proto::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use tokentrace_otlp::proto::resource::v1::Resource;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use tokentrace_pipeline::PipelineOptions;

const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const ROOT: [u8; 8] = [1, 1, 1, 1, 1, 1, 1, 1];
const CHILD: [u8; 8] = [2, 2, 2, 2, 2, 2, 2, 2];
const GRANDCHILD: [u8; 8] = [3, 3, 3, 3, 3, 3, 3, 3];
const NOW: u64 = 1_795_514_400_000_000_000;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s("my-app")),
            kv("deployment.environment", s("test")),
        ],
        ..Default::default()
    })
}

fn span(id: [u8; 8], parent: Option<[u8; 8]>, name: &str, start_ms: u64, dur_ms: u64) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: NOW + start_ms * 1_000_000,
        end_time_unix_nano: NOW + (start_ms + dur_ms) * 1_000_000,
        attributes: vec![
            kv("user_id", s("user123")),
            kv("attempt", any_value::Value::IntValue(2)),
        ],
        events: vec![span::Event {
            time_unix_nano: NOW + start_ms * 1_000_000 + 1,
            name: "retry".into(),
            attributes: vec![kv("why", s("429"))],
            ..Default::default()
        }],
        links: vec![span::Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            ..Default::default()
        }],
        status: Some(Status {
            code: status::StatusCode::Error as i32,
            message: "upstream failed".into(),
        }),
        ..Default::default()
    }
}

fn traces(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

const PB: &[(&str, &str)] = &[("content-type", "application/x-protobuf")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_spans_in_any_order_make_one_trace_with_its_true_root() {
    let srv = TestServer::start().await;
    // children first, the root last, in separate requests
    for sp in [
        span(GRANDCHILD, Some(CHILD), "tokenize", 20, 5),
        span(CHILD, Some(ROOT), "POST /v1/chat/completions", 10, 50),
        span(ROOT, None, "custom_operation", 0, 100),
    ] {
        let (st, headers, body) = srv
            .post_with("/v1/traces", PB, traces(vec![sp]).encode_to_vec())
            .await;
        assert_eq!(st, 200);
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let res = ExportTraceServiceResponse::decode(&body[..]).unwrap();
        assert!(res.partial_success.is_none(), "{res:?}");
    }
    srv.flush().await;
    let conn = srv.sqlite();
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (root, service): (String, String) = conn
        .query_row(
            "SELECT root_span_id, service_name FROM traces WHERE trace_id = ?1",
            [trace_hex],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        root, "0101010101010101",
        "the true root, though it arrived last"
    );
    assert_eq!(service, "my-app");
    let (kind, status, msg, attrs, links): (String, String, String, String, String) = conn
        .query_row("SELECT kind, status, status_message, attributes, links FROM spans WHERE span_id = '0202020202020202'", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), status.as_str(), msg.as_str()),
        ("client", "error", "upstream failed")
    );
    let attrs: Value = serde_json::from_str(&attrs).unwrap();
    assert_eq!(attrs["user_id"], "user123");
    assert_eq!(attrs["attempt"], 2);
    assert_eq!(attrs["resource.deployment.environment"], "test");
    assert!(links.contains("09090909"), "{links}");
    let events: i64 = conn
        .query_row(
            "SELECT count(*) FROM span_events WHERE name = 'retry' AND trace_id = ?1",
            [trace_hex],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events, 3);
    drop(conn);
    // the tree from the application's root, through the Llama Stack API
    let (st, tree) = srv
        .post("/v1/telemetry/spans/0101010101010101/tree", json!({}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(tree["data"].as_object().unwrap().len(), 3);
    assert_eq!(
        tree["data"]["0303030303030303"]["parent_span_id"],
        "0202020202020202"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_gzip_bodies_and_partial_success() {
    let srv = TestServer::start().await;
    let body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-app"}}]},
    "scopeSpans": [{"spans": [
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "name": "json span", "kind": 2,
         "startTimeUnixNano": "1795514400000000000", "endTimeUnixNano": "1795514400500000000",
         "attributes": [{"key": "n", "value": {"intValue": "42"}}]},
        {"traceId": "00000000000000000000000000000000", "spanId": "b7ad6b7169203332", "name": "bad ids",
         "startTimeUnixNano": "1795514400000000000", "endTimeUnixNano": "1795514400500000000"},
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203333", "name": "too late",
         "startTimeUnixNano": "18446744073709551615", "endTimeUnixNano": "18446744073709551615"},
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203334", "name": "ends too late",
         "startTimeUnixNano": "1795514400000000000", "endTimeUnixNano": "9223372036854775808"},
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203335", "name": "ends before it starts",
         "startTimeUnixNano": "1795514400500000000", "endTimeUnixNano": "1795514400000000000"}
    ]}]}]});
    let (st, headers, res) = srv
        .post_with(
            "/v1/traces",
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(headers["content-type"], "application/json");
    let res: Value = serde_json::from_slice(&res).unwrap();
    assert_eq!(res["partialSuccess"]["rejectedSpans"], 4, "{res}");
    let message = res["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("trace_id"), "{message}");
    assert!(message.contains("is past 2262-04-11"), "{message}");
    assert!(
        message.contains("is before start_time_unix_nano"),
        "{message}"
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&traces(vec![span(ROOT, None, "gzipped", 0, 1)]).encode_to_vec())
        .unwrap();
    let (st, _, _) = srv
        .post_with(
            "/v1/traces",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(st, 200);
    srv.flush().await;
    let conn = srv.sqlite();
    let n: i64 = conn
        .query_row(
            "SELECT json_extract(attributes, '$.n') FROM spans WHERE name = 'json span'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 42);
    let kind: String = conn
        .query_row("SELECT kind FROM spans WHERE name = 'json span'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kind, "server");
    let gz: i64 = conn
        .query_row(
            "SELECT count(*) FROM spans WHERE name = 'gzipped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(gz, 1);
    // Times the store cannot hold, or a negative duration: refused, never clamped or stored.
    let refused: i64 = conn
        .query_row(
            "SELECT count(*) FROM spans WHERE name IN ('too late', 'ends too late', 'ends before it starts')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refused, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_the_otlp_status_codes() {
    let mut srv = TestServer::start().await;
    let good = traces(vec![span(ROOT, None, "kept", 0, 1)]).encode_to_vec();
    let (st, _, _) = srv.post_with("/v1/traces", PB, good.clone()).await;
    assert_eq!(st, 200);
    let (st, _, body) = srv
        .post_with("/v1/traces", PB, vec![0xff, 0xff, 0xff, 0x01])
        .await;
    assert_eq!(st, 400);
    let status = tokentrace_otlp::RpcStatus::decode(&body[..]).unwrap();
    assert!(status.message.contains("protobuf"), "{status:?}");
    let (st, _, _) = srv
        .post_with("/v1/traces", PB, good[..good.len() - 3].to_vec())
        .await;
    assert_eq!(st, 400, "truncated");
    let (st, _, body) = srv
        .post_with(
            "/v1/traces",
            &[("content-type", "application/json")],
            br#"{"resourceSpans": 7}"#.to_vec(),
        )
        .await;
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&body).contains("JSON"));
    let (st, _, _) = srv
        .post_with(
            "/v1/traces",
            &[("content-type", "text/plain")],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(st, 415);
    let (st, _, _) = srv
        .post_with(
            "/v1/traces",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "br"),
            ],
            good.clone(),
        )
        .await;
    assert_eq!(st, 415);
    let (st, _, _) = srv
        .post_with(
            "/v1/traces",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            b"not gzip".to_vec(),
        )
        .await;
    assert_eq!(st, 400);
    srv.stop().await;

    // a small limit: oversized bodies and gzip bombs get 413
    srv = TestServer::start().await;
    let limit = 64 * 1024;
    srv.set_otlp_limit(limit).await;
    let (st, _, _) = srv.post_with("/v1/traces", PB, vec![0u8; limit + 1]).await;
    assert_eq!(st, 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![0u8; limit * 4]).unwrap();
    let (st, _, _) = srv
        .post_with(
            "/v1/traces",
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            gz.finish().unwrap(),
        )
        .await;
    assert_eq!(st, 413);
    let (st, _, _) = srv.post_with("/v1/traces", PB, good).await;
    assert_eq!(st, 200, "still serving");
    srv.flush().await;
    let ok: String = srv
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_logs_are_stored_and_queryable() {
    let srv = TestServer::start().await;
    let point = |v: i64, model: &str| NumberDataPoint {
        attributes: vec![kv("model_id", s(model))],
        time_unix_nano: NOW + 1_000_000_000,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    };
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "app_tokens".into(),
                    unit: "tokens".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![point(5, "a"), point(7, "b")],
                        is_monotonic: true,
                        aggregation_temporality: 2,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (st, _, _) = srv.post_with("/v1/metrics", PB, req.encode_to_vec()).await;
    assert_eq!(st, 200);
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        time_unix_nano: NOW,
                        severity_number: 17,
                        body: Some(AnyValue {
                            value: Some(s("span log")),
                        }),
                        trace_id: TRACE.to_vec(),
                        span_id: ROOT.to_vec(),
                        ..Default::default()
                    },
                    LogRecord {
                        time_unix_nano: NOW,
                        severity_text: "WARN".into(),
                        body: Some(AnyValue {
                            value: Some(s("free log")),
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let (st, _, _) = srv.post_with("/v1/logs", PB, logs.encode_to_vec()).await;
    assert_eq!(st, 200);
    srv.flush().await;
    let start = (NOW / 1_000_000_000) as i64;
    let (st, body) = srv
        .post(
            "/v1/telemetry/metrics/app_tokens",
            json!({"start_time": start, "end_time": start + 60, "query_type": "instant"}),
        )
        .await;
    assert_eq!(st, 200);
    let series = body["data"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{body}");
    assert!(series.iter().any(|s| s["values"][0]["value"] == 7.0));
    let conn = srv.sqlite();
    let (sev, span): (String, Option<String>) = conn
        .query_row(
            "SELECT severity, span_id FROM span_events WHERE message = 'span log'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (sev.as_str(), span.as_deref()),
        ("error", Some("0101010101010101"))
    );
    let (sev, trace): (String, Option<String>) = conn
        .query_row(
            "SELECT severity, trace_id FROM span_events WHERE message = 'free log'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sev.as_str(), trace), ("warn", None));
    drop(conn);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_holds_senders_for_room_then_answers_503_with_retry_after() {
    let options = PipelineOptions {
        queue_capacity: 1,
        ..PipelineOptions::default()
    };
    struct Slow(u64);
    impl tokentrace_pipeline::Sink for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn span_ended(&mut self, _: &tokentrace_model::SpanRecord) {
            std::thread::sleep(std::time::Duration::from_millis(self.0));
        }
        fn event(&mut self, _: &tokentrace_model::SpanEvent) {}
    }
    let body = traces(vec![span(ROOT, None, "x", 0, 1)]).encode_to_vec();
    // A sink slower than the senders but faster than `backpressure_ms` (1 s): every request is
    // held until the queue has room and then accepted, none refused.
    let srv = TestServer::start_with(options.clone(), vec![Box::new(Slow(100))], 1 << 20).await;
    for _ in 0..10 {
        let (st, _, _) = srv.post_with("/v1/traces", PB, body.clone()).await;
        assert_eq!(st, 200);
    }
    srv.stop().await;
    // A sink slower than that: a request that found no room in 1 s gets 503 and Retry-After.
    let srv = TestServer::start_with(options, vec![Box::new(Slow(1_500))], 1 << 20).await;
    let mut saw_503 = false;
    for _ in 0..5 {
        let (st, headers, _) = srv.post_with("/v1/traces", PB, body.clone()).await;
        if st == 503 {
            assert_eq!(headers["retry-after"], "1");
            saw_503 = true;
            break;
        }
        assert_eq!(st, 200);
    }
    assert!(saw_503, "the queue never filled");
    srv.stop().await;
}
