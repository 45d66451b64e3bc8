//! `server.auth` on the real binary: every route family without a key, with a wrong key, with
//! a key lacking the scope and with the right one, each refusal in the family's format; the
//! official SDKs and the OTel exporter with keys; the UI's cookie; browsers' requests (foreign
//! Host, foreign Origin, text/plain JSON) refused; no secret sent in a request or held for a
//! provider reaching the store, the console or the exported OTLP bytes; and no listening on the network without auth.
//! Long: one scenario per family.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{Value, json};

use common::{require_python, run_python, start};

const APP_KEY: &str = "app-key-canary-0123456789";
const READ_KEY: &str = "read-key-canary-0123456789";
const ADMIN_KEY: &str = "admin-key-canary-0123456789";
const UPSTREAM_KEY: &str = "sk-upstream-canary-0123456789";

fn config(dir: &Path, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("run.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  auth:\n    provider_type: api_key\n    config:\n      keys:\n      - name: app\n        key: ${{env.APP_KEY}}\n        scopes: [inference, telemetry.write]\n      - name: reader\n        key: sha256:{}\n        scopes: [telemetry.read]\n      - name: ops\n        key: {ADMIN_KEY}\n        scopes: [admin]\nproviders:\n  inference:\n  - provider_id: echo\n    provider_type: inline::echo\n  - provider_id: up\n    provider_type: remote::openai\n    config:\n      url: {upstream}\n      api_key: ${{env.UPSTREAM_KEY}}\nmodels:\n- model_id: echo\n  provider_id: echo\n- model_id: up-model\n  provider_id: up\n",
            hex(&sha256(READ_KEY)),
        ),
    )
    .unwrap();
    path
}

fn sha256(s: &str) -> [u8; 32] {
    tokentrace_config::key_digest(s)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OpenAI-compatible upstream that answers every request with one chat completion and
/// records the Authorization it was sent.
fn upstream() -> (String, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut auth = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("authorization:") {
                    auth = line[14..].trim().to_string();
                }
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            // A request that asks for it gets OpenAI's answer to a wrong key, which echoes it.
            let refuse = String::from_utf8_lossy(&body).contains("refuse me");
            let (status, answer) = if refuse {
                let key = auth.trim_start_matches("Bearer ");
                (
                    "401 Unauthorized",
                    format!(
                        r#"{{"error":{{"message":"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
                    ),
                )
            } else {
                ("200 OK", r#"{"id":"c1","object":"chat.completion","created":1,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#.to_string())
            };
            let _ = tx.send(auth);
            let mut s = stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, rx)
}

/// An OTLP/HTTP receiver that keeps every byte it is sent and answers 200.
fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut len = 0;
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        head.extend_from_slice(line.as_bytes());
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut all = keep.lock().unwrap();
                    all.extend_from_slice(&head);
                    all.extend_from_slice(&body);
                    drop(all);
                    let mut s = &stream;
                    if write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

#[test]
fn keys_and_scopes_guard_every_route_family_and_no_secret_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (up, seen) = upstream();
    let (otlp, exported) = collector();
    let cfg = config(dir.path(), &up);
    let server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[
            ("APP_KEY", APP_KEY),
            ("UPSTREAM_KEY", UPSTREAM_KEY),
            ("TELEMETRY_SINKS", "console,sqlite,otel_trace"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("SQLITE_STORE_DIR", store.to_str().unwrap()),
        ],
    );
    let base = server.base.clone();
    let http = reqwest::blocking::Client::new();
    let call = |method: &str, path: &str, key: Option<&str>, ct: &str, body: &str| {
        let mut r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", ct)
            .header("x-api-key", APP_KEY)
            .header("cookie", format!("session={APP_KEY}"))
            .body(body.to_string());
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().unwrap()
    };
    let json_ct = "application/json";
    let chat = r#"{"model":"echo","messages":[{"role":"user","content":"hi"}]}"#;
    // Telemetry API: {"detail"}; gateway: OpenAI's {"error"}; OTLP: a google.rpc.Status.
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "POST",
            "/v1/telemetry/traces",
            json_ct,
            "{}",
            "telemetry.read",
        ),
        ("GET", "/metrics", json_ct, "", "telemetry.read"),
        (
            "POST",
            "/v1/tokentrace/sql",
            json_ct,
            r#"{"sql":"SELECT 1"}"#,
            "admin",
        ),
        (
            "POST",
            "/v1/openai/v1/chat/completions",
            json_ct,
            chat,
            "inference",
        ),
        ("POST", "/v1/chat/completions", json_ct, chat, "inference"),
        (
            "POST",
            "/v1/traces",
            "application/x-protobuf",
            "",
            "telemetry.write",
        ),
    ];
    for (method, path, ct, body, scope) in cases {
        let none = call(method, path, None, ct, body);
        assert_eq!(none.status(), 401, "{path} without a key");
        assert!(
            none.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let wrong = call(method, path, Some("not-a-key-at-all"), ct, body);
        assert_eq!(wrong.status(), 401, "{path} with a wrong key");
        assert!(
            wrong.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
        let text = wrong.bytes().unwrap();
        if path.starts_with("/v1/traces") {
            let status = tokentrace_otlp::RpcStatus::decode(text.as_ref()).unwrap();
            assert_eq!(status.code, 16, "UNAUTHENTICATED");
        } else if path.contains("completions") {
            let v: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["error"]["type"], "authentication_error", "{v}");
        } else {
            let v: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["detail"], "the API key is not valid");
        }
        // A key without the scope: 403 naming it.
        let other = if *scope == "inference" || *scope == "telemetry.write" {
            READ_KEY
        } else {
            APP_KEY
        };
        let denied = call(method, path, Some(other), ct, body);
        assert_eq!(denied.status(), 403, "{path} with a key lacking {scope}");
        if !path.starts_with("/v1/traces") {
            assert!(denied.text().unwrap().contains(scope), "{path}");
        }
        // The admin key may do everything.
        let ok = call(method, path, Some(ADMIN_KEY), ct, body);
        assert!(ok.status().is_success(), "{path} as admin: {}", ok.status());
    }
    assert_eq!(call("GET", "/v1/health", None, json_ct, "").status(), 200);
    assert_eq!(
        call("GET", "/", None, json_ct, "").status(),
        200,
        "the UI's shell holds no data"
    );

    // A call through a remote provider: its key goes upstream and nowhere else.
    let up_chat = r#"{"model":"up-model","messages":[{"role":"user","content":"hi"}]}"#;
    let r = call(
        "POST",
        "/v1/chat/completions",
        Some(APP_KEY),
        json_ct,
        up_chat,
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(10)).unwrap(),
        format!("Bearer {UPSTREAM_KEY}")
    );

    // An upstream that echoes the key in its error: the key is scrubbed from the answer (and,
    // below, from the store and the console).
    let refused = r#"{"model":"up-model","messages":[{"role":"user","content":"refuse me"}]}"#;
    let r = call(
        "POST",
        "/v1/chat/completions",
        Some(APP_KEY),
        json_ct,
        refused,
    );
    assert_eq!(r.status(), 401);
    let text = r.text().unwrap();
    assert!(
        !text.contains(UPSTREAM_KEY) && text.contains("[REDACTED]"),
        "{text}"
    );
    seen.recv_timeout(Duration::from_secs(10)).unwrap();

    // Browsers: text/plain JSON, a foreign Origin, a foreign Host are refused before any work.
    let plain = call(
        "POST",
        "/v1/chat/completions",
        Some(APP_KEY),
        "text/plain",
        up_chat,
    );
    assert_eq!(plain.status(), 415);
    let origin = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(APP_KEY)
        .header("origin", "http://evil.example")
        .json(&json!({"model": "up-model", "messages": []}))
        .send()
        .unwrap();
    assert_eq!(origin.status(), 403);
    let host = http
        .get(format!("{base}/v1/health"))
        .header("host", "rebound.example")
        .send()
        .unwrap();
    assert_eq!(host.status(), 403);
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing reached the upstream"
    );

    // The UI: a key entered once becomes an HttpOnly, SameSite=Strict cookie that authenticates.
    let login = http
        .post(format!("{base}/ui/login"))
        .json(&json!({ "key": READ_KEY }))
        .send()
        .unwrap();
    assert_eq!(login.status(), 204);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let list = http
        .post(format!("{base}/v1/tokentrace/traces"))
        .header("cookie", pair)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(list.status(), 200);
    let bad = http
        .post(format!("{base}/ui/login"))
        .json(&json!({ "key": "guess-guess-guess" }))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401);

    // The CLI with and without its key.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tokentrace"))
            .args(args)
            .env_clear()
            .output()
            .unwrap()
    };
    let out = cli(&["traces", "--url", &base, "--api-key", READ_KEY, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["traces", "--url", &base]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs an API key"));

    // The official SDKs and the OTel exporter, with keys.
    require_python("openai, llama_stack_client, opentelemetry.sdk");
    let headers = format!("Authorization=Bearer {APP_KEY}");
    let endpoint = format!("{base}/v1/traces");
    run_python(
        "auth_compat.py",
        &[&base, APP_KEY, READ_KEY],
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
        ],
        "done",
    );

    // No key or secret anywhere in the store, its WAL or the console.
    let count = || -> i64 {
        let r: Value = http
            .post(format!("{base}/v1/tokentrace/sql"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"sql": "SELECT COUNT(*) FROM span_rows"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["rows"][0][0].as_i64().unwrap()
    };
    // Two calls as admin, two through the upstream and one from the SDK (2 spans each), the
    // exported span: refused requests are not traced.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < 11 {
        assert!(Instant::now() < deadline, "spans were not stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), 11, "refused requests left no trace");
    drop(http);
    let mut server = server;
    common::signal(&server.child, "-TERM");
    assert!(common::wait_exit(&mut server.child).success());
    let console: Vec<String> = server.stderr.try_iter().collect();
    let console = console.join("\n");
    assert!(
        console.contains("chat echo"),
        "the console printed the calls"
    );
    let exported = exported.lock().unwrap().clone();
    assert!(
        exported.windows(9).any(|w| w == b"chat echo"),
        "the spans were exported ({} bytes)",
        exported.len()
    );
    let mut files = vec![console.into_bytes(), exported];
    for f in std::fs::read_dir(&store).unwrap() {
        files.push(std::fs::read(f.unwrap().path()).unwrap());
    }
    for secret in [APP_KEY, READ_KEY, ADMIN_KEY, UPSTREAM_KEY] {
        for (i, bytes) in files.iter().enumerate() {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in file {i}"
            );
        }
    }
}

#[test]
fn without_auth_a_network_address_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.auth") && err.contains("server.allow_unauthenticated"),
        "{err}"
    );
    let cfg = dir.path().join("open.yaml");
    std::fs::write(&cfg, "server:\n  allow_unauthenticated: true\n").unwrap();
    let server = start(
        dir.path(),
        &["--host", "0.0.0.0", "--config", cfg.to_str().unwrap()],
        &[("TELEMETRY_SINKS", "sqlite")],
    );
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v1/health")).unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn unknown_paths_are_counted_not_stored() {
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
    let http = reqwest::blocking::Client::new();
    for i in 0..200 {
        let r = http
            .get(format!("{}/scan/{i}", server.base))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let r = http
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("tokentrace_http_unmatched_total{status_code=\"404\"} 200"),
        "{metrics}"
    );
    assert!(!metrics.contains("/scan/"), "no raw path becomes a label");
    // Only the chat call's two spans are stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
            .args(["sql", "SELECT COUNT(*) AS n FROM spans", "--json", "--db"])
            .arg(store.join("trace_store.db"))
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v[0]["n"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pages_of_listed_origins_may_call_and_others_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.yaml");
    std::fs::write(
        &cfg,
        "server:\n  cors:\n    allowed_origins: [\"https://app.example\"]\n",
    )
    .unwrap();
    let server = start(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("TELEMETRY_SINKS", "sqlite")],
    );
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/v1/telemetry/traces", server.base);
    // The preflight a browser sends before a JSON POST with a key.
    let pre = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let ok = http
        .post(&url)
        .header("origin", "https://app.example")
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    for origin in ["https://evil.example", "null"] {
        let no = http
            .post(&url)
            .header("origin", origin)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(no.status(), 403, "{origin}");
        assert!(no.headers().get("access-control-allow-origin").is_none());
    }
}
