//! The CLI as a user runs it: the real binary against a store that a running server filled
//! through the gateway and the OTLP receiver, read from the file and from the server, with the
//! same answers; `tail` following new spans; `sql` refusing writes without blocking the
//! server's writer; `trace` in a real terminal (tmux). Long: one scenario per subcommand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::{AnyValue, KeyValue, any_value};
use tokentrace_otlp::proto::resource::v1::Resource;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};

use common::{Server, start};

const OTLP_TRACE: &str = "5b8efff798038103d269b633813fc60c";

/// Fields drop in order: the server stops before its directory goes.
struct Setup {
    server: Server,
    http: reqwest::blocking::Client,
    db: PathBuf,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// The binary with a clean environment (no colour: not a terminal).
fn cli(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("COLUMNS", "200")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

impl Setup {
    fn db_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--db", self.db.to_str().unwrap()]);
        v
    }

    fn url_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--url", self.server.base.as_str()]);
        v
    }

    /// Runs a subcommand on the file and on the server; both must succeed with the same output.
    fn both(&self, args: &[&str]) -> String {
        let file = ok(&cli(&self.home, &self.db_args(args)));
        let server = ok(&cli(&self.home, &self.url_args(args)));
        assert_eq!(file, server, "{args:?}: file and server answers differ");
        file
    }

    fn chat(&self, model: &str, text: &str, stream: bool) -> reqwest::blocking::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.server.base))
            .header("x-telemetry-service", "cli-test")
            .json(&json!({"model": model, "stream": stream, "user": "alice",
                "messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": text}]}))
            .send()
            .unwrap()
    }

    /// Waits until the store holds `n` spans (the writer commits in the background).
    fn wait_spans(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cli(
                &self.home,
                &self.db_args(&["sql", "SELECT COUNT(*) AS n FROM span_rows", "--json"]),
            );
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if v[0]["n"].as_i64() >= Some(n) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the store never held {n} spans");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A server with 3 gateway calls (one streamed, one of an unknown model) and one OTLP trace
/// of another service with a failed LLM span.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let store = home.join("store");
    let server = start(
        &home,
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
        ],
    );
    let s = Setup {
        db: store.join("trace_store.db"),
        _dir: dir,
        home,
        server,
        http: reqwest::blocking::Client::new(),
    };
    assert_eq!(s.chat("echo", "first question", false).status(), 200);
    let streamed = s.chat("echo", "second question", true);
    assert_eq!(streamed.status(), 200);
    let _ = streamed.text().unwrap();
    assert_eq!(s.chat("no-such-model", "x", false).status(), 404);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let trace = hex(OTLP_TRACE);
    let span = |id: u8, parent: Option<u8>, name: &str, attrs: Vec<KeyValue>, code| Span {
        trace_id: trace.clone(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        start_time_unix_nano: now + u64::from(id) * 1_000_000,
        end_time_unix_nano: now + 50_000_000 - u64::from(id) * 1_000_000,
        attributes: attrs,
        status: Some(Status {
            code: code as i32,
            message: if code == status::StatusCode::Error {
                "rate limited".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    };
    let body = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "otlp-svc")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(
                        2,
                        Some(1),
                        "chat gpt-x",
                        vec![kv("gen_ai.request.model", "gpt-x")],
                        status::StatusCode::Error,
                    ),
                    span(
                        1,
                        None,
                        "agent run",
                        vec![kv("session.id", "s-1")],
                        status::StatusCode::Ok,
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = s
        .http
        .post(format!("{}/v1/traces", s.server.base))
        .header("content-type", "application/x-protobuf")
        .body(body.encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // 3 request spans, 2 provider-call spans (the unknown model has none), 2 OTLP spans.
    s.wait_spans(7);
    s
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn traces_trace_sql_and_metrics_answer_the_same_from_the_file_and_the_server() {
    let s = setup();

    // traces: JSON, table, CSV, filters.
    let all: Vec<Value> = serde_json::from_str(&s.both(&["traces", "--json"])).unwrap();
    assert_eq!(all.len(), 4, "{all:#?}");
    let otlp = all.iter().find(|t| t["trace_id"] == OTLP_TRACE).unwrap();
    assert_eq!(otlp["root_name"], "agent run");
    assert_eq!(otlp["service_name"], "otlp-svc");
    assert_eq!(otlp["status"], "error");
    assert_eq!(otlp["models"], json!(["gpt-x"]));
    assert_eq!(otlp["session"], "s-1");
    let echo: Vec<&Value> = all
        .iter()
        .filter(|t| t["models"] == json!(["echo"]))
        .collect();
    assert_eq!(echo.len(), 2);
    assert!(echo.iter().all(|t| t["input_tokens"].as_i64() > Some(0)));

    let table = s.both(&["traces"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("TRACE ID"),
        "{table}"
    );
    assert_eq!(lines.len(), 5, "{table}");
    let row = lines.iter().find(|l| l.contains(OTLP_TRACE)).unwrap();
    for word in ["agent run", "otlp-svc", "gpt-x", "error"] {
        assert!(row.contains(word), "{word} missing: {row}");
    }
    assert!(!table.contains('\x1b'), "no colour off a terminal");

    let csv = csv_rows(&s.both(&["traces", "--csv", "--errors"]));
    assert_eq!(csv[0][0], "TIME");
    assert_eq!(csv.len(), 2, "{csv:?}");
    assert_eq!(csv[1][8], OTLP_TRACE);

    let only = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["traces", "--json"];
        a.extend(args);
        let v: Vec<Value> = serde_json::from_str(&s.both(&a)).unwrap();
        v.iter()
            .map(|t| t["trace_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(only(&["--service", "otlp-svc"]), vec![OTLP_TRACE]);
    assert_eq!(only(&["--model", "echo"]).len(), 2);
    assert_eq!(only(&["--where", "session.id=s-1"]), vec![OTLP_TRACE]);
    assert_eq!(only(&["--since", "1h", "--limit", "1"]).len(), 1);
    assert!(only(&["--until", "1h"]).is_empty());

    // trace: the tree, --full with the conversation, --json.
    let id = echo[0]["trace_id"].as_str().unwrap();
    let tree = s.both(&["trace", id]);
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with(&format!("trace {id}")), "{tree}");
    assert!(lines[1].starts_with("POST /v1/chat/completions"), "{tree}");
    let call = lines
        .iter()
        .position(|l| l.starts_with("└─ chat echo"))
        .unwrap();
    assert!(call > 1, "{tree}");
    assert!(lines.iter().all(|l| l.chars().count() <= 200), "{tree}");
    let full = s.both(&["trace", id, "--full"]);
    for want in [
        "system:",
        "be brief",
        "user:",
        "assistant:",
        "gen_ai.usage.input_tokens",
    ] {
        assert!(full.contains(want), "{want} missing:\n{full}");
    }
    let spans: Value = serde_json::from_str(&s.both(&["trace", id, "--json"])).unwrap();
    assert_eq!(spans.as_object().unwrap().len(), 2);
    let otlp_tree = s.both(&["trace", OTLP_TRACE]);
    let root = otlp_tree
        .lines()
        .position(|l| l.starts_with("agent run"))
        .unwrap();
    let child = otlp_tree
        .lines()
        .position(|l| l.starts_with("└─ chat gpt-x"))
        .unwrap();
    assert!(root < child, "{otlp_tree}");

    // Not found, bad input, usage: exit codes 1, 1, 2, with a message.
    for args in [
        vec!["trace", "00000000000000000000000000000001"],
        vec!["trace", "xyz"],
    ] {
        let out = cli(&s.home, &s.db_args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("tokentrace: "));
    }
    let missing = cli(&s.home, &["traces", "--db", "/nonexistent/x.db"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no trace store at"));
    assert_eq!(
        cli(&s.home, &["traces", "--limit", "many"]).status.code(),
        Some(2)
    );

    // sql: the seed's examples as written, JSON and CSV, writes refused.
    for q in [
        "SELECT * FROM traces WHERE timestamp > datetime('now', '-1 hour')",
        "SELECT name, AVG(duration_ms) as avg_duration FROM spans GROUP BY name ORDER BY avg_duration DESC",
        "SELECT * FROM spans WHERE duration_ms > 1000 ORDER BY duration_ms DESC",
    ] {
        s.both(&["sql", q]);
    }
    let counted: Value = serde_json::from_str(&s.both(&[
        "sql",
        "SELECT name, COUNT(*) AS n FROM spans GROUP BY name ORDER BY name",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        counted[0],
        json!({"name": "POST /v1/chat/completions", "n": 3})
    );
    let csv = s.both(&[
        "sql",
        "SELECT trace_id, name FROM spans WHERE name = 'agent run'",
        "--csv",
    ]);
    assert_eq!(csv, format!("trace_id,name\n{OTLP_TRACE},agent run\n"));
    for write in [
        "DELETE FROM span_rows",
        "DROP TABLE span_rows",
        "PRAGMA user_version = 1",
    ] {
        for args in [s.db_args(&["sql", write]), s.url_args(&["sql", write])] {
            let out = cli(&s.home, &args);
            assert_eq!(out.status.code(), Some(1), "{write}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("only reading is allowed"));
        }
    }
    s.wait_spans(7);

    // metrics: totals per model, the same as the traces' token counts.
    let series: Value = serde_json::from_str(&s.both(&[
        "metrics",
        "prompt_tokens",
        "--since",
        "1h",
        "--by",
        "model_id",
        "--json",
    ]))
    .unwrap();
    let total: f64 = series[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    let tokens: i64 = echo
        .iter()
        .map(|t| t["input_tokens"].as_i64().unwrap())
        .sum();
    assert_eq!(
        series[0]["labels"],
        json!([{"name": "model_id", "value": "echo"}])
    );
    assert_eq!(total, tokens as f64);
    let table = s.both(&["metrics", "prompt_tokens", "--since", "1h"]);
    assert!(
        table.contains("model_id=echo") && table.contains(&tokens.to_string()),
        "{table}"
    );

    // usage: the same totals, from the calls' spans (a fixed window: both answers alike).
    let now = tokentrace_model::Timestamp::now().unix_nanos();
    let at = |ns: i64| tokentrace_model::Timestamp::from_unix_nanos(ns).to_iso();
    let (since, until) = (at(now - 3_600_000_000_000), at(now + 60_000_000_000));
    let window = ["--since", since.as_str(), "--until", until.as_str()];
    let usage: Value =
        serde_json::from_str(&s.both(&[&["usage", "--json"], &window[..]].concat())).unwrap();
    assert_eq!(usage["by"], "model_id");
    let row = &usage["data"][0];
    assert_eq!(
        (row["key"].as_str(), row["calls"].as_u64()),
        (Some("echo"), Some(2)),
        "{usage}"
    );
    assert_eq!(row["input_tokens"].as_i64(), Some(tokens));
    let csv = csv_rows(&s.both(&[&["usage", "--by", "provider", "--csv"], &window[..]].concat()));
    assert_eq!(csv[0][0], "PROVIDER_ID");
    assert_eq!((csv[1][0].as_str(), csv[1][1].as_str()), ("echo", "2"));
    assert_eq!(csv[0][7], "COST");
    assert_eq!(csv[1][7], "$0.00", "the embedded model costs nothing");

    // sessions: a call naming its session (header) and user (the request's `user`).
    let count: Value =
        serde_json::from_str(&s.both(&["sql", "SELECT COUNT(*) AS n FROM span_rows", "--json"]))
            .unwrap();
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.server.base))
        .header("x-session-id", "sess-cli")
        .json(&json!({"model": "echo", "user": "bob",
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    s.wait_spans(count[0]["n"].as_i64().unwrap() + 2);
    let sessions = csv_rows(&s.both(&[&["sessions", "--csv"], &window[..]].concat()));
    assert_eq!(
        sessions[0][..6],
        ["SESSION", "TURNS", "CALLS", "IN", "OUT", "COST"]
    );
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(
        (
            sessions[1][0].as_str(),
            sessions[1][2].as_str(),
            sessions[1][6].as_str()
        ),
        ("sess-cli", "1", "bob")
    );
    let none = s.both(&[&["sessions", "--json", "--user", "nobody"], &window[..]].concat());
    let none: Value = serde_json::from_str(&none).unwrap();
    assert_eq!(none["data"], json!([]));
}

#[test]
fn reading_never_blocks_the_servers_writer() {
    let s = setup();
    // A query that reads for a long time (its budget is a minute) holds a read snapshot...
    let mut long = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(s.db_args(&[
            "sql",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000000000) SELECT COUNT(*) FROM c, span_rows",
        ]))
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // ...while the server goes on committing.
    for i in 0..5 {
        assert_eq!(s.chat("echo", &format!("during {i}"), false).status(), 200);
    }
    s.wait_spans(17);
    assert!(
        long.try_wait().unwrap().is_none(),
        "the long read was still running"
    );
    long.kill().unwrap();
    let _ = long.wait();
}

#[test]
fn tail_prints_each_new_trace_as_a_tree_from_the_file_and_from_the_server() {
    let s = setup();
    let mut followers: Vec<_> = [
        s.db_args(&["tail"]),
        s.url_args(&["tail", "--where", "gen_ai.request.model=echo"]),
    ]
    .into_iter()
    .map(|args| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
            .args(args)
            .env_clear()
            .env("COLUMNS", "120")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It says when it follows; only spans stored after that are printed.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("following"), "{line}");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    })
    .collect();
    let ids: Vec<String> = (0..2)
        .map(|i| {
            let r = s.chat("echo", &format!("tail {i}"), false);
            r.headers()["x-trace-id"].to_str().unwrap().to_string()
        })
        .collect();
    for (n, (child, rx)) in followers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ids
            .iter()
            .all(|id| seen.iter().any(|l: &String| l.contains(&id[..8])))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("follower {n} printed only:\n{}", seen.join("\n")),
            }
        }
        // The whole file follower prints root above call; the filtered one only the calls.
        let text = seen.join("\n");
        if n == 0 {
            let root = text.find("POST /v1/chat/completions").unwrap();
            let call = text.find("└─ chat echo").unwrap();
            assert!(root < call, "{text}");
            assert!(
                !text.contains("first question"),
                "old spans are not printed:\n{text}"
            );
        } else {
            assert!(!text.contains("POST /v1/chat/completions"), "{text}");
            assert!(text.contains("chat echo"), "{text}");
        }
        child.kill().unwrap();
        let _ = child.wait();
    }
}

#[test]
fn export_then_import_gives_a_second_server_the_same_traces_and_twice_stores_nothing_twice() {
    let s = setup();
    let other_home = s.home.join("other");
    let other_store = other_home.join("store");
    std::fs::create_dir_all(&other_home).unwrap();
    let other = start(
        &other_home,
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", other_store.to_str().unwrap()),
        ],
    );
    let otlp = s.home.join("all.otlp.jsonl");
    let lines = s.home.join("all.jsonl");
    let out = cli(
        &s.home,
        &s.db_args(&["export", "--page", "2", "-o", otlp.to_str().unwrap()]),
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 4 traces, 7 spans"));
    // Two pages of two traces: two OTLP requests.
    assert_eq!(std::fs::read_to_string(&otlp).unwrap().lines().count(), 2);
    ok(&cli(
        &s.home,
        &s.url_args(&["export", "--format", "jsonl", "-o", lines.to_str().unwrap()]),
    ));
    assert_eq!(std::fs::read_to_string(&lines).unwrap().lines().count(), 7);
    let counts = |db: &Path| -> Value {
        let q = "SELECT (SELECT COUNT(*) FROM span_rows) AS spans, (SELECT COUNT(*) FROM event_rows WHERE span_id IS NOT NULL) AS events";
        let v: Value = serde_json::from_str(&ok(&cli(
            &s.home,
            &["sql", q, "--json", "--db", db.to_str().unwrap()],
        )))
        .unwrap();
        v[0].clone()
    };
    let want = counts(&s.db);
    // Both formats, each twice: the same spans and events once.
    for file in [&otlp, &lines, &otlp] {
        let out = cli(
            &s.home,
            &["import", file.to_str().unwrap(), "--url", &other.base],
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("imported 7 spans"),
            "{out:?}"
        );
        ok(&out);
    }
    let other_db = other_store.join("trace_store.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&other_db)["spans"] != want["spans"] {
        assert!(Instant::now() < deadline, "the import was never stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(counts(&other_db), want);
    let ids: Vec<Value> = serde_json::from_str(&s.both(&["traces", "--json"])).unwrap();
    for t in &ids {
        let id = t["trace_id"].as_str().unwrap();
        let here = ok(&cli(&s.home, &s.url_args(&["trace", id, "--json"])));
        let there = ok(&cli(
            &s.home,
            &["trace", id, "--json", "--url", &other.base],
        ));
        assert_eq!(here, there, "trace {id}");
    }
    // A bad line is named and skipped; the rest is imported; the exit code says so.
    let mixed = s.home.join("mixed.jsonl");
    let first = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&mixed, format!("{{\"trace_id\": 7}}\n{first}\nnot json\n")).unwrap();
    let out = cli(
        &s.home,
        &["import", mixed.to_str().unwrap(), "--url", &other.base],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1:") && err.contains("line 3:") && err.contains("imported 1 spans"),
        "{err}"
    );
    assert_eq!(counts(&other_db), want);
}

#[test]
fn check_config_prints_the_settings_in_force_and_completions_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let out = cli(home, &["check-config"]);
    let text = ok(&out);
    assert!(
        text.contains("sqlite_db_path") && text.contains("model_id: \"echo\""),
        "{text}"
    );
    let config = home.join("run.yaml");
    std::fs::write(
        &config,
        "providers:\n  inference:\n  - provider_id: up\n    provider_type: remote::openai\n    config:\n      url: http://127.0.0.1:9/v1\n      api_key: sk-very-secret\nmodels:\n- model_id: m\n  provider_id: up\n",
    )
    .unwrap();
    let text = ok(&cli(
        home,
        &["check-config", "--config", config.to_str().unwrap()],
    ));
    assert!(
        !text.contains("sk-very-secret") && text.contains("********"),
        "{text}"
    );
    std::fs::write(&config, "server:\n  prot: 1\n").unwrap();
    let out = cli(
        home,
        &["check-config", "--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&cli(home, &["completions", shell]));
        assert!(
            script.contains("tokentrace") && script.contains("traces"),
            "{shell}"
        );
    }
}

/// Runs `tokentrace trace` in a tmux window of 90 columns: colour on a terminal, lines that fit,
/// and no colour with `NO_COLOR`.
#[test]
fn trace_in_a_real_terminal_has_colour_and_fits_its_width() {
    let s = setup();
    let all: Vec<Value> =
        serde_json::from_str(&ok(&cli(&s.home, &s.db_args(&["traces", "--json"])))).unwrap();
    let id = all.iter().find(|t| t["models"] == json!(["echo"])).unwrap()["trace_id"]
        .as_str()
        .unwrap();
    let session = format!("tt-cli-{}", std::process::id());
    let bin = env!("CARGO_BIN_EXE_tokentrace");
    let run = |env: &str| -> String {
        let tmux = |args: &[&str]| {
            let out = Command::new("tmux")
                .args(args)
                .output()
                .expect("tmux is needed (scripts/test installs it)");
            assert!(
                out.status.success(),
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        tmux(&["new-session", "-d", "-s", &session, "-x", "90", "-y", "40"]);
        let cmd = format!(
            "{env} {bin} trace {id} --db {} ; echo DONE-$?",
            s.db.display()
        );
        tmux(&["send-keys", "-t", &session, &cmd, "Enter"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let screen = loop {
            let screen = tmux(&["capture-pane", "-p", "-e", "-J", "-t", &session]);
            if screen.contains("DONE-0") {
                break screen;
            }
            assert!(Instant::now() < deadline, "trace did not finish:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        };
        tmux(&["kill-session", "-t", &session]);
        // What the command printed: after its own line, before DONE.
        let lines: Vec<&str> = screen.lines().collect();
        let from = lines.iter().rposition(|l| l.contains(bin)).unwrap() + 1;
        let to = lines.iter().rposition(|l| l.contains("DONE-0")).unwrap();
        lines[from..to].join("\n")
    };
    let colour = run("");
    assert!(colour.contains("\x1b["), "colour on a terminal:\n{colour}");
    let plain = strip_ansi(&colour);
    assert!(plain.contains("└─ chat echo"), "{plain}");
    assert!(plain.lines().all(|l| l.chars().count() <= 90), "{plain}");
    let no_colour = run("NO_COLOR=1");
    assert!(!no_colour.contains('\x1b'), "NO_COLOR:\n{no_colour}");
    assert_eq!(no_colour, plain);
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
