//! Gateway overhead: the same non-streaming chat requests sent straight to a fast fake upstream
//! and through tokentrace to that upstream, in one run: with no sinks (only the in-memory
//! Prometheus registry), with the sqlite sink, with the OTLP sinks
//! exporting to a receiver on 127.0.0.1, and with the OTLP sinks pointed at a collector that is
//! down. Reports added latency (p50, p99) and throughput at concurrency 1 and 32, and checks that
//! every request's trace is in SQLite after shutdown.
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
    if let Some(i) = args.iter().position(|a| a == "--receiver") {
        let port: u16 = args.get(i + 1).ok_or("port")?.parse()?;
        return receiver(port);
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
    let rx_port = free_port()?;
    let mut receiver = Command::new(std::env::current_exe()?)
        .args(["--receiver", &rx_port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    wait_listening(rx_port)?;
    let down_port = free_port()?; // nothing listens there: a collector that is down

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!("non-streaming chat completions, {seconds} s per run; latencies in microseconds");
    println!(
        "{:<6} {:<34} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "conc", "path", "req/s", "p50", "p99", "+p50", "+p99"
    );
    let direct1 = rt.block_on(load(up_port, 1, seconds))?;
    let direct32 = rt.block_on(load(up_port, 32, seconds))?;
    println!(
        "{:<6} {:<34} {:>10.0} {:>8} {:>8}",
        1, "direct to upstream", direct1.rate, direct1.p50, direct1.p99
    );
    println!(
        "{:<6} {:<34} {:>10.0} {:>8} {:>8}",
        32, "direct to upstream", direct32.rate, direct32.p50, direct32.p99
    );
    let runs = [
        ("through tokentrace: no sinks", "\"\"", None),
        ("through tokentrace: sqlite", "sqlite", None),
        (
            "... + otel_trace,otel_metric",
            "sqlite,otel_trace,otel_metric",
            Some(rx_port),
        ),
        (
            "... + otel, collector down",
            "sqlite,otel_trace,otel_metric",
            Some(down_port),
        ),
    ];
    for (label, sinks, otlp) in runs {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("run.yaml");
        std::fs::write(
            &config,
            format!(
                "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: {sinks}\n      otel_exporter_otlp_endpoint: {}\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: fake\n    provider_type: remote::openai-compatible\n    config:\n      url: http://127.0.0.1:{up_port}/v1\nmodels:\n- model_id: llama\n  provider_id: fake\n",
                otlp.map_or(String::new(), |p| format!("http://127.0.0.1:{p}")),
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
            .env("TOKENTRACE_LOG", "error")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_listening(tt_port)?;
        let c1 = rt.block_on(load(tt_port, 1, seconds))?;
        let c32 = rt.block_on(load(tt_port, 32, seconds))?;
        for (conc, r, d) in [(1, &c1, &direct1), (32, &c32, &direct32)] {
            println!(
                "{conc:<6} {label:<34} {:>10.0} {:>8} {:>8} {:>10} {:>10}",
                r.rate,
                r.p50,
                r.p99,
                r.p50 as i64 - d.p50 as i64,
                r.p99 as i64 - d.p99 as i64
            );
        }
        Command::new("kill")
            .args(["-TERM", &tt.id().to_string()])
            .status()?;
        tt.wait()?;
        if !sinks.contains("sqlite") {
            continue;
        }
        let conn = rusqlite::Connection::open(dir.path().join("trace_store.db"))?;
        let traces: i64 = conn.query_row(
            "SELECT count(DISTINCT trace_id) FROM spans WHERE name = 'POST /v1/chat/completions'",
            [],
            |r| r.get(0),
        )?;
        let sent = c1.count + c32.count;
        println!(
            "       requests: {sent}, traces in SQLite: {traces}, lost: {}",
            sent as i64 - traces
        );
    }
    up.kill()?;
    up.wait()?;
    receiver.kill()?;
    receiver.wait()?;
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

/// An OTLP/HTTP receiver that accepts everything (the collector of the "otel on" run).
fn receiver(port: u16) -> Result<(), Error> {
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ok = |_: Bytes| async { "" };
        let app = axum::Router::new()
            .route("/v1/traces", post(ok))
            .route("/v1/metrics", post(ok));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await
    })?;
    Ok(())
}
