//! The telemetry API end to end: real HTTP on 127.0.0.1, a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use tokentrace_model::Timestamp;

const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const ROOT: &str = "00f067aa0ba902b7";
const CHILD: &str = "b7ad6b7169203331";
const GRANDCHILD: &str = "c7ad6b7169203332";
const OTHER_ROOT: &str = "d7ad6b7169203333";

fn unix(ts: &str) -> i64 {
    Timestamp::parse_iso(ts).unwrap().unix_nanos() / 1_000_000_000
}

/// Two traces: T1 root → child (llm call, error) → grandchild; T2 a single span.
async fn seed(s: &TestServer) {
    s.log(span_start(
        T1,
        ROOT,
        None,
        "chat",
        "2026-11-24T10:00:00.000001Z",
        json!({"user": "ada", "route": "/v1/chat"}),
    ))
    .await;
    s.log(span_start(
        T1,
        CHILD,
        Some(ROOT),
        "llm",
        "2026-11-24T10:00:00.100Z",
        json!({"model_id": "llama", "temperature": 0.5}),
    ))
    .await;
    s.log(span_start(
        T1,
        GRANDCHILD,
        Some(CHILD),
        "tokenize",
        "2026-11-24T10:00:00.200Z",
        json!({"model_id": "llama"}),
    ))
    .await;
    s.log(log(
        T1,
        CHILD,
        "2026-11-24T10:00:00.300Z",
        "warn",
        "slow upstream",
    ))
    .await;
    s.log(metric(
        T1,
        CHILD,
        "2026-11-24T10:00:30Z",
        "total_tokens",
        json!(40),
        json!({"model_id": "llama", "provider_id": "echo"}),
    ))
    .await;
    s.log(metric(
        T1,
        CHILD,
        "2026-11-24T10:04:00Z",
        "total_tokens",
        json!(2),
        json!({"model_id": "llama", "provider_id": "echo"}),
    ))
    .await;
    s.log(metric(
        T1,
        CHILD,
        "2026-11-24T10:06:00Z",
        "total_tokens",
        json!(10),
        json!({"model_id": "mistral", "provider_id": "vllm"}),
    ))
    .await;
    s.log(span_end(T1, GRANDCHILD, "2026-11-24T10:00:00.250Z", "ok"))
        .await;
    s.log(span_end(T1, CHILD, "2026-11-24T10:00:01.600Z", "error"))
        .await;
    s.log(span_end(T1, ROOT, "2026-11-24T10:00:02Z", "ok"))
        .await;
    s.log(span_start(
        T2,
        OTHER_ROOT,
        None,
        "embed",
        "2026-11-24T11:00:00Z",
        json!({"user": "bob"}),
    ))
    .await;
    s.log(span_end(T2, OTHER_ROOT, "2026-11-24T11:00:00.010Z", "ok"))
        .await;
    s.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_spans_and_trees_round_trip() {
    let s = TestServer::start().await;
    seed(&s).await;

    for prefix in ["/v1/telemetry", "/v1alpha/telemetry"] {
        let (st, body) = s.post(&format!("{prefix}/traces"), json!({})).await;
        assert_eq!(st, 200, "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0]["trace_id"], T2, "newest first by default");
        assert_eq!(data[1]["trace_id"], T1);
        assert_eq!(data[1]["root_span_id"], ROOT);
        assert_eq!(data[1]["start_time"], "2026-11-24T10:00:00.000001Z");
        assert_eq!(data[1]["end_time"], "2026-11-24T10:00:02.000000Z");
    }

    // order, limit, offset
    let (_, body) = s
        .post(
            "/v1/telemetry/traces",
            json!({"order_by": ["start_time"], "limit": 1, "offset": 1}),
        )
        .await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["trace_id"], T2);

    // filters on attributes and on span fields
    let (_, body) = s
        .post(
            "/v1/telemetry/traces",
            json!({"attribute_filters": [{"key": "user", "op": "eq", "value": "bob"}]}),
        )
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["trace_id"], T2);
    let (_, body) = s
        .post(
            "/v1/telemetry/traces",
            json!({"attribute_filters": [{"key": "name", "op": "eq", "value": "tokenize"}]}),
        )
        .await;
    assert_eq!(body["data"][0]["trace_id"], T1);
    let (_, body) = s
        .post(
            "/v1/telemetry/traces",
            json!({"attribute_filters": [{"key": "temperature", "op": "gt", "value": 0.4}]}),
        )
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = s
        .post(
            "/v1/telemetry/traces",
            json!({"attribute_filters": [{"key": "user", "op": "ne", "value": "bob"}]}),
        )
        .await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&T1) && !ids.contains(&T2), "{ids:?}");

    let (st, body) = s.get(&format!("/v1/telemetry/traces/{T1}")).await;
    assert_eq!(st, 200);
    assert_eq!(body["root_span_id"], ROOT);

    let (st, body) = s
        .get(&format!("/v1/telemetry/traces/{T1}/spans/{CHILD}"))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "span_id": CHILD, "trace_id": T1, "parent_span_id": ROOT, "name": "llm",
            "start_time": "2026-11-24T10:00:00.100000Z", "end_time": "2026-11-24T10:00:01.600000Z",
            "attributes": {"model_id": "llama", "temperature": 0.5}
        })
    );

    let (st, body) = s
        .post(&format!("/v1/telemetry/spans/{ROOT}/tree"), json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
    let tree = body["data"].as_object().unwrap();
    assert_eq!(tree.len(), 3);
    assert_eq!(tree[CHILD]["status"], "error");
    assert_eq!(tree[GRANDCHILD]["parent_span_id"], CHILD);
    // The starting span is depth 1, as Llama Stack 0.2.x counts it.
    for depth in [0, 1] {
        let (_, body) = s
            .post(
                &format!("/v1/telemetry/spans/{ROOT}/tree"),
                json!({"max_depth": depth}),
            )
            .await;
        let tree = body["data"].as_object().unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), [ROOT], "{body}");
    }
    let (_, body) = s
        .post(
            &format!("/v1/telemetry/spans/{ROOT}/tree"),
            json!({"max_depth": 2, "attributes_to_return": ["model_id"]}),
        )
        .await;
    let tree = body["data"].as_object().unwrap();
    assert_eq!(tree.len(), 2, "{body}");
    assert_eq!(tree[CHILD]["attributes"], json!({"model_id": "llama"}));
    assert_eq!(tree[ROOT]["attributes"], json!({}));
    // a bare POST with no body reads as {}
    let (st, _) = s
        .post_raw(&format!("/v1/telemetry/spans/{CHILD}/tree"), Vec::new())
        .await;
    assert_eq!(st, 200);

    // query_spans: spans of matching traces that carry the requested attributes
    let (st, body) = s
        .post(
            "/v1/telemetry/spans",
            json!({
                "attribute_filters": [{"key": "user", "op": "eq", "value": "ada"}],
                "attributes_to_return": ["model_id"]
            }),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let mut names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["llm", "tokenize"]);
    // max_depth counts from each matching trace's root, the root being depth 1
    for (depth, want) in [(1, vec![ROOT]), (2, vec![ROOT, CHILD])] {
        let (_, body) = s
            .post(
                "/v1/telemetry/spans",
                json!({
                    "attribute_filters": [{"key": "user", "op": "eq", "value": "ada"}],
                    "attributes_to_return": [],
                    "max_depth": depth
                }),
            )
            .await;
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["span_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, want, "max_depth {depth}: {body}");
    }

    // the log is a span event of the child, and the seed's SQL holds
    let conn = s.sqlite();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM span_events WHERE span_id = ?1 AND message = 'slow upstream'",
            [CHILD],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let slow: Vec<String> = conn
        .prepare("SELECT name FROM spans WHERE duration_ms > 1000 ORDER BY duration_ms DESC")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(slow, ["chat", "llm"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_spans_to_a_dataset_and_read_it_back() {
    let s = TestServer::start().await;
    seed(&s).await;
    let (st, body) = s
        .post(
            "/v1/telemetry/spans/export",
            json!({
                "attribute_filters": [{"key": "user", "op": "eq", "value": "ada"}],
                "attributes_to_save": ["model_id"],
                "dataset_id": "llm-spans"
            }),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, Value::Null);
    let (st, body) = s
        .get("/v1/datasetio/iterrows/llm-spans?start_index=0&limit=1")
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["has_more"], true);
    let row = &body["data"][0];
    assert_eq!(row["trace_id"], T1);
    assert_eq!(row["model_id"], "llama");
    let (_, body) = s
        .get("/v1/datasetio/iterrows/llm-spans?start_index=1")
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["has_more"], false);
    // a second export appends
    s.post(
        "/v1/telemetry/spans/export",
        json!({"attribute_filters": [], "attributes_to_save": ["user"], "dataset_id": "llm-spans"}),
    )
    .await;
    let (_, body) = s.get("/v1/datasetio/iterrows/llm-spans").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 4, "{body}");
    let (st, body) = s.get("/v1/datasetio/iterrows/nope").await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = s
        .get("/v1/datasetio/iterrows/llm-spans?start_index=-1")
        .await;
    assert_eq!(st, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_range_instant_and_label_matchers() {
    let s = TestServer::start().await;
    seed(&s).await;
    let start = unix("2026-11-24T10:00:00Z");
    let end = unix("2026-11-24T10:10:00Z");

    let (st, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "end_time": end, "granularity": "5m", "query_type": "range"
            }),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let series = body["data"].as_array().unwrap();
    assert_eq!(series.len(), 2, "one series per label set: {body}");
    let llama = series
        .iter()
        .find(|s| s["labels"].to_string().contains("llama"))
        .unwrap();
    assert_eq!(llama["metric"], "total_tokens");
    assert_eq!(
        llama["labels"],
        json!([{"name": "model_id", "value": "llama"}, {"name": "provider_id", "value": "echo"}])
    );
    // 10:00:30 and 10:04:00 fall in the same five-minute bucket
    assert_eq!(
        llama["values"],
        json!([{"timestamp": start, "value": 42.0, "unit": "tokens"}])
    );
    let mistral = series
        .iter()
        .find(|s| s["labels"].to_string().contains("mistral"))
        .unwrap();
    assert_eq!(mistral["values"][0]["timestamp"], start + 300);

    // one-minute buckets split them
    let (_, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "end_time": end, "granularity": "1m", "query_type": "range",
                "label_matchers": [{"name": "model_id", "value": "llama", "operator": "="}]
            }),
        )
        .await;
    let series = body["data"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["values"].as_array().unwrap().len(), 2);

    let (_, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "end_time": end, "query_type": "instant",
                "label_matchers": [{"name": "provider_id", "value": "ec.*", "operator": "!~"}]
            }),
        )
        .await;
    let series = body["data"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{body}");
    assert_eq!(series[0]["values"][0]["value"], 10.0);
    let (_, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "end_time": end, "query_type": "instant",
                "label_matchers": [{"name": "model_id", "value": "ll", "operator": "=~"}]
            }),
        )
        .await;
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        0,
        "regexes match the whole value: {body}"
    );
    let (_, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "end_time": end, "query_type": "instant",
                "label_matchers": [{"name": "model_id", "value": "llama", "operator": "!="}]
            }),
        )
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (st, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "query_type": "range", "granularity": "5x"
            }),
        )
        .await;
    assert_eq!(st, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("granularity"),
        "{body}"
    );
    let (st, body) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({
                "start_time": start, "query_type": "instant",
                "label_matchers": [{"name": "model_id", "value": "(", "operator": "=~"}]
            }),
        )
        .await;
    assert_eq!(st, 400, "{body}");
    s.stop().await;
}
