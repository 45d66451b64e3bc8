//! The web UI end to end: a real server filled through the gateway (the official openai SDK)
//! and the OTLP receiver, driven in headless Chromium by playwright-core (`ui_e2e.mjs`): the
//! traces page and its filters, the waterfall and the conversation, a 1,000-span trace, the
//! dashboard's totals against the store's, sessions, metrics, the dark theme, no console
//! errors and no request leaving the server's origin. Screenshots go to
//! `target/ui-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::{KeyValue, any_value};
use tokentrace_otlp::proto::resource::v1::Resource;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};

use common::{kv, require_python, start};

fn text(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs one of the browser scripts beside the tests with playwright-core and Chromium; fails
/// with its output unless it prints `done`.
fn run_browser(script: &str, args: &[&str]) {
    let node_dir = std::env::var("TOKENTRACE_UI_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target/ui-node"));
    assert!(
        node_dir.join("node_modules/playwright-core").is_dir()
            && PathBuf::from("/usr/bin/chromium").exists(),
        "playwright-core (in {}) and /usr/bin/chromium are needed; run scripts/test, which installs them",
        node_dir.display()
    );
    let out = Command::new("node")
        .arg(workspace().join("crates/tokentrace/tests").join(script))
        .args(args)
        .env("TOKENTRACE_UI_NODE", &node_dir)
        .output()
        .expect("node is needed for the UI tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("done"),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spans of one service as an OTLP request.
fn request(service: &str, spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", text(service))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn span(
    trace: u8,
    id: u16,
    parent: Option<u16>,
    name: &str,
    at: u64,
    attrs: Vec<KeyValue>,
) -> Span {
    let sid = |i: u16| {
        let mut b = vec![trace; 8];
        b[6..8].copy_from_slice(&(i + 1).to_be_bytes());
        b
    };
    Span {
        trace_id: vec![trace; 16],
        span_id: sid(id),
        parent_span_id: parent.map(sid).unwrap_or_default(),
        name: name.into(),
        start_time_unix_nano: at + u64::from(id) * 1_000,
        end_time_unix_nano: at + 40_000_000 - u64::from(id) * 1_000,
        attributes: attrs,
        status: Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[test]
fn the_web_ui_shows_what_the_store_holds() {
    require_python("openai");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = start(
        dir.path(),
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();

    // Gateway calls through the official SDK.
    let out = Command::new("python3")
        .arg(workspace().join("crates/tokentrace/tests/ui_traffic.py"))
        .arg(&base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("done"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chat_trace = stdout
        .lines()
        .find_map(|l| l.strip_prefix("chat_trace="))
        .unwrap()
        .to_string();

    // An instrumented agent's trace over OTLP: agent run > plan > a failed LLM call.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let prompt = json!([
        {"role": "system", "content": "plan the trip"},
        {"role": "user", "content": "where to?"},
        {"role": "assistant", "content": null,
         "tool_calls": [{"function": {"name": "search", "arguments": "{\"q\":\"Oslo\"}"}}]}
    ])
    .to_string();
    let mut call = span(
        7,
        2,
        Some(1),
        "chat gpt-x",
        now,
        vec![
            kv("gen_ai.request.model", text("gpt-x")),
            kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(120)),
            kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(30)),
            kv("gen_ai.prompt", text(&prompt)),
        ],
    );
    call.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "rate limited".into(),
    });
    let agent = request(
        "agent-svc",
        vec![
            call,
            span(7, 1, Some(0), "plan", now, vec![]),
            span(
                7,
                0,
                None,
                "agent run",
                now,
                vec![kv("session.id", text("s-1"))],
            ),
        ],
    );
    // A trace of 1,000 spans: a root and a wide, three-level tree under it.
    let big: Vec<Span> = (0..1000u16)
        .map(|i| {
            span(
                9,
                i,
                (i > 0).then(|| (i - 1) / 10),
                &format!("step {i}"),
                now - 60_000_000_000,
                vec![],
            )
        })
        .collect();
    let http = reqwest::blocking::Client::new();
    for body in [agent, request("bulk-svc", big)] {
        let r = http
            .post(format!("{base}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let sql = |q: &str| -> Value {
        let r: Value = http
            .post(format!("{base}/v1/tokentrace/sql"))
            .json(&json!({ "sql": q }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["rows"][0][0].clone()
    };
    // 4 gateway calls of 2 spans, 3 agent spans, 1,000.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql("SELECT COUNT(*) FROM span_rows").as_i64() != Some(1011) {
        assert!(Instant::now() < deadline, "the spans were never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the dashboard must say, read another way: the trace list's sums and the metric rows.
    let list: Value = http
        .post(format!("{base}/v1/tokentrace/traces"))
        .json(&json!({ "limit": 100 }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let traces = list["data"].as_array().unwrap();
    let input: i64 = traces
        .iter()
        .filter_map(|t| t["input_tokens"].as_i64())
        .sum();
    let metric_tokens =
        sql("SELECT SUM(value) FROM metrics WHERE name IN ('prompt_tokens', 'completion_tokens')");
    let expect = json!({
        "traces": traces.len(),
        "agent_trace": "07".repeat(16),
        "big_trace": "09".repeat(16),
        "chat_trace": chat_trace,
        "calls": 5,
        "input_tokens": input,
        "metric_tokens": metric_tokens.as_f64().unwrap(),
    });
    assert_eq!(traces.len(), 6);

    let out_dir = workspace().join("target/ui-screenshots");
    run_browser(
        "ui_e2e.mjs",
        &[
            base.as_str(),
            out_dir.to_str().unwrap(),
            &expect.to_string(),
        ],
    );
    assert!(out_dir.join("trace.png").exists());
    drop(server);
}

/// With `server.auth`, the UI asks for a key once, refuses one that cannot read, and then shows
/// the traces (`ui_login.mjs`).
#[test]
fn with_auth_the_web_ui_asks_for_a_key_that_can_read() {
    let (read_key, app_key) = ("ui-read-key-0123456789", "ui-app-key-0123456789");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        format!("server:\n  auth:\n    provider_type: api_key\n    config:\n      keys:\n      - name: reader\n        key: {read_key}\n        scopes: [telemetry.read]\n      - name: app\n        key: {app_key}\n        scopes: [inference]\n"),
    )
    .unwrap();
    let store = dir.path().join("store");
    let server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(app_key)
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http
            .post(format!("{base}/v1/tokentrace/traces"))
            .bearer_auth(read_key)
            .json(&json!({}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if page["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the call was never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    run_browser("ui_login.mjs", &[base.as_str(), read_key, app_key]);
    drop(server);
}
