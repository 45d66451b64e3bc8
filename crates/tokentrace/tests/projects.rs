//! Projects on the real binary: two keys of two projects write traces (OTLP, the events API,
//! the gateway), one trace id in both; neither can read, filter, tree-walk, list, follow,
//! export, total up or scrape the other's data, even by id; a sender cannot write into
//! another project by naming it; datasets stay in their project; `admin` sees everything and
//! can narrow to one project with `X-Tokentrace-Project`; the file says which trace is whose.
//! And the access policy: a rule on a model decides who may call it and see it listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use common::start;

const ALPHA: &str = "alpha-key-0123456789";
const BETA: &str = "beta-key-0123456789";
const BOTH: &str = "both-key-0123456789";
const OPS: &str = "ops-key-0123456789";

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("run.yaml");
    let rw = "[telemetry.read, telemetry.write, inference]";
    std::fs::write(
        &path,
        format!(
            "server:\n  auth:\n    provider_type: api_key\n    config:\n      keys:\n      - {{name: alpha, key: {ALPHA}, scopes: {rw}, projects: [alpha]}}\n      - {{name: beta, key: {BETA}, scopes: {rw}, projects: [beta]}}\n      - {{name: both, key: {BOTH}, scopes: {rw}, projects: [alpha, beta]}}\n      - {{name: ops, key: {OPS}, scopes: [admin]}}\n"
        ),
    )
    .unwrap();
    path
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One OTLP span of trace `[t; 16]`, span `[s; 8]` (a root), with a user and what the sender
/// claims its project is.
fn otlp(spans: &[(u8, u8, &str, &str)]) -> Vec<u8> {
    let now = 1_764_000_000_000_000_000u64;
    let spans = spans
        .iter()
        .map(|&(t, s, name, user)| Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            name: name.into(),
            start_time_unix_nano: now + u64::from(s) * 1_000,
            end_time_unix_nano: now + 50_000_000,
            attributes: vec![
                kv("user.id", user),
                kv("tokentrace.project", "alpha"),
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.request.model", "gpt-x"),
                KeyValue {
                    key: "gen_ai.usage.input_tokens".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    fn send(
        &self,
        method: &str,
        path: &str,
        key: &str,
        project: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(p) = project {
            r = r.header("x-tokentrace-project", p);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, key, None, Some(body))
    }

    fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.send("GET", path, key, None, None)
    }

    fn metrics(&self, key: &str) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(key)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The trace ids `query_traces` answers `key`.
    fn trace_ids(&self, key: &str, project: Option<&str>) -> Vec<String> {
        let (status, v) = self.send(
            "POST",
            "/v1/telemetry/traces",
            key,
            project,
            Some(json!({"limit": 100})),
        );
        assert_eq!(status, 200, "{v}");
        let mut ids: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["trace_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// The names of the spans `query_spans` answers `key` for these filters.
    fn span_names(&self, key: &str, filters: Value) -> Vec<String> {
        let (status, v) = self.post(
            "/v1/telemetry/spans",
            key,
            json!({"attribute_filters": filters, "attributes_to_return": []}),
        );
        assert_eq!(status, 200, "{v}");
        let mut names: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn neither_project_can_read_the_others_data_and_admin_sees_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = config(dir.path());
    let server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
            ("TELEMETRY_SINKS", "sqlite"),
        ],
    );
    let c = Client {
        base: server.base.clone(),
        http: reqwest::blocking::Client::new(),
    };
    let protobuf = |key: &str, body: Vec<u8>| {
        let r = c
            .http
            .post(format!("{}/v1/traces", c.base))
            .bearer_auth(key)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    // Trace 0x0a is alpha's, 0x0b beta's, and 0x55 is sent by both (a trace id is unique only
    // within a project). Every span claims to be alpha's: only the key decides.
    protobuf(
        ALPHA,
        otlp(&[
            (0x0a, 1, "alpha-root", "u-alpha"),
            (0x55, 3, "alpha-shared", "u-alpha"),
        ]),
    );
    protobuf(
        BETA,
        otlp(&[
            (0x0b, 2, "beta-root", "u-beta"),
            (0x55, 4, "beta-shared", "u-beta"),
        ]),
    );
    // The events API: a span of trace 0x0e for alpha.
    let (te, se) = ("0e".repeat(16), "0e".repeat(8));
    for event in [
        json!({"type": "structured_log", "trace_id": te, "span_id": se,
               "timestamp": "2025-11-24T16:00:00Z", "attributes": {"tokentrace.project": "beta"},
               "payload": {"type": "span_start", "name": "alpha-event-span"}}),
        json!({"type": "metric", "trace_id": te, "span_id": se, "timestamp": "2025-11-24T16:00:00.5Z",
               "metric": "prompt_tokens", "value": 11, "unit": "tokens",
               "attributes": {"model_id": "m-alpha"}}),
        json!({"type": "structured_log", "trace_id": te, "span_id": se,
               "timestamp": "2025-11-24T16:00:01Z",
               "payload": {"type": "span_end", "status": "ok"}}),
    ] {
        let (status, v) = c.post("/v1/telemetry/events", ALPHA, json!({"event": event}));
        assert_eq!(status, 200, "{v}");
    }
    // The gateway: one chat each, traced in the caller's project.
    let mut chats = Vec::new();
    for (key, user) in [(ALPHA, "u-alpha"), (BETA, "u-beta")] {
        let r = c
            .http
            .post(format!("{}/v1/openai/v1/chat/completions", c.base))
            .bearer_auth(key)
            .json(&json!({"model": "echo", "user": user,
                          "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        chats.push(r.headers()["x-trace-id"].to_str().unwrap().to_string());
    }
    let (alpha_chat, beta_chat) = (chats[0].clone(), chats[1].clone());
    let (ta, tb, ts) = (hex(&[0x0a; 16]), hex(&[0x0b; 16]), hex(&[0x55; 16]));
    let (sa, ss_alpha, ss_beta) = (hex(&[1; 8]), hex(&[3; 8]), hex(&[4; 8]));

    // Everything is stored: admin sees the six traces.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut all;
    loop {
        all = c.trace_ids(OPS, None);
        if all.len() == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "{all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut want_alpha = vec![ta.clone(), ts.clone(), te.clone(), alpha_chat.clone()];
    want_alpha.sort();
    let mut want_beta = vec![tb.clone(), ts.clone(), beta_chat.clone()];
    want_beta.sort();
    assert_eq!(c.trace_ids(ALPHA, None), want_alpha);
    assert_eq!(c.trace_ids(BETA, None), want_beta);
    // Admin narrowed to one project; a key with both projects, narrowed or not.
    assert_eq!(c.trace_ids(OPS, Some("alpha")), want_alpha);
    assert_eq!(c.trace_ids(BOTH, Some("beta")), want_beta);
    assert_eq!(c.trace_ids(BOTH, None).len(), 7);
    // A project the key does not have is refused.
    let (status, v) = c.send(
        "POST",
        "/v1/telemetry/traces",
        BETA,
        Some("alpha"),
        Some(json!({})),
    );
    assert_eq!(status, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("alpha"), "{v}");

    // By id: beta cannot get alpha's trace, span, span tree, trace page.
    assert_eq!(c.get(&format!("/v1/telemetry/traces/{ta}"), BETA).0, 404);
    assert_eq!(c.get(&format!("/v1/telemetry/traces/{ta}"), ALPHA).0, 200);
    assert_eq!(
        c.get(&format!("/v1/telemetry/traces/{ta}/spans/{sa}"), BETA)
            .0,
        404
    );
    assert_eq!(
        c.get(&format!("/v1/telemetry/traces/{ta}/spans/{sa}"), ALPHA)
            .0,
        200
    );
    assert_eq!(
        c.post(&format!("/v1/telemetry/spans/{sa}/tree"), BETA, json!({}))
            .0,
        404
    );
    assert_eq!(
        c.post(&format!("/v1/telemetry/spans/{sa}/tree"), ALPHA, json!({}))
            .0,
        200
    );
    assert_eq!(c.get(&format!("/v1/tokentrace/traces/{ta}"), BETA).0, 404);
    assert_eq!(
        c.get(&format!("/v1/tokentrace/traces/{alpha_chat}"), BETA)
            .0,
        404
    );
    assert_eq!(
        c.get(&format!("/v1/telemetry/traces/{te}/spans/{se}"), BETA)
            .0,
        404
    );

    // The shared trace id: each sees its own span only, whether by id, tree or filter.
    let (_, tree) = c.post(
        &format!("/v1/telemetry/spans/{ss_alpha}/tree"),
        BETA,
        json!({}),
    );
    assert_eq!(
        tree,
        json!({"detail": format!("span {ss_alpha} not found")})
    );
    let (status, tree) = c.post(
        &format!("/v1/telemetry/spans/{ss_beta}/tree"),
        BETA,
        json!({}),
    );
    assert_eq!(status, 200);
    assert_eq!(tree["data"].as_object().unwrap().len(), 1);
    let by_trace = json!([{"key": "trace_id", "op": "eq", "value": ts}]);
    assert_eq!(c.span_names(BETA, by_trace.clone()), ["beta-shared"]);
    assert_eq!(c.span_names(ALPHA, by_trace.clone()), ["alpha-shared"]);
    let mut both = c.span_names(OPS, by_trace);
    both.sort();
    assert_eq!(both, ["alpha-shared", "beta-shared"]);
    let (_, span) = c.get(&format!("/v1/telemetry/traces/{ts}/spans/{ss_beta}"), BETA);
    assert_eq!(span["name"], "beta-shared");
    // What the sender said of its project was replaced.
    assert_eq!(span["attributes"]["tokentrace.project"], "beta");
    assert_eq!(
        c.get(&format!("/v1/telemetry/traces/{ts}/spans/{ss_alpha}"), BETA)
            .0,
        404
    );

    // Filters: alpha's user, by an indexed key and by scan, find nothing for beta.
    let user = json!([{"key": "user.id", "op": "eq", "value": "u-alpha"}]);
    let (_, v) = c.post(
        "/v1/telemetry/traces",
        BETA,
        json!({"attribute_filters": user}),
    );
    assert_eq!(v["data"], json!([]));
    assert!(c.span_names(BETA, user.clone()).is_empty());
    // Its two OTLP traces and its chat (request span and call span).
    assert_eq!(c.span_names(ALPHA, user).len(), 4);
    let name = json!([{"key": "name", "op": "eq", "value": "alpha-event-span"}]);
    assert!(c.span_names(BETA, name.clone()).is_empty());
    assert_eq!(c.span_names(ALPHA, name), ["alpha-event-span"]);

    // tokentrace's own reads: the list, the feed, export, usage.
    let (_, list) = c.post("/v1/tokentrace/traces", BETA, json!({"limit": 50}));
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{list}");
    assert!(!listed.contains(&ta.as_str()) && !listed.contains(&alpha_chat.as_str()));
    let (_, feed) = c.post("/v1/tokentrace/spans/feed", BETA, json!({"after": 0}));
    let fed: Vec<(&str, &str)> = feed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["trace_id"].as_str().unwrap()))
        .collect();
    assert!(fed.iter().any(|(n, _)| *n == "beta-root"), "{feed}");
    for (name, trace) in &fed {
        assert!(!name.starts_with("alpha"), "{feed}");
        assert!(
            ![&ta, &te, &alpha_chat].contains(&&trace.to_string()),
            "{feed}"
        );
    }
    let (_, export) = c.post("/v1/tokentrace/export", BETA, json!({"limit": 50}));
    assert_eq!(export["traces"], 3, "{export}");
    let exported = export["otlp"].to_string();
    assert!(!exported.contains("alpha-root") && !exported.contains("alpha-shared"));
    assert!(exported.contains("beta-shared"));
    let (_, usage) = c.post(
        "/v1/tokentrace/usage",
        BETA,
        json!({"since": "2020-01-01T00:00:00Z", "by": "user"}),
    );
    let users: Vec<&str> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert!(users.contains(&"u-beta"), "{usage}");
    assert!(!users.contains(&"u-alpha"), "{usage}");

    // Metrics: beta's query sees only its series; alpha's prompt tokens (events API and
    // gateway) carry the project label.
    let (_, m) = c.post(
        "/v1/telemetry/metrics/prompt_tokens",
        ALPHA,
        json!({"start_time": 1_700_000_000, "query_type": "instant"}),
    );
    let series = m["data"].as_array().unwrap();
    assert!(!series.is_empty(), "{m}");
    for s in series {
        let labels = s["labels"].to_string();
        assert!(labels.contains("\"alpha\""), "{labels}");
    }
    let (_, m) = c.post(
        "/v1/telemetry/metrics/prompt_tokens",
        BETA,
        json!({"start_time": 1_700_000_000, "query_type": "instant"}),
    );
    for s in m["data"].as_array().unwrap() {
        assert!(!s["labels"].to_string().contains("alpha"), "{m}");
    }
    let scraped = c.metrics(BETA);
    assert!(
        scraped.contains("project=\"beta\""),
        "beta's own series are scraped: {scraped}"
    );
    assert!(!scraped.contains("alpha"), "{scraped}");
    assert!(
        !scraped.contains("tokentrace_pipeline_queue_depth"),
        "{scraped}"
    );
    let ops = c.metrics(OPS);
    assert!(ops.contains("project=\"alpha\"") && ops.contains("project=\"beta\""));
    assert!(ops.contains("tokentrace_pipeline_queue_depth"));

    // Datasets stay in their project.
    let save = |key: &str, id: &str| {
        c.post(
            "/v1/telemetry/spans/export",
            key,
            json!({"attribute_filters": [], "attributes_to_save": ["user.id"], "dataset_id": id}),
        )
    };
    assert_eq!(save(ALPHA, "ds-alpha").0, 200);
    let (status, rows) = c.get("/v1/datasetio/iterrows/ds-alpha", ALPHA);
    assert_eq!(status, 200);
    // Its spans with a user: two OTLP spans and the chat's call span.
    assert_eq!(rows["data"].as_array().unwrap().len(), 3, "{rows}");
    assert!(!rows.to_string().contains("u-beta"));
    assert_eq!(c.get("/v1/datasetio/iterrows/ds-alpha", BETA).0, 404);
    let (status, v) = save(BETA, "ds-alpha");
    assert_eq!(status, 400, "{v}");
    assert_eq!(
        c.get("/v1/datasetio/iterrows/ds-alpha", ALPHA).1["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Read-only SQL sees every project: admin only, and not narrowed.
    let sql = json!({"sql": "SELECT count(*) FROM trace_rows"});
    assert_eq!(c.post("/v1/tokentrace/sql", ALPHA, sql.clone()).0, 403);
    assert_eq!(
        c.send(
            "POST",
            "/v1/tokentrace/sql",
            OPS,
            Some("alpha"),
            Some(sql.clone())
        )
        .0,
        403
    );
    assert_eq!(c.post("/v1/tokentrace/sql", OPS, sql).0, 200);

    // The CLI: through the server with a key and a project, and on the file.
    let cli = |args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokentrace"))
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = c.base.clone();
    let shown = cli(&[
        "traces",
        "--url",
        &base,
        "--api-key",
        OPS,
        "--project",
        "beta",
        "--json",
    ]);
    assert!(shown.contains(&tb) && !shown.contains(&ta), "{shown}");
    let shown = cli(&["traces", "--url", &base, "--api-key", BETA, "--json"]);
    assert!(shown.contains(&tb) && !shown.contains(&te), "{shown}");
    let db = store.join("trace_store.db");
    let db = db.to_str().unwrap();
    let shown = cli(&["traces", "--db", db, "--project", "alpha", "--json"]);
    assert!(shown.contains(&te) && !shown.contains(&tb), "{shown}");
    assert!(cli(&["traces", "--db", db, "--json"]).contains(&tb));

    // The file says whose each trace is.
    drop(server);
    let db = rusqlite::Connection::open(store.join("trace_store.db")).unwrap();
    let mut st = db
        .prepare("SELECT project, count(*) FROM traces GROUP BY project ORDER BY project")
        .unwrap();
    let per: Vec<(String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(per, [("alpha".to_string(), 4), ("beta".to_string(), 3)]);
}

#[test]
fn the_access_policy_decides_who_may_use_which_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  auth:\n    provider_type: api_key\n    config:\n      keys:\n      - {{name: alpha, key: {ALPHA}, scopes: [inference], attributes: {{teams: [ml]}}}}\n      - {{name: beta, key: {BETA}, scopes: [inference]}}\n      - {{name: ops, key: {OPS}, scopes: [admin]}}\n    access_policy:\n    - forbid: {{actions: [read], resource: 'model::big'}}\n      unless: user with ml in teams\n      description: the big model is the ml team's\n    - permit: {{actions: [read]}}\nproviders:\n  inference:\n  - {{provider_id: echo, provider_type: 'inline::echo'}}\nmodels:\n- {{model_id: small, provider_id: echo}}\n- {{model_id: big, provider_id: echo}}\n"
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let server = start(
        dir.path(),
        &["--config", path.to_str().unwrap()],
        &[("SQLITE_STORE_DIR", store.to_str().unwrap())],
    );
    let c = Client {
        base: server.base.clone(),
        http: reqwest::blocking::Client::new(),
    };
    let chat = |key: &str, model: &str| {
        c.post(
            "/v1/openai/v1/chat/completions",
            key,
            json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    assert_eq!(chat(ALPHA, "big").0, 200);
    assert_eq!(chat(ALPHA, "small").0, 200);
    assert_eq!(chat(BETA, "small").0, 200);
    let (status, refused) = chat(BETA, "big");
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "model_not_allowed", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the key \"beta\""),
        "{refused}"
    );
    // Llama Stack's native route too, in its format.
    let (status, v) = c.post(
        "/v1/inference/chat-completion",
        BETA,
        json!({"model_id": "big", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("big"), "{v}");
    // Admin is held to the policy too: it is not in the ml team.
    assert_eq!(chat(OPS, "big").0, 403);
    let listed = |key: &str| -> Vec<String> {
        let (_, v) = c.get("/v1/models", key);
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(ALPHA), ["small", "big"]);
    assert_eq!(listed(BETA), ["small"]);
}
