//! Gateway overhead: the same non-streaming chat requests sent straight to a fast fake upstream
//! and through tokentrace to that upstream, in one run: with no sinks (only the in-memory
//! Prometheus registry), with the sqlite sink, with the OTLP sinks
//! exporting to a receiver on 127.0.0.1, and with the OTLP sinks pointed at a collector that is
//! down. Reports added latency (p50, p99) and throughput at concurrency 1 and 32, and checks that
//! every request's trace is in SQLite after shutdown.
//!
//! Run: `cargo bench -p tokentrace --bench gateway` (options: `-- --seconds 5 --rounds 3`, and
//! `--only none,sqlite,otel,down` to run some of the configurations). Each round measures the
//! direct path and then every configuration; the summary gives the median over the rounds.

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
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let seconds = value("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64);
    let rounds = value("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let only: Option<Vec<String>> =
        value("--only").map(|v| v.split(',').map(str::to_owned).collect());

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
    let with = |key, label, sinks, otlp_port: Option<u16>, thread_nice| Setup {
        key,
        label,
        sinks,
        otlp_endpoint: otlp_port.map_or(String::new(), |p| format!("http://127.0.0.1:{p}")),
        thread_nice,
    };
    let otel = "sqlite,otel_trace,otel_metric";
    let configs = [
        with("none", "through tokentrace: no sinks", "\"\"", None, 10),
        with("sqlite", "through tokentrace: sqlite", "sqlite", None, 10),
        with(
            "otel",
            "... + otel_trace,otel_metric",
            otel,
            Some(rx_port),
            10,
        ),
        with(
            "down",
            "... + otel, collector down",
            otel,
            Some(down_port),
            10,
        ),
        with("sqlite-nice0", "sqlite, thread_nice 0", "sqlite", None, 0),
        with(
            "otel-nice0",
            "otel on, thread_nice 0",
            otel,
            Some(rx_port),
            0,
        ),
    ];
    let configs: Vec<_> = configs
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.iter().any(|k| k == c.key)))
        .collect();
    println!(
        "non-streaming chat completions, {seconds} s per run, {rounds} rounds; latencies in microseconds"
    );
    let mut results: Vec<Vec<Outcome>> = vec![Vec::new(); configs.len()];
    for round in 1..=rounds {
        println!("\nround {round}");
        println!(
            "{:<6} {:<34} {:>10} {:>8} {:>8} {:>10} {:>10}",
            "conc", "path", "req/s", "p50", "p99", "+p50", "+p99"
        );
        let direct1 = rt.block_on(load(up_port, 1, seconds))?;
        let direct32 = rt.block_on(load(up_port, 32, seconds))?;
        for (conc, d) in [(1, &direct1), (32, &direct32)] {
            println!(
                "{conc:<6} {:<34} {:>10.0} {:>8} {:>8}",
                "direct to upstream", d.rate, d.p50, d.p99
            );
        }
        for (i, setup) in configs.iter().enumerate() {
            let outcome = through_tokentrace(&rt, setup, up_port, seconds, (&direct1, &direct32))?;
            results[i].push(outcome);
        }
    }
    println!("\nmedian over {rounds} rounds");
    println!(
        "{:<34} {:>12} {:>12} {:>14} {:>8}",
        "path", "conc 1 +p50", "conc 1 +p99", "conc 32 req/s", "lost"
    );
    for (Setup { label, .. }, outcomes) in configs.iter().zip(&results) {
        let median = |f: &dyn Fn(&Outcome) -> i64| {
            let mut v: Vec<i64> = outcomes.iter().map(f).collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        println!(
            "{label:<34} {:>12} {:>12} {:>14} {:>8}",
            median(&|o| o.added_p50),
            median(&|o| o.added_p99),
            median(&|o| o.rate32 as i64),
            outcomes.iter().map(|o| o.lost).sum::<i64>()
        );
    }
    up.kill()?;
    up.wait()?;
    receiver.kill()?;
    receiver.wait()?;
    Ok(())
}

/// One configuration of tokentrace to measure.
struct Setup {
    /// Its name for `--only`.
    key: &'static str,
    label: &'static str,
    sinks: &'static str,
    otlp_endpoint: String,
    thread_nice: i32,
}

/// What one configuration measured in one round.
#[derive(Clone)]
struct Outcome {
    added_p50: i64,
    added_p99: i64,
    rate32: f64,
    lost: i64,
}

/// Starts `tokentrace serve` configured as `setup` says, loads it at concurrency 1 and 32, prints
/// the figures, stops it with SIGTERM and counts the request traces in SQLite.
fn through_tokentrace(
    rt: &tokio::runtime::Runtime,
    setup: &Setup,
    up_port: u16,
    seconds: u64,
    (direct1, direct32): (&Load, &Load),
) -> Result<Outcome, Error> {
    let Setup {
        label,
        sinks,
        otlp_endpoint,
        thread_nice,
        ..
    } = setup;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: {sinks}\n      thread_nice: {thread_nice}\n      otel_exporter_otlp_endpoint: {otlp_endpoint}\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: fake\n    provider_type: remote::openai-compatible\n    config:\n      url: http://127.0.0.1:{up_port}/v1\nmodels:\n- model_id: llama\n  provider_id: fake\n",
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
    for (conc, r, d) in [(1, &c1, direct1), (32, &c32, direct32)] {
        println!(
            "{conc:<6} {label:<34} {:>10.0} {:>8} {:>8} {:>10} {:>10}",
            r.rate,
            r.p50,
            r.p99,
            r.p50 as i64 - d.p50 as i64,
            r.p99 as i64 - d.p99 as i64
        );
    }
    let sent = c1.count + c32.count;
    let written = std::fs::read_to_string(format!("/proc/{}/io", tt.id()))
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("wchar: ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let per_request = |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() / sent.max(1) as f64;
    println!(
        "       per request: {} bytes written; CPU µs by thread: {}",
        written / sent.max(1),
        thread_cpu(tt.id())
            .iter()
            .map(|(name, t)| format!("{name} {:.0}", per_request(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Command::new("kill")
        .args(["-TERM", &tt.id().to_string()])
        .status()?;
    tt.wait()?;
    let mut lost = 0;
    if sinks.contains("sqlite") {
        let conn = rusqlite::Connection::open(dir.path().join("trace_store.db"))?;
        let traces: i64 = conn.query_row(
            "SELECT count(DISTINCT trace_id) FROM spans WHERE name = 'POST /v1/chat/completions'",
            [],
            |r| r.get(0),
        )?;
        lost = sent as i64 - traces;
        println!("       requests: {sent}, traces in SQLite: {traces}, lost: {lost}");
    }
    Ok(Outcome {
        added_p50: c1.p50 as i64 - direct1.p50 as i64,
        added_p99: c1.p99 as i64 - direct1.p99 as i64,
        rate32: c32.rate,
        lost,
    })
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

/// CPU time (user + system, in clock ticks) of a process's threads, summed by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut by_name = std::collections::BTreeMap::<String, u64>::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: utime and stime are fields 14 and 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        *by_name.entry(name).or_default() += ticks;
    }
    by_name.into_iter().filter(|(_, t)| *t > 0).collect()
}

/// `/proc` reports CPU time in USER_HZ ticks, 100 per second on Linux.
fn ticks_per_second() -> f64 {
    100.0
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
