//! Several gateways, one store: three `tokentrace` processes. Two gateways run with only the
//! `otel_trace` sink, pointed at a third instance (the hub) that stores what its OTLP receiver
//! gets. Every trace made at either gateway is then in the hub's store with the ids the gateway
//! gave it, and the hub's query API answers for all of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Server, signal, start, wait_exit};
use serde_json::{Value, json};

const CALLS_PER_GATEWAY: usize = 5;

fn gateway(dir: &std::path::Path, name: &str, hub: &Server) -> Server {
    start(
        &dir.join(name),
        &[],
        &[
            ("TELEMETRY_SINKS", "otel_trace"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", hub.base.as_str()),
            ("OTEL_SERVICE_NAME", name),
        ],
    )
}

#[test]
fn traces_from_two_gateways_land_in_the_hub_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let hub_store = dir.path().join("hub-store");
    let mut hub = start(
        &dir.path().join("hub"),
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", hub_store.to_str().unwrap()),
        ],
    );
    let mut gateways = [
        gateway(dir.path(), "gateway-a", &hub),
        gateway(dir.path(), "gateway-b", &hub),
    ];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    // trace id → the gateway that made it
    let mut made = Vec::new();
    rt.block_on(async {
        for (g, name) in gateways.iter().zip(["gateway-a", "gateway-b"]) {
            for i in 0..CALLS_PER_GATEWAY {
                let res = client
                    .post(format!("{}/v1/openai/v1/chat/completions", g.base))
                    .json(&json!({
                        "model": "echo",
                        "messages": [{"role": "user", "content": format!("call {i} at {name}")}]
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let trace_id = res.headers()["x-trace-id"].to_str().unwrap().to_string();
                made.push((trace_id, name));
            }
        }
    });
    // SIGTERM makes each gateway export what it still holds before it exits, and the hub
    // commit everything its receiver acknowledged; the hub then starts again on its store.
    for g in &mut gateways {
        signal(&g.child, "-TERM");
        assert!(wait_exit(&mut g.child).success());
    }
    signal(&hub.child, "-TERM");
    assert!(wait_exit(&mut hub.child).success());
    let mut hub = start(
        &dir.path().join("hub"),
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", hub_store.to_str().unwrap()),
        ],
    );

    rt.block_on(async {
        let post = |path: String, body: Value| {
            let client = client.clone();
            let url = format!("{}{path}", hub.base);
            async move {
                let res = client.post(url).json(&body).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.json::<Value>().await.unwrap()
            }
        };
        let body = post("/v1/telemetry/traces".into(), json!({"limit": 100})).await;
        let listed: BTreeSet<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["trace_id"].as_str().unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> = made.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(
            listed, expected,
            "the hub lists exactly the gateways' traces"
        );

        for (trace_id, _) in &made {
            let trace: Value = client
                .get(format!("{}/v1/telemetry/traces/{trace_id}", hub.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(trace["trace_id"], *trace_id);
            let root = trace["root_span_id"].as_str().unwrap();
            let tree = post(format!("/v1/telemetry/spans/{root}/tree"), json!({})).await;
            let spans = tree["data"].as_object().unwrap();
            let names: BTreeSet<&str> = spans
                .values()
                .map(|s| s["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                BTreeSet::from(["POST /v1/openai/v1/chat/completions", "chat echo"]),
                "trace {trace_id}: the request span and its provider span"
            );
            for span in spans.values() {
                assert_eq!(span["trace_id"], *trace_id);
            }
        }
    });

    // Each span kept the service name of the gateway that made it.
    let conn = rusqlite::Connection::open(hub_store.join("trace_store.db")).unwrap();
    for (trace_id, name) in &made {
        let services: Vec<String> = conn
            .prepare("SELECT DISTINCT service_name FROM spans WHERE trace_id = ?1")
            .unwrap()
            .query_map([trace_id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(services, [name.to_string()], "trace {trace_id}");
    }
    signal(&hub.child, "-TERM");
    assert!(wait_exit(&mut hub.child).success());
}
