//! Bad input gets a clear 4xx `{"detail"}` and leaves the store intact and the server serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Condvar, Mutex};

use common::*;
use serde_json::json;
use tokentrace_model::{SpanEvent, SpanRecord};
use tokentrace_pipeline::{PipelineOptions, Sink};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const S: &str = "00f067aa0ba902b7";

fn detail(body: &serde_json::Value) -> &str {
    body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no detail in {body}"))
}

fn snapshot(s: &TestServer) -> Vec<(String, String, String, String)> {
    let conn = s.sqlite();
    let mut stmt = conn
        .prepare("SELECT trace_id, span_id, name, attributes FROM spans WHERE trace_id = ?1 ORDER BY span_id")
        .unwrap();
    stmt.query_map([T], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_gets_a_clear_error_and_nothing_is_corrupted() {
    let s = TestServer::start_with(PipelineOptions::default(), Vec::new(), 64 * 1024).await;
    s.log(span_start(
        T,
        S,
        None,
        "kept",
        "2026-11-24T10:00:00Z",
        json!({"k": "v"}),
    ))
    .await;
    s.log(span_end(T, S, "2026-11-24T10:00:01Z", "ok")).await;
    s.flush().await;
    let before = snapshot(&s);
    assert_eq!(before.len(), 1);

    let tree_path = format!("/v1/telemetry/spans/{S}/tree");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/telemetry/events", b"{\"event\": ".to_vec(), 400, "malformed JSON"),
        ("/v1/telemetry/events", b"not json".to_vec(), 400, "malformed JSON"),
        ("/v1/telemetry/events", json!({"event": {"type": "metric", "trace_id": T, "span_id": S, "timestamp": "2026-11-24T10:00:00Z", "metric": "m", "value": "many", "unit": "u"}}).to_string().into_bytes(), 400, "value"),
        ("/v1/telemetry/events", json!({"event": {"type": "telepathy", "trace_id": T, "span_id": S, "timestamp": "2026-11-24T10:00:00Z"}}).to_string().into_bytes(), 400, "telepathy"),
        ("/v1/telemetry/events", json!({"event": log("XYZ", S, "2026-11-24T10:00:00Z", "info", "m")}).to_string().into_bytes(), 400, "trace"),
        ("/v1/telemetry/events", json!({"event": log(T, "0000000000000000", "2026-11-24T10:00:00Z", "info", "m")}).to_string().into_bytes(), 400, "zero"),
        ("/v1/telemetry/events", json!({"event": log(T, S, "last tuesday", "info", "m")}).to_string().into_bytes(), 400, "timestamp"),
        ("/v1/telemetry/events", json!({"event": log(T, S, "9999-12-31T23:59:59Z", "info", "m")}).to_string().into_bytes(), 400, "2262-04-11"),
        ("/v1/telemetry/events", json!({"event": {"type": "unstructured_log", "trace_id": T, "span_id": S, "timestamp": 1.0e12, "severity": "info", "message": "m"}}).to_string().into_bytes(), 400, "timestamp"),
        ("/v1/telemetry/events", json!({"event": log(T, S, "2026-11-24T10:00:00Z", "loud", "m")}).to_string().into_bytes(), 400, "loud"),
        ("/v1/telemetry/events", json!({"event": log(T, S, "2026-11-24T10:00:00Z", "info", "m"), "ttl_seconds": -5}).to_string().into_bytes(), 400, "ttl_seconds"),
        ("/v1/telemetry/traces", json!({"attribute_filters": [{"key": "x\") OR 1=1 --", "op": "eq", "value": 1}]}).to_string().into_bytes(), 400, "attribute key"),
        ("/v1/telemetry/traces", json!({"attribute_filters": [{"key": "x", "op": "like", "value": 1}]}).to_string().into_bytes(), 400, "op"),
        ("/v1/telemetry/traces", json!({"order_by": ["start_time; DROP TABLE spans"]}).to_string().into_bytes(), 400, "order_by"),
        ("/v1/telemetry/traces", json!({"limit": -1}).to_string().into_bytes(), 400, "limit"),
        ("/v1/telemetry/traces", json!({"offset": -1}).to_string().into_bytes(), 400, "offset"),
        ("/v1/telemetry/traces", json!({"limit": "ten"}).to_string().into_bytes(), 400, "limit"),
        ("/v1/telemetry/traces", json!({"bogus": 1}).to_string().into_bytes(), 400, "bogus"),
        ("/v1/telemetry/traces", json!({"attribute_filters": vec![json!({"key": "k", "op": "ne", "value": 1}); 496]}).to_string().into_bytes(), 400, "at most 64"),
        ("/v1/telemetry/spans", json!({"attribute_filters": vec![json!({"key": "k", "op": "ne", "value": 1}); 65], "attributes_to_return": []}).to_string().into_bytes(), 400, "at most 64"),
        ("/v1/telemetry/spans", json!({"attribute_filters": [], "attributes_to_return": ["a'b\"c"]}).to_string().into_bytes(), 400, "attribute key"),
        (&tree_path, json!({"max_depth": -3}).to_string().into_bytes(), 400, "max_depth"),
        ("/v1/telemetry/spans/nothex/tree", b"{}".to_vec(), 400, "span_id"),
        ("/v1/telemetry/spans/export", json!({"attribute_filters": [], "attributes_to_save": [], "dataset_id": ""}).to_string().into_bytes(), 400, "dataset_id"),
        ("/v1/telemetry/metrics/total_tokens", json!({"start_time": 10, "end_time": 5, "query_type": "range"}).to_string().into_bytes(), 400, "end"),
        ("/v1/telemetry/metrics/total_tokens", json!({"query_type": "range"}).to_string().into_bytes(), 400, "start_time"),
        ("/v1/telemetry/events", vec![b' '; 100 * 1024], 413, "larger"),
    ];
    for (path, body, want, needle) in &cases {
        let (status, resp) = s.post_raw(path, body.clone()).await;
        assert_eq!(
            status,
            *want,
            "{path} {}: {resp}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        let d = detail(&resp);
        assert!(
            d.to_lowercase().contains(&needle.to_lowercase()),
            "{path}: detail {d:?} should mention {needle:?}"
        );
    }

    let (st, resp) = s.get("/v1/telemetry/traces/ABC").await;
    assert_eq!(st, 400, "{resp}");
    assert!(detail(&resp).contains("trace_id"));
    let (st, resp) = s
        .get("/v1/telemetry/traces/0af7651916cd43dd8448eb211c80319c")
        .await;
    assert_eq!(st, 404);
    assert!(detail(&resp).contains("not found"));
    let (st, _) = s
        .get(&format!("/v1/telemetry/traces/{T}/spans/b7ad6b7169203331"))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post("/v1/telemetry/spans/b7ad6b7169203331/tree", json!({}))
        .await;
    assert_eq!(st, 404);
    let (st, resp) = s.get("/v1/nowhere").await;
    assert_eq!(st, 404);
    assert!(detail(&resp).contains("/v1/nowhere"));
    let (st, resp) = s.get("/v1/telemetry/events").await;
    assert_eq!(st, 405);
    assert!(detail(&resp).contains("GET"));

    // still serving, nothing lost or changed
    let (st, _) = s.get("/v1/health").await;
    assert_eq!(st, 200);
    s.flush().await;
    assert_eq!(snapshot(&s), before);
    let conn = s.sqlite();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name IN ('traces', 'spans', 'span_events', 'metrics')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 4);
    drop(conn);
    s.stop().await;
}

/// A sink that blocks until the gate opens, to fill the pipeline's queue.
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Sink for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn span_ended(&mut self, _: &SpanRecord) {}
    fn event(&mut self, _: &SpanEvent) {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_answers_503_with_retry_after_and_keeps_what_it_accepted() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let options = PipelineOptions {
        queue_capacity: 8,
        ..PipelineOptions::default()
    };
    let s = TestServer::start_with(options, vec![Box::new(Gate(gate.clone()))], 1 << 20).await;
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..100 {
        let ev = log(T, S, "2026-11-24T10:00:00Z", "info", &format!("m{i}"));
        let res = s
            .client
            .post(format!("{}/v1/telemetry/events", s.base))
            .json(&json!({"event": ev}))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => accepted += 1,
            503 => {
                assert_eq!(res.headers()["retry-after"], "1");
                let body: serde_json::Value = res.json().await.unwrap();
                assert!(detail(&body).contains("retry"));
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "the queue never filled");
    {
        let (lock, cv) = &*gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    s.flush().await;
    let stored: i64 = s
        .sqlite()
        .query_row("SELECT count(*) FROM span_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, accepted, "every acknowledged event is stored");
    s.stop().await;
}
