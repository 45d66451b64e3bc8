//! Single-event HTTP ingest: `POST /v1/telemetry/events`, one event per request as the SDKs send
//! them, against the real `tokentrace` binary (sinks: sqlite) and, in the same run, against a
//! baseline server that only parses the JSON body and answers `null` (the floor any HTTP+JSON
//! server pays on this machine). Reports events/s, the ratio, and the server's own CPU use.
//!
//! Run: `cargo bench -p tokentrace --bench http_ingest` (options: `-- --seconds 5 --connections 32`).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;

mod common;

use common::{Error, free_port, spawn_helper, terminate, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Seconds of load per server and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Rounds.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// Helper role: serve as the baseline server on this port.
    #[arg(long, hide = true)]
    baseline_server: Option<u16>,
}

fn main() -> Result<(), Error> {
    let args: Args = common::args();
    if let Some(port) = args.baseline_server {
        return baseline_server(port);
    }
    let (seconds, connections, rounds) = (args.seconds, args.connections, args.rounds);

    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "single-event HTTP ingest, {connections} keep-alive connections, {seconds} s per run, {rounds} rounds"
    );
    println!(
        "{:<28} {:>12} {:>14} {:>10}",
        "server", "events/s", "server CPU", "ratio"
    );
    for round in 0..rounds {
        let base_port = free_port()?;
        let mut baseline = spawn_helper(&["--baseline-server", &base_port.to_string()], base_port)?;
        let base = rt.block_on(load(&baseline, base_port, connections, seconds))?;
        baseline.kill()?;
        baseline.wait()?;

        let port = free_port()?;
        let store_dir = dir.path().join(format!("round{round}"));
        let mut server = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
            .args(["serve", "--port", &port.to_string()])
            .env("TELEMETRY_SINKS", "sqlite")
            .env("SQLITE_STORE_DIR", &store_dir)
            .env("TOKENTRACE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_listening(port)?;
        let tt = rt.block_on(load(&server, port, connections, seconds))?;
        terminate(&mut server)?;
        let stored = count_rows(&store_dir.join("trace_store.db"))?;

        println!(
            "{:<28} {:>12.0} {:>13.2}c {:>10}",
            "baseline (parse JSON only)", base.rate, base.server_cores, "1.00"
        );
        println!(
            "{:<28} {:>12.0} {:>13.2}c {:>10.2}",
            "tokentrace (sqlite sink)",
            tt.rate,
            tt.server_cores,
            tt.rate / base.rate
        );
        println!(
            "  acknowledged {} events, {} in SQLite after shutdown, {} refused with 503",
            tt.ok, stored, tt.refused
        );
    }
    Ok(())
}

struct LoadResult {
    rate: f64,
    ok: u64,
    refused: u64,
    server_cores: f64,
}

async fn load(
    server: &Child,
    port: u16,
    connections: usize,
    seconds: u64,
) -> Result<LoadResult, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (stop, ok, refused) = (stop.clone(), ok.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!(
                    r#"{{"event":{{"type":"unstructured_log","trace_id":"4bf92f3577b34da6a3ce929d0e0e{c:04x}","span_id":"{i:016x}","timestamp":"2026-11-24T10:00:00.123456Z","attributes":{{"model_id":"llama","n":{i}}},"severity":"info","message":"request {i} on connection {c}"}},"ttl_seconds":604800}}"#
                );
                let req = hyper::Request::post("/v1/telemetry/events")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                sender.ready().await?;
                let res = sender.send_request(req).await?;
                let status = res.status().as_u16();
                res.into_body().collect().await?;
                match status {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    503 => refused.fetch_add(1, Ordering::Relaxed),
                    s => return Err(format!("unexpected status {s}").into()),
                };
            }
            Ok::<(), Error>(())
        }));
    }
    // Warm up, then measure a window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok0, cpu0, t0) = (
        ok.load(Ordering::Relaxed),
        cpu_seconds(server.id())?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (ok1, cpu1, elapsed) = (
        ok.load(Ordering::Relaxed),
        cpu_seconds(server.id())?,
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?.map_err(|e| e.to_string())?;
    }
    Ok(LoadResult {
        rate: (ok1 - ok0) as f64 / elapsed.as_secs_f64(),
        ok: ok.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        server_cores: (cpu1 - cpu0) / elapsed.as_secs_f64(),
    })
}

/// User + system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().ok_or("stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).ok_or("utime")?.parse()?;
    let stime: f64 = fields.get(12).ok_or("stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

fn count_rows(db: &std::path::Path) -> Result<i64, Error> {
    let conn = rusqlite::Connection::open(db)?;
    Ok(conn.query_row("SELECT count(*) FROM span_events", [], |r| r.get(0))?)
}

/// The baseline: an axum server on the same runtime settings that parses the body and answers null.
fn baseline_server(port: u16) -> Result<(), Error> {
    use axum::routing::post;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/v1/telemetry/events",
            post(|body: Bytes| async move {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(_) => (hyper::StatusCode::OK, "null"),
                    Err(_) => (hyper::StatusCode::BAD_REQUEST, "{}"),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await
    })?;
    Ok(())
}
