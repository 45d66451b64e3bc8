//! `telemetry.ack: committed`: every 200 of the events API and the OTLP receiver means the data
//! is in the SQLite file, so a `kill -9` right after the last answer loses none of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{signal, start};
use serde_json::json;

const THREADS: usize = 12;
const SPANS_PER_THREAD: usize = 8;
const OTLP_REQUESTS_PER_THREAD: usize = 3;
const SPANS_PER_OTLP_REQUEST: usize = 20;

fn event(trace: &str, span: &str, payload: serde_json::Value) -> serde_json::Value {
    json!({"event": {"type": "structured_log", "trace_id": trace, "span_id": span,
                     "timestamp": "2026-12-01T10:00:00Z", "attributes": {}, "payload": payload}})
}

fn otlp_body(thread: usize, request: usize) -> String {
    let spans: Vec<serde_json::Value> = (0..SPANS_PER_OTLP_REQUEST)
        .map(|i| {
            json!({"traceId": format!("{:016x}{:08x}{:08x}", 0xacedu64, thread, request),
                   "spanId": format!("{:08x}{:08x}", request + 1, i + 1),
                   "name": format!("otlp-acked-{thread}-{request}-{i}"),
                   "startTimeUnixNano": "1764583200000000000",
                   "endTimeUnixNano": "1764583201000000000"})
        })
        .collect();
    json!({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).to_string()
}

#[test]
fn with_ack_committed_a_kill_9_after_the_answers_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trace_store.db");
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}\n      ack: committed\n",
            db.display()
        ),
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let base = Arc::new(server.base.clone());
    let acked_spans = Arc::new(AtomicUsize::new(0));
    let acked_otlp = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (base, acked_spans, acked_otlp) =
                (base.clone(), acked_spans.clone(), acked_otlp.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for s in 0..SPANS_PER_THREAD {
                    let trace = format!("{:024x}{:08x}", t + 1, s + 1);
                    let span = format!("{:016x}", (t << 16) + s + 1);
                    let start = json!({"type": "span_start", "name": format!("acked-{t}-{s}")});
                    let end = json!({"type": "span_end", "status": "ok"});
                    for payload in [start, end] {
                        let r = http
                            .post(format!("{base}/v1/telemetry/events"))
                            .json(&event(&trace, &span, payload))
                            .send()
                            .unwrap();
                        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                    }
                    acked_spans.fetch_add(1, Ordering::SeqCst);
                }
                for r in 0..OTLP_REQUESTS_PER_THREAD {
                    let res = http
                        .post(format!("{base}/v1/traces"))
                        .header("content-type", "application/json")
                        .body(otlp_body(t, r))
                        .send()
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    acked_otlp.fetch_add(SPANS_PER_OTLP_REQUEST, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Right after the last answer: no shutdown, no flush.
    signal(&server.child, "-KILL");
    let _ = server.child.wait();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let count = |pattern: &str| -> usize {
        conn.query_row(
            "SELECT COUNT(*) FROM spans WHERE name LIKE ?1",
            [pattern],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    assert_eq!(
        acked_spans.load(Ordering::SeqCst),
        THREADS * SPANS_PER_THREAD
    );
    assert_eq!(count("acked-%"), THREADS * SPANS_PER_THREAD);
    assert_eq!(
        count("otlp-acked-%"),
        acked_otlp.load(Ordering::SeqCst),
        "every acknowledged OTLP span is in the file"
    );
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// `ack: committed` without the sqlite sink is refused at start-up, naming the key.
#[test]
fn ack_committed_needs_the_sqlite_sink() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: console\n      ack: committed\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ack") && err.contains("sqlite"), "{err}");
}
