//! `telemetry.redaction` on every ingest path of the real binary: a gateway call whose prompt
//! holds an email, an events-API log with a phone number, an OTLP span with a card number: the
//! store (file and WAL) and the console hold `[REDACTED:<kind>]` instead, and `/metrics` counts
//! them by kind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use common::{signal, start, wait_exit};

const EMAIL: &str = "alice.private@example.org";
const PHONE: &str = "+44 20 7946 0958";
const CARD: &str = "4111 1111 1111 1111";

#[test]
fn personal_data_is_redacted_on_every_path_before_any_sink() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      redaction:\n        mode: redact\n",
    )
    .unwrap();
    let mut server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[
            ("TELEMETRY_SINKS", "console,sqlite"),
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": format!("mail me at {EMAIL}")}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The answer itself is the provider's: redaction is of what is recorded.
    assert!(r.text().unwrap().contains(EMAIL));
    let r = http
        .post(format!("{base}/v1/telemetry/events"))
        .json(&json!({"event": {"type": "unstructured_log", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7", "timestamp": "2026-11-24T10:00:00Z", "severity": "info",
            "message": format!("call back on {PHONE}")}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let span = Span {
        trace_id: vec![5; 16],
        span_id: vec![5; 8],
        name: "checkout".into(),
        start_time_unix_nano: 1_764_000_000_000_000_000,
        end_time_unix_nano: 1_764_000_000_100_000_000,
        attributes: vec![KeyValue {
            key: "payment.note".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("paid with {CARD}"))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = http
        .post(format!("{base}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body.encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if ["email", "phone", "credit_card"]
            .iter()
            .all(|k| m.contains(&format!("tokentrace_redactions_total{{kind=\"{k}\"}}")))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("tokentrace_redactions_total{kind=\"credit_card\"} 1"),
        "{metrics}"
    );
    let stored = loop {
        let q: Value = http
            .post(format!("{base}/v1/tokentrace/sql"))
            .json(&json!({"sql": "SELECT attributes FROM spans WHERE name = 'checkout'"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if let Some(a) = q["rows"][0][0].as_str() {
            break a.to_string();
        }
        assert!(Instant::now() < deadline, "the span was never stored");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        stored.contains("paid with [REDACTED:credit_card]"),
        "{stored}"
    );
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
    let console: String = server.stderr.try_iter().collect::<Vec<_>>().join("\n");
    assert!(console.contains("[REDACTED:phone]"), "{console}");
    let mut files = vec![console.into_bytes()];
    for f in std::fs::read_dir(&store).unwrap() {
        files.push(std::fs::read(f.unwrap().path()).unwrap());
    }
    for secret in [EMAIL, PHONE, CARD] {
        for (i, bytes) in files.iter().enumerate() {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in file {i}"
            );
        }
    }
}
