//! `telemetry.ack: committed`: every 200 of the events API and the OTLP receiver means the data
//! is in the SQLite file, so a `kill -9` right after the last answer loses none of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{signal, sqlite_config, start};
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
    let config = sqlite_config(dir.path(), "      ack: committed\n");
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

/// With the default `ack: accepted`, a `kill -9` under load loses only the newest acknowledged
/// data: per sender (each sends its next request after the last one's 200), what is in the file
/// is a prefix of what it was told was accepted, over OTLP and the events API alike. The test
/// prints how long before the kill the oldest lost item was acknowledged: the commit window
/// (BENCHMARKS.md, "Overload on every ingest path", has it under overload).
#[test]
fn with_ack_accepted_a_kill_9_loses_only_the_newest_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trace_store.db");
    let config = sqlite_config(dir.path(), "");
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let base = Arc::new(server.base.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Per sender: (over OTLP?, the trace ids it was answered 200 for, in order, with when).
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (base, stop) = (base.clone(), stop.clone());
            std::thread::spawn(move || {
                let otlp = t % 2 == 0;
                let http = reqwest::blocking::Client::new();
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (trace, request) = if otlp {
                        let body = otlp_body(100 + t, n);
                        let trace = format!("{:016x}{:08x}{:08x}", 0xacedu64, 100 + t, n);
                        let r = http
                            .post(format!("{base}/v1/traces"))
                            .header("content-type", "application/json")
                            .body(body);
                        (trace, r)
                    } else {
                        let trace = format!("{:016x}{:08x}{:08x}", 0xbeefu64, t, n);
                        let ev = json!({"event": {"type": "unstructured_log", "severity": "info",
                            "trace_id": trace, "span_id": format!("{:016x}", n + 1),
                            "timestamp": "2026-12-01T10:00:00Z", "message": format!("m{n}")}});
                        (
                            trace,
                            http.post(format!("{base}/v1/telemetry/events")).json(&ev),
                        )
                    };
                    let Ok(r) = request.send() else { break };
                    match r.status().as_u16() {
                        200 => {
                            acked.push((trace, std::time::Instant::now()));
                            n += 1;
                        }
                        503 => std::thread::sleep(std::time::Duration::from_millis(10)),
                        other => panic!("unexpected {other}: {:?}", r.text()),
                    }
                }
                (otlp, acked)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(4));
    signal(&server.child, "-KILL");
    let killed = std::time::Instant::now();
    let _ = server.child.wait();
    stop.store(true, Ordering::SeqCst);
    let senders: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored = |otlp: bool, trace: &str| -> bool {
        let sql = if otlp {
            "SELECT COUNT(*) FROM traces WHERE trace_id = ?1"
        } else {
            "SELECT COUNT(*) FROM span_events WHERE trace_id = ?1"
        };
        conn.query_row(sql, [trace], |r| r.get::<_, i64>(0))
            .unwrap()
            > 0
    };
    let (mut acked_total, mut kept_total, mut oldest_lost) = (0, 0, std::time::Duration::ZERO);
    for (otlp, acked) in &senders {
        let kept = acked.iter().take_while(|(t, _)| stored(*otlp, t)).count();
        for (trace, _) in &acked[kept..] {
            assert!(
                !stored(*otlp, trace),
                "{trace} is stored though an item acknowledged before it is not: data was lost out of order"
            );
        }
        if let Some((_, at)) = acked.get(kept) {
            oldest_lost = oldest_lost.max(killed.duration_since(*at));
        }
        acked_total += acked.len();
        kept_total += kept;
    }
    eprintln!(
        "kill -9 under load: {kept_total} of {acked_total} acknowledged requests in the file; the oldest lost was acknowledged {} ms before the kill",
        oldest_lost.as_millis()
    );
    assert!(kept_total > 0, "nothing acknowledged reached the file");
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
