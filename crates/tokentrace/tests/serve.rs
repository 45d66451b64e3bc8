//! The `tokentrace` binary as a user runs it: start-up, configuration errors, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{signal, start, wait_exit};

use serde_json::json;

fn run_to_failure(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .arg("serve")
        .args(args)
        .env_clear()
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected start-up to fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn default_config_serves_and_stores_under_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let health: serde_json::Value = rt.block_on(async {
        reqwest::get(format!("{}/v1/health", server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(health["status"], "OK");
    signal(&server.child, "-INT");
    assert!(wait_exit(&mut server.child).success());
    assert!(dir.path().join("data/tokentrace/trace_store.db").exists());
    let _ = server.stderr.try_recv();
}

#[test]
fn sigterm_after_a_burst_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut server = start(
        dir.path(),
        &[],
        &[
            ("TELEMETRY_SINKS", "console,sqlite"),
            ("SQLITE_STORE_DIR", store_dir.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked: Vec<String> = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let client = client.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..400 {
                    let message = format!("w{worker}-m{i}");
                    let event = json!({"event": {"type": "unstructured_log", "trace_id": trace,
                        "span_id": format!("{:016x}", worker * 1000 + i + 1), "timestamp": "2026-11-24T10:00:00Z",
                        "attributes": {}, "severity": "info", "message": message}});
                    match client.post(format!("{base}/v1/telemetry/events")).json(&event).send().await {
                        Ok(r) if r.status() == 200 => acked.push(message),
                        Ok(r) => assert_eq!(r.status(), 503, "only back-pressure may refuse"),
                        Err(_) => break, // the server has stopped accepting
                    }
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        acked
    });
    assert!(
        acked.len() >= 3000,
        "burst mostly accepted: {}",
        acked.len()
    );
    signal(&server.child, "-TERM");
    let status = wait_exit(&mut server.child);
    assert!(status.success(), "{status:?}");

    let conn = rusqlite::Connection::open(store_dir.join("trace_store.db")).unwrap();
    let mut stmt = conn.prepare("SELECT message FROM span_events").unwrap();
    let stored: std::collections::HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn sigterm_while_requests_are_in_flight_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut server = start(
        dir.path(),
        &[],
        &[
            ("TELEMETRY_SINKS", "sqlite"),
            ("SQLITE_STORE_DIR", store_dir.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();
    let pid = server.child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked: Vec<String> = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let client = client.clone();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..100_000 {
                    let message = format!("w{worker}-m{i}");
                    let event = json!({"event": {"type": "unstructured_log", "trace_id": "0af7651916cd43dd8448eb211c80319c",
                        "span_id": "00f067aa0ba902b7", "timestamp": "2026-11-24T10:00:00Z",
                        "attributes": {}, "severity": "info", "message": message}});
                    match client.post(format!("{base}/v1/telemetry/events")).json(&event).send().await {
                        Ok(r) if r.status() == 200 => acked.push(message),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(status.success());
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        acked
    });
    let status = wait_exit(&mut server.child);
    assert!(status.success(), "{status:?}");
    assert!(!acked.is_empty());
    let conn = rusqlite::Connection::open(store_dir.join("trace_store.db")).unwrap();
    let mut stmt = conn.prepare("SELECT message FROM span_events").unwrap();
    let stored: std::collections::HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing = acked.iter().filter(|m| !stored.contains(*m)).count();
    assert_eq!(missing, 0, "of {} acknowledged", acked.len());
}

#[test]
fn configuration_errors_stop_start_up_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_to_failure(dir.path(), &[], &[("TELEMETRY_SINKS", "console,kafka")]);
    assert!(err.contains("kafka") && err.contains("sqlite"), "{err}");

    let err = run_to_failure(dir.path(), &[], &[("TELEMETRY_SINKS", "otel_trace")]);
    assert!(err.contains("otel_exporter_otlp_endpoint"), "{err}");

    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      service_name: ${env.TT_REQUIRED_NAME}\n",
    )
    .unwrap();
    let err = run_to_failure(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert!(err.contains("TT_REQUIRED_NAME"), "{err}");

    let err = run_to_failure(dir.path(), &["--config", "/nonexistent/run.yaml"], &[]);
    assert!(err.contains("/nonexistent/run.yaml"), "{err}");

    std::fs::write(
        &config,
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      indexed_attributes: [user.id, 'bad\"key']\n",
    )
    .unwrap();
    let err = run_to_failure(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert!(
        err.contains("indexed_attributes[1]") && err.contains("bad\\\"key"),
        "{err}"
    );
}

#[test]
fn a_client_holding_half_a_request_does_not_keep_the_server_from_stopping() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(&cfg, "server:\n  request_timeout_seconds: 2\n").unwrap();
    let mut server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("TELEMETRY_SINKS", "sqlite")],
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/telemetry/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&server.child, "-TERM");
    // Without a deadline the server would wait for this client forever.
    assert!(wait_exit(&mut server.child).success());
    let log: Vec<String> = server.stderr.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("closing them")), "{log:#?}");
    drop(half);
}

#[test]
fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[], &[("TELEMETRY_SINKS", "sqlite")]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow")
        .unwrap();
    // The server drops it (after its 10 s header deadline); the guard here is only against a
    // hang.
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    let read = half.read_to_end(&mut buf);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // Other clients were served all along.
    let r = reqwest::blocking::get(format!("{}/v1/health", server.base)).unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn server_tls_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
            cert_file.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("TELEMETRY_SINKS", "sqlite")],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let https = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = https
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "over TLS"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no answer, and a client that does not trust the
    // certificate cannot connect.
    let plain = server.base.replacen("https://", "http://", 1);
    assert!(reqwest::blocking::get(format!("{plain}/v1/health")).is_err());
    assert!(reqwest::blocking::get(format!("{}/v1/health", server.base)).is_err());
    // A key that does not fit the certificate stops start-up with a message.
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(&key_file, other.key_pair.serialize_pem()).unwrap();
    let err = run_to_failure(dir.path(), &["--config", cfg.to_str().unwrap()], &[]);
    assert!(err.contains("server.tls"), "{err}");
}

/// SIGTERM stops a query that would run for minutes (its budget is ten): the query is answered
/// 503 saying tokentrace is stopping, and the server exits cleanly.
#[test]
fn sigterm_interrupts_a_long_query_and_the_server_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        "server:\n  request_timeout_seconds: 600\nproviders:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      query_timeout_seconds: 600\n",
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", cfg.to_str().unwrap()], &[]);
    let base = server.base.clone();
    let query = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
            .post(format!("{base}/v1/tokentrace/sql"))
            .json(&json!({"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    });
    // Let the query start, then stop the server under it.
    std::thread::sleep(Duration::from_secs(1));
    signal(&server.child, "-TERM");
    let (status, body) = query.join().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopping"), "{body}");
    assert!(wait_exit(&mut server.child).success());
}

/// Bodies being received are bounded in bytes: four clients that declare the largest OTLP body
/// and send it slowly hold the whole budget, so other bodies are answered 503 with
/// `Retry-After` at once instead of being read into memory; once those clients go, requests
/// are served again.
#[test]
fn request_bodies_held_at_once_are_bounded_in_bytes() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[], &[("TELEMETRY_SINKS", "sqlite")]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let slow: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 16777216\r\n\r\n\x0a",
            )
            .unwrap();
            c
        })
        .collect();
    let post = |body: &str| -> (u16, String) {
        exchange(
            &addr,
            &format!(
                "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    // The four heads are read on their own connections: wait until /metrics shows their
    // shares held (a GET without a body takes none).
    let gauge = |name: &str| -> f64 {
        let text = reqwest::blocking::get(format!("{}/metrics", server.base))
            .unwrap()
            .text()
            .unwrap();
        common::metric_sample(&text, name)
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    };
    let budget = gauge("tokentrace_request_body_budget_bytes");
    assert_eq!(
        budget,
        (64u64 << 20) as f64,
        "four of the 16 MiB OTLP limit"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut held = gauge("tokentrace_request_body_bytes_held");
    while held < budget && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = gauge("tokentrace_request_body_bytes_held");
    }
    assert_eq!(held, budget, "the four slow bodies hold the whole budget");
    let (status, answer) = post("{}");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(gauge("tokentrace_request_bodies_refused_total"), 1.0);
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("too many request bodies"), "{answer}");
    let health = reqwest::blocking::get(format!("{}/v1/health", server.base)).unwrap();
    assert_eq!(health.status(), 200, "requests without a body still served");
    drop(slow);
    let mut served = false;
    for _ in 0..200 {
        if post("{}").0 == 200 {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "the budget came back when the slow clients left");
}

#[test]
fn connections_past_max_connections_are_answered_503_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  max_connections: 3\nproviders:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}\n",
            dir.path().join("trace_store.db").display()
        ),
    )
    .unwrap();
    let server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Three connections that send nothing hold the three places (accepted in order).
    let mut idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let get = |path: &str| -> (u16, String) {
        exchange(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        )
    };
    let (status, answer) = get("/v1/health");
    assert_eq!(status, 503, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{answer}");
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(
        answer.contains("too many connections are open (server.max_connections: 3)"),
        "{answer}"
    );
    // One leaves: its place is given back, and /metrics (on the freed place) counts the refusal.
    drop(idle.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, answer) = get("/metrics");
        if status == 200 {
            break answer;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(std::time::Instant::now() < deadline, "no place came back");
        std::thread::sleep(Duration::from_millis(20));
    };
    let refused = common::metric_sample(&text, "tokentrace_connections_refused_total").unwrap();
    assert!(refused >= 1.0, "{text}");
    assert_eq!(
        common::metric_sample(&text, "tokentrace_connections_max"),
        Some(3.0)
    );
    assert_eq!(
        common::metric_sample(&text, "tokentrace_connections_open"),
        Some(3.0),
        "the two idle connections and this one"
    );
    drop(idle);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get("/v1/health").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "not served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` on a new connection and reads the answer to its end: the status and the
/// whole answer (head and body).
fn exchange(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn the_configured_open_span_bound_stores_the_oldest_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::sqlite_config(dir.path(), "      max_open_spans: 2\n");
    let server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let http = reqwest::blocking::Client::new();
    // Three spans started, none ended: the third start pushes the first out, unfinished.
    for s in 1..=3 {
        let r = http
            .post(format!("{}/v1/telemetry/events", server.base))
            .json(
                &json!({"event": {"type": "structured_log", "trace_id": format!("{:032x}", s),
                "span_id": format!("{:016x}", s), "timestamp": "2026-12-01T10:00:00Z",
                "attributes": {}, "payload": {"type": "span_start", "name": format!("open-{s}")}}}),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let r = http
            .post(format!("{}/v1/telemetry/spans", server.base))
            .json(&json!({"attribute_filters": []}))
            .send()
            .unwrap();
        let text = r.text().unwrap();
        if text.contains("open-1") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(stored.contains("open-1"), "the oldest stored: {stored}");
    assert!(
        !stored.contains("open-2") && !stored.contains("open-3"),
        "{stored}"
    );
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(
        common::metric_sample(&metrics, "tokentrace_spans_unfinished_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn the_open_file_limit_is_raised_and_a_low_hard_limit_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let under = |limits: &str| {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("{limits} && exec \"$0\" serve --port 0"),
            env!("CARGO_BIN_EXE_tokentrace"),
        ]);
        common::start_command(cmd, dir.path(), &[("TELEMETRY_SINKS", "sqlite")])
    };
    // A soft limit of 256 under a higher hard one: raised.
    let server = under("ulimit -Sn 256");
    assert!(
        server
            .started
            .iter()
            .any(|l| l.contains("open-file limit raised from 256")),
        "{:?}",
        server.started
    );
    drop(server);
    // A hard limit of 512: below the 1,024 connections of the default, said at start.
    let server = under("ulimit -n 512");
    assert!(
        server.started.iter().any(|l| l.contains(
            "the open-file limit (512) is below server.max_connections (1024)"
        )),
        "{:?}",
        server.started
    );
    let health = reqwest::blocking::get(format!("{}/v1/health", server.base)).unwrap();
    assert_eq!(health.status(), 200, "it serves all the same");
}
