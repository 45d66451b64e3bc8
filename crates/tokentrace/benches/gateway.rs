//! Gateway overhead: the same non-streaming chat requests sent straight to a fast fake upstream
//! and through tokentrace (sqlite sink on) to that upstream, in one run. Reports added latency
//! (p50, p99) and throughput at concurrency 1 and 32, and checks that every request's trace is in
//! SQLite after shutdown.
//!
//! Run: `cargo bench -p tokentrace --bench gateway` (options: `-- --seconds 5`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
const REQUEST: &str = r#"{"model":"llama","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hello!"}],"max_tokens":64,"temperature":0.7}"#;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--upstream") {
        let port: u16 = args.get(i + 1).ok_or("port")?.parse()?;
        return upstream(port);
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64);

    let up_port = free_port()?;
    let mut up = Command::new(std::env::current_exe()?)
        .args(["--upstream", &up_port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    wait_listening(up_port)?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: fake\n    provider_type: remote::openai-compatible\n    config:\n      url: http://127.0.0.1:{up_port}/v1\nmodels:\n- model_id: llama\n  provider_id: fake\n",
            dir.path().display()
        ),
    )?;
    let tt_port = free_port()?;
    let mut tt = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args([
            "serve",
            "--config",
            config.to_str().ok_or("path")?,
            "--port",
            &tt_port.to_string(),
        ])
        .env("TOKENTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(tt_port)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!("non-streaming chat completions, {seconds} s per run; latencies in microseconds");
    println!(
        "{:<6} {:<22} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "conc", "path", "req/s", "p50", "p99", "+p50", "+p99"
    );
    let mut through_total = 0u64;
    for conc in [1usize, 32] {
        let direct = rt.block_on(load(up_port, conc, seconds))?;
        let through = rt.block_on(load(tt_port, conc, seconds))?;
        through_total += through.count;
        println!(
            "{conc:<6} {:<22} {:>10.0} {:>8} {:>8}",
            "direct to upstream", direct.rate, direct.p50, direct.p99
        );
        println!(
            "{conc:<6} {:<22} {:>10.0} {:>8} {:>8} {:>10} {:>10}",
            "through tokentrace",
            through.rate,
            through.p50,
            through.p99,
            through.p50 as i64 - direct.p50 as i64,
            through.p99 as i64 - direct.p99 as i64
        );
    }
    Command::new("kill")
        .args(["-TERM", &tt.id().to_string()])
        .status()?;
    tt.wait()?;
    up.kill()?;
    up.wait()?;
    let conn = rusqlite::Connection::open(dir.path().join("trace_store.db"))?;
    let traces: i64 = conn.query_row(
        "SELECT count(DISTINCT trace_id) FROM spans WHERE name = 'POST /v1/chat/completions'",
        [],
        |r| r.get(0),
    )?;
    let lost = through_total as i64 - traces;
    println!(
        "requests through tokentrace: {through_total}, traces in SQLite: {traces}, lost: {lost}"
    );
    Ok(())
}

struct Load {
    rate: f64,
    p50: u64,
    p99: u64,
    count: u64,
}

async fn load(port: u16, connections: usize, seconds: u64) -> Result<Load, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..connections {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::post("/v1/chat/completions")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))?;
                let t = Instant::now();
                sender.ready().await?;
                let res = sender.send_request(req).await?;
                let status = res.status();
                res.into_body().collect().await?;
                if status != 200 {
                    return Err(format!("status {status}").into());
                }
                latencies.push(t.elapsed().as_micros() as u64);
            }
            Ok::<Vec<u64>, Error>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Load {
        rate: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        count: all.len() as u64,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listening on {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A fast fake OpenAI-compatible upstream: one fixed answer with usage.
fn upstream(port: u16) -> Result<(), Error> {
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let answer = || async { ([("content-type", "application/json")], ANSWER) };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/chat/completions", post(answer));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await
    })?;
    Ok(())
}
