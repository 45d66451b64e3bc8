//! Overload on every ingest path at once: OTLP senders (512-span requests), events-API senders
//! (span start and end) and gateway clients (echo chats) send as fast as `tokentrace serve`
//! (sink sqlite) answers, retrying 10 ms after a 503, for `--seconds`. Every 10 s: the server's
//! RSS and what was accepted and refused so far. Meanwhile, once a second, the time from an
//! OTLP request's 200 to its trace being readable (`get_trace`): the commit lag. At the end the
//! server is killed with SIGKILL at once, the file is opened, and the acknowledged traces that
//! are not in it are counted, with the age of the oldest of them at the kill.
//!
//! Run: `cargo bench -p tokentrace --bench overload` (ten minutes; `-- --seconds 60` for a
//! shorter run, `--ack committed` for `telemetry.ack: committed`, `--queue-max-bytes N` for a
//! smaller pipeline queue, `--thread-nice N` for the telemetry threads' priority).

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::any_value;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

use common::{Error, free_port, kv, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Seconds of overload.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// OTLP senders.
    #[arg(long, default_value_t = 4)]
    otlp_senders: usize,
    /// Events-API senders.
    #[arg(long, default_value_t = 4)]
    event_senders: usize,
    /// Gateway clients.
    #[arg(long, default_value_t = 2)]
    gateway_clients: usize,
    /// `telemetry.ack`: accepted or committed.
    #[arg(long, default_value = "accepted")]
    ack: String,
    /// `telemetry.queue_max_bytes` (default: the config's default).
    #[arg(long)]
    queue_max_bytes: Option<u64>,
    /// `telemetry.thread_nice` (default: the config's default).
    #[arg(long)]
    thread_nice: Option<u8>,
}

const SPANS: usize = 512;

/// What one path acknowledged: trace ids with the time of their 200, and counts.
#[derive(Default)]
struct Path {
    acked: Mutex<Vec<(Instant, String)>>,
    items: AtomicU64,
    refused: AtomicU64,
}

impl Path {
    fn ack(&self, trace: String, items: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        if let Ok(mut a) = self.acked.lock() {
            a.push((Instant::now(), trace));
        }
    }
}

fn otlp_request(trace: &[u8; 16], sender: usize, n: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let spans = (0..SPANS)
        .map(|i| Span {
            trace_id: trace.to_vec(),
            span_id: ((sender as u64) << 48 | (n << 12) | i as u64 | 1)
                .to_be_bytes()
                .to_vec(),
            name: "chat llama-3.1-8b".into(),
            kind: 3,
            start_time_unix_nano: now,
            end_time_unix_nano: now + 250_000_000,
            attributes: vec![
                kv(
                    "gen_ai.operation.name",
                    any_value::Value::StringValue("chat".into()),
                ),
                kv(
                    "gen_ai.request.model",
                    any_value::Value::StringValue("llama-3.1-8b".into()),
                ),
                kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(42)),
                kv(
                    "gen_ai.usage.output_tokens",
                    any_value::Value::IntValue(128),
                ),
                kv(
                    "user.id",
                    any_value::Value::StringValue(format!("u-{}", n % 97)),
                ),
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn trace_id(kind: u8, sender: usize, n: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[0] = 0x0f;
    t[1] = kind;
    t[2..4].copy_from_slice(&(sender as u16).to_be_bytes());
    t[8..].copy_from_slice(&(n + 1).to_be_bytes());
    t
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    common::status_kib(pid, field) as f64 / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> Result<(), Error> {
    let args: Args = common::args();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("trace_store.db");
    let port = free_port()?;
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}\n      ack: {}\n{}",
            db.display(),
            args.ack,
            args.queue_max_bytes
                .map(|b| format!("      queue_max_bytes: {b}\n"))
                .into_iter()
                .chain(
                    args.thread_nice
                        .map(|n| format!("      thread_nice: {n}\n"))
                )
                .collect::<String>()
        ),
    )?;
    let mut server = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--port", &port.to_string(), "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    let pid = server.id();
    let base = Arc::new(format!("http://127.0.0.1:{port}"));
    let stop = Arc::new(AtomicBool::new(false));
    let (otlp, events, gateway) = (
        Arc::new(Path::default()),
        Arc::new(Path::default()),
        Arc::new(Path::default()),
    );
    println!(
        "overload for {} s: {} OTLP senders ({SPANS}-span requests), {} events-API senders, {} gateway clients; ack: {}",
        args.seconds, args.otlp_senders, args.event_senders, args.gateway_clients, args.ack
    );
    let mut workers = Vec::new();
    for s in 0..args.otlp_senders {
        let (base, stop, path) = (base.clone(), stop.clone(), otlp.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = trace_id(1, s, n);
                let body = otlp_request(&t, s, n);
                loop {
                    let Ok(r) = http
                        .post(format!("{base}/v1/traces"))
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                    else {
                        return;
                    };
                    if r.status() == 200 {
                        path.ack(hex(&t), SPANS as u64);
                        break;
                    }
                    path.refused.fetch_add(SPANS as u64, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                n += 1;
            }
        }));
    }
    for s in 0..args.event_senders {
        let (base, stop, path) = (base.clone(), stop.clone(), events.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = hex(&trace_id(2, s, n));
                let span = format!("{:016x}", n + 1);
                let mut ok = true;
                for payload in [
                    serde_json::json!({"type": "span_start", "name": "agent step"}),
                    serde_json::json!({"type": "span_end", "status": "ok"}),
                ] {
                    let body = serde_json::json!({"event": {"type": "structured_log",
                        "trace_id": t, "span_id": span, "timestamp": "2026-12-01T12:00:00Z",
                        "attributes": {"session.id": format!("s-{}", n % 31)}, "payload": payload}});
                    loop {
                        let Ok(r) = http
                            .post(format!("{base}/v1/telemetry/events"))
                            .json(&body)
                            .send()
                        else {
                            return;
                        };
                        if r.status() == 200 {
                            break;
                        }
                        path.refused.fetch_add(1, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            ok = false;
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if ok {
                    path.ack(t, 1);
                }
                n += 1;
            }
        }));
    }
    for _ in 0..args.gateway_clients {
        let (base, stop, path) = (base.clone(), stop.clone(), gateway.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let body = serde_json::json!({"model": "echo", "max_tokens": 8,
                "messages": [{"role": "user", "content": "tell me about overload"}]});
            while !stop.load(Ordering::Relaxed) {
                let Ok(r) = http
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&body)
                    .send()
                else {
                    return;
                };
                let trace = r
                    .headers()
                    .get("x-trace-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if r.status() == 200
                    && r.bytes().is_ok()
                    && let Some(t) = trace
                {
                    path.ack(t, 2);
                } else {
                    path.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The commit lag: an acknowledged OTLP trace, polled until get_trace finds it.
    let lags = Arc::new(Mutex::new(Vec::new()));
    {
        let (base, stop, otlp, lags) = (base.clone(), stop.clone(), otlp.clone(), lags.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut measured = String::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let last = otlp.acked.lock().ok().and_then(|a| a.last().cloned());
                // Each request once: while none is acknowledged, the last one's age is no lag.
                let Some((at, trace)) = last.filter(|(_, t)| *t != measured) else {
                    continue;
                };
                measured.clone_from(&trace);
                while at.elapsed() < Duration::from_secs(120) && !stop.load(Ordering::Relaxed) {
                    let sent = at.elapsed();
                    let found = http
                        .get(format!("{base}/v1/telemetry/traces/{trace}"))
                        .send()
                        .is_ok_and(|r| r.status() == 200);
                    if found {
                        if let Ok(mut l) = lags.lock() {
                            l.push((at.elapsed(), at, sent));
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }));
    }
    println!(
        "{:>5} {:>9} {:>13} {:>13} {:>11} {:>11} {:>9} {:>9}",
        "s", "RSS MiB", "OTLP spans", "OTLP refused", "events", "ev refused", "chats", "refused"
    );
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let left = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(10)));
        let rss = rss_mib(pid, "VmRSS:");
        peak = peak.max(rss);
        println!(
            "{:>5} {:>9.1} {:>13} {:>13} {:>11} {:>11} {:>9} {:>9}",
            started.elapsed().as_secs(),
            rss,
            otlp.items.load(Ordering::Relaxed),
            otlp.refused.load(Ordering::Relaxed),
            events.items.load(Ordering::Relaxed),
            events.refused.load(Ordering::Relaxed),
            gateway.items.load(Ordering::Relaxed) / 2,
            gateway.refused.load(Ordering::Relaxed),
        );
    }
    // The server's own view of the same: the commit lag of sampled messages and the time of
    // each transaction, from its histograms.
    let metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    // Kill at once: what was acknowledged and is not in the file is what a crash loses.
    let hwm = rss_mib(pid, "VmHWM:");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    let killed = Instant::now();
    server.wait()?;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let conn = rusqlite::Connection::open(&db)?;
    let mut stored = HashSet::new();
    {
        let mut st = conn.prepare("SELECT trace_id FROM traces")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            stored.insert(r.get::<_, String>(0)?);
        }
    }
    let mut timed = lags.lock().map(|l| l.clone()).unwrap_or_default();
    timed.sort();
    // The longest lags, and when in the run their requests were acknowledged.
    let longest: Vec<String> = timed
        .iter()
        .rev()
        .take(5)
        .map(|(lag, at, _)| {
            format!(
                "{:.0} ms at {:.0} s",
                lag.as_secs_f64() * 1000.0,
                at.saturating_duration_since(started).as_secs_f64()
            )
        })
        .collect();
    let lags: Vec<Duration> = timed.iter().map(|(l, _, _)| *l).collect();
    // The read that found the trace was sent this long after the 200: the commit came before
    // its answer, and (give or take the 10 ms between reads) after it was sent.
    let mut sent: Vec<Duration> = timed.iter().map(|(_, _, s)| *s).collect();
    sent.sort();
    let ms = |l: &[Duration], q: f64| percentile(l, q).as_secs_f64() * 1000.0;
    println!(
        "peak RSS {peak:.1} MiB sampled, {hwm:.1} MiB VmHWM; commit lag (200 → readable) of {} OTLP requests: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; to the sending of the read that found it: p50 {:.0}, p99 {:.0}, max {:.0} ms",
        lags.len(),
        ms(&lags, 0.5),
        ms(&lags, 0.99),
        ms(&lags, 1.0),
        ms(&sent, 0.5),
        ms(&sent, 0.99),
        ms(&sent, 1.0),
    );
    println!("longest commit lags: {}", longest.join(", "));
    for (name, what) in [
        (
            "tokentrace_commit_lag_seconds",
            "commit lag of sampled messages",
        ),
        ("tokentrace_sqlite_commit_seconds", "transaction time"),
    ] {
        let (n, q) = histogram_quantiles(&metrics, name, &[0.5, 0.99, 0.999]);
        println!(
            "server: {what} ({n}): p50 ≤ {} ms, p99 ≤ {} ms, p99.9 ≤ {} ms (bucket bounds)",
            q[0], q[1], q[2]
        );
    }
    let mib = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or_else(|| "?".to_string(), |b| format!("{:.1}", b / 1048576.0))
    };
    println!(
        "server: SQLite memory {} MiB, its peak {} MiB; pipeline queue {} MiB, writer backlog {} MiB (before the kill)",
        mib("tokentrace_sqlite_memory_bytes"),
        mib("tokentrace_sqlite_memory_peak_bytes"),
        mib("tokentrace_pipeline_queue_bytes"),
        mib("tokentrace_sqlite_queue_bytes"),
    );
    for (name, path) in [("OTLP", &otlp), ("events", &events), ("gateway", &gateway)] {
        let acked = path.acked.lock().map(|a| a.clone()).unwrap_or_default();
        let missing: Vec<&(Instant, String)> =
            acked.iter().filter(|(_, t)| !stored.contains(t)).collect();
        let oldest = missing
            .iter()
            .map(|(at, _)| killed.duration_since(*at))
            .max()
            .unwrap_or_default();
        println!(
            "{name:<8} acknowledged {:>9} traces, missing after kill -9: {:>7} (oldest acknowledged {:.0} ms before the kill)",
            acked.len(),
            missing.len(),
            oldest.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// The observation count of the Prometheus histogram `name` in `text`, and for each quantile
/// the upper bound (in ms) of the first bucket that reaches it.
fn histogram_quantiles(text: &str, name: &str, quantiles: &[f64]) -> (u64, Vec<String>) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            Some((le.to_string(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    let bounds = quantiles
        .iter()
        .map(|q| {
            buckets
                .iter()
                .find(|(_, c)| total > 0.0 && *c >= q * total)
                .map_or("-".to_string(), |(le, _)| match le.parse::<f64>() {
                    Ok(s) => format!("{}", s * 1000.0),
                    Err(_) => le.clone(),
                })
        })
        .collect();
    (total as u64, bounds)
}
