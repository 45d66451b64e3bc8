//! Gateway overhead: the same non-streaming chat requests sent straight to a fast fake upstream
//! and through tokentrace to that upstream: with no sinks (only the in-memory Prometheus
//! registry), with the sqlite sink, with the OTLP sinks exporting to a receiver on 127.0.0.1,
//! with the OTLP sinks pointed at a collector that is down, and with redaction on. Reports added
//! latency (p50, p99) and throughput at concurrency 1 and 32, and checks that every request's
//! trace is in SQLite after shutdown.
//!
//! Run: `cargo bench -p tokentrace --bench gateway` (options: `-- --seconds 5 --rounds 3
//! --slice-ms 1000`, and `--only none,sqlite,otel,down` to run some of the configurations). In
//! each round all configurations run side by side and take turns with the direct path in slices
//! of `--slice-ms` at concurrency 1 (`--seconds` in all per path), then each is loaded at
//! concurrency 32 for `--seconds`. The summary gives the median over the rounds and the
//! percentiles of all rounds' concurrency-1 latencies pooled.
//!
//! Over 500 lines: the bench, its fake upstream and its OTLP receiver (the helper roles this
//! binary plays in child processes) belong together.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpStream;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
const REQUEST: &str = r#"{"model":"llama","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hello!"}],"max_tokens":64,"temperature":0.7}"#;

mod common;

use common::{Error, free_port, spawn_helper, terminate, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Seconds per path and round at concurrency 1 (and of the concurrency-32 load).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of one concurrency-1 slice, in ms.
    #[arg(long, default_value_t = 1000)]
    slice_ms: u64,
    /// Run only these configurations (comma-separated keys: none, sqlite, otel, down, ...).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Helper role: serve as the fake upstream on this port.
    #[arg(long, hide = true)]
    upstream: Option<u16>,
    /// Helper role: serve as the OTLP receiver on this port.
    #[arg(long, hide = true)]
    receiver: Option<u16>,
}

fn main() -> Result<(), Error> {
    let args: Args = common::args();
    if let Some(port) = args.upstream {
        return upstream(port);
    }
    if let Some(port) = args.receiver {
        return receiver(port);
    }
    let (seconds, rounds, only) = (args.seconds, args.rounds, args.only);
    let slice = Duration::from_millis(args.slice_ms);

    let up_port = free_port()?;
    let mut up = spawn_helper(&["--upstream", &up_port.to_string()], up_port)?;
    let rx_port = free_port()?;
    let mut receiver = spawn_helper(&["--receiver", &rx_port.to_string()], rx_port)?;
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
        redact: false,
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
        Setup {
            redact: true,
            ..with("sqlite-redact", "sqlite, redaction on", "sqlite", None, 10)
        },
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
        "non-streaming chat completions, {seconds} s per path and concurrency in slices of {} ms, \
         {rounds} rounds; latencies in microseconds",
        slice.as_millis()
    );
    let mut results: Vec<Vec<Outcome>> = vec![Vec::new(); configs.len()];
    // Every concurrency-1 latency of every round, the direct path first.
    let mut pooled: Vec<Load> = (0..=configs.len()).map(|_| Load::default()).collect();
    for round in 1..=rounds {
        println!("\nround {round}");
        let (outcomes, loads) = measure_round(&rt, &configs, up_port, seconds, slice)?;
        for (all, o) in results.iter_mut().zip(outcomes) {
            all.push(o);
        }
        for (all, l) in pooled.iter_mut().zip(loads) {
            all.add(l);
        }
    }
    pooled.iter_mut().for_each(Load::sort);
    println!(
        "\nover {rounds} rounds: medians of the rounds' figures, and percentiles of all the rounds' \
         concurrency-1 latencies pooled; ratio: that added p99 over the `sqlite` row's"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>7} {:>11} {:>11} {:>7} {:>9} {:>6}",
        "path",
        "med +p50",
        "med +p99",
        "ratio",
        "pooled +p50",
        "pooled +p99",
        "ratio",
        "c32 req/s",
        "lost"
    );
    let sqlite = configs.iter().position(|c| c.key == "sqlite");
    let direct = &pooled[0];
    let pooled_p99 = |i: usize| pooled[i + 1].pct(0.99) as i64 - direct.pct(0.99) as i64;
    for (i, (Setup { label, .. }, outcomes)) in configs.iter().zip(&results).enumerate() {
        let med_p99 = |o: &[Outcome]| median(o.iter().map(|o| o.added_p99).collect());
        let other = |r: Option<f64>| {
            r.filter(|_| Some(i) != sqlite)
                .map_or(String::new(), |r| format!("{r:.2}"))
        };
        println!(
            "{label:<34} {:>9} {:>9} {:>7} {:>11} {:>11} {:>7} {:>9} {:>6}",
            median(outcomes.iter().map(|o| o.added_p50).collect()),
            med_p99(outcomes),
            other(sqlite.map(|s| med_p99(outcomes) as f64 / med_p99(&results[s]).max(1) as f64)),
            pooled[i + 1].pct(0.50) as i64 - direct.pct(0.50) as i64,
            pooled_p99(i),
            other(sqlite.map(|s| pooled_p99(i) as f64 / pooled_p99(s).max(1) as f64)),
            median(outcomes.iter().map(|o| o.rate32 as i64).collect()),
            outcomes.iter().map(|o| o.lost).sum::<i64>()
        );
    }
    up.kill()?;
    up.wait()?;
    receiver.kill()?;
    receiver.wait()?;
    Ok(())
}

/// The middle value, or the mean of the two middle values of an even count.
fn median(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// One configuration of tokentrace to measure.
struct Setup {
    /// Its name for `--only`.
    key: &'static str,
    label: &'static str,
    sinks: &'static str,
    otlp_endpoint: String,
    thread_nice: i32,
    /// `telemetry.redaction.mode: redact`.
    redact: bool,
}

/// What one configuration measured in one round.
#[derive(Clone)]
struct Outcome {
    added_p50: i64,
    added_p99: i64,
    rate32: f64,
    lost: i64,
}

/// A running `tokentrace serve` and its data directory.
struct Server {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// Starts `tokentrace serve` configured as `setup` says, in a new data directory.
fn start(setup: &Setup, up_port: u16) -> Result<Server, Error> {
    let Setup {
        sinks,
        otlp_endpoint,
        thread_nice,
        redact,
        ..
    } = setup;
    let redaction = if *redact {
        "      redaction:\n        mode: redact\n"
    } else {
        ""
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: {sinks}\n      thread_nice: {thread_nice}\n      otel_exporter_otlp_endpoint: {otlp_endpoint}\n      sqlite_db_path: {}/trace_store.db\n{redaction}  inference:\n  - provider_id: fake\n    provider_type: remote::openai-compatible\n    config:\n      url: http://127.0.0.1:{up_port}/v1\nmodels:\n- model_id: llama\n  provider_id: fake\n",
            dir.path().display()
        ),
    )?;
    let port = free_port()?;
    let child = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args([
            "serve",
            "--config",
            config.to_str().ok_or("path")?,
            "--port",
            &port.to_string(),
        ])
        .env("TOKENTRACE_LOG", "error")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    Ok(Server { child, port, dir })
}

/// One round: every configuration runs at once, and the direct path and the configurations take
/// turns in short slices at concurrency 1, in a new random order each time, so that a slow moment
/// of the machine falls on all of them alike; then each is loaded at concurrency 32 for `seconds`
/// in one piece. After each slice the bench waits until the slice's work is done (see [`settle`]),
/// so that no configuration's background work lands in another's slice. Then every tokentrace is
/// stopped with SIGTERM and the request traces in SQLite are counted.
fn measure_round(
    rt: &tokio::runtime::Runtime,
    configs: &[Setup],
    up_port: u16,
    seconds: u64,
    slice: Duration,
) -> Result<(Vec<Outcome>, Vec<Load>), Error> {
    let servers = configs
        .iter()
        .map(|s| start(s, up_port))
        .collect::<Result<Vec<_>, _>>()?;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let ports: Vec<u16> = std::iter::once(up_port)
        .chain(servers.iter().map(|s| s.port))
        .collect();
    let slices = (seconds as u128 * 1000 / slice.as_millis().max(1)).max(1) as usize;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut by_conc = Vec::new();
    // Throughput is measured in one piece per path: in short slices the pipeline queue would
    // absorb what the SQLite writer cannot keep up with, and the rate would not be sustained.
    for (conc, slices, slice) in [(1, slices, slice), (32, 1, Duration::from_secs(seconds))] {
        let mut loads: Vec<Load> = ports.iter().map(|_| Load::default()).collect();
        let mut order: Vec<usize> = (0..ports.len()).collect();
        for _ in 0..slices {
            // A new order every time, so that no path always follows the same one.
            shuffle(&mut order, &mut seed);
            for &t in &order {
                let l = rt.block_on(load(ports[t], conc, slice))?;
                loads[t].add(l);
                settle(&pids)?;
            }
        }
        loads.iter_mut().for_each(Load::sort);
        by_conc.push(loads);
    }
    println!(
        "{:<6} {:<34} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "conc", "path", "req/s", "p50", "p99", "+p50", "+p99"
    );
    for (conc, loads) in [1, 32].iter().zip(&by_conc) {
        let d = &loads[0];
        let label = std::iter::once("direct to upstream").chain(configs.iter().map(|c| c.label));
        for (i, (label, r)) in label.zip(loads).enumerate() {
            let added = |a: u64, b: u64| {
                if i == 0 {
                    String::new()
                } else {
                    format!("{:+}", a as i64 - b as i64)
                }
            };
            println!(
                "{conc:<6} {label:<34} {:>10.0} {:>8} {:>8} {:>10} {:>10}",
                r.rate(),
                r.pct(0.50),
                r.pct(0.99),
                added(r.pct(0.50), d.pct(0.50)),
                added(r.pct(0.99), d.pct(0.99)),
            );
        }
    }
    let mut outcomes = Vec::new();
    for (i, (setup, mut server)) in configs.iter().zip(servers).enumerate() {
        let (c1, c32) = (&by_conc[0][i + 1], &by_conc[1][i + 1]);
        let sent = (c1.latencies.len() + c32.latencies.len()) as u64;
        let pid = server.child.id();
        let written = std::fs::read_to_string(format!("/proc/{pid}/io"))
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
            "{}: per request {} bytes written; CPU µs by thread: {}",
            setup.key,
            written / sent.max(1),
            thread_cpu(pid)
                .iter()
                .map(|(name, t)| format!("{name} {:.0}", per_request(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        terminate(&mut server.child)?;
        let mut lost = 0;
        if setup.sinks.contains("sqlite") {
            let conn = rusqlite::Connection::open(server.dir.path().join("trace_store.db"))?;
            let traces: i64 = conn.query_row(
                "SELECT count(DISTINCT trace_id) FROM spans WHERE name = 'POST /v1/chat/completions'",
                [],
                |r| r.get(0),
            )?;
            lost = sent as i64 - traces;
            println!("    requests: {sent}, traces in SQLite: {traces}, lost: {lost}");
        }
        let d1 = &by_conc[0][0];
        outcomes.push(Outcome {
            added_p50: c1.pct(0.50) as i64 - d1.pct(0.50) as i64,
            added_p99: c1.pct(0.99) as i64 - d1.pct(0.99) as i64,
            rate32: c32.rate(),
            lost,
        });
    }
    let mut by_conc = by_conc.into_iter();
    Ok((outcomes, by_conc.next().unwrap_or_default()))
}

/// Waits until what a slice left behind is done: the dirty pages it wrote are on disk (`sync`;
/// otherwise their writeback, and fsyncs in flight that use no CPU, would slow whichever path
/// comes next), and the processes use no more CPU (at most one clock tick in 50 ms, for at most
/// 5 s).
fn settle(pids: &[u32]) -> Result<(), Error> {
    Command::new("sync").status()?;
    let total = || -> u64 {
        pids.iter()
            .flat_map(|&p| thread_cpu(p))
            .map(|(_, t)| t)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut before = total();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = total();
        if now <= before + 1 {
            break;
        }
        before = now;
    }
    Ok(())
}

/// Fisher–Yates with xorshift64: enough to vary the order, no dependency.
fn shuffle(v: &mut [usize], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

/// Latencies (µs) of completed requests and the time spent sending them.
#[derive(Default)]
struct Load {
    latencies: Vec<u64>,
    elapsed: Duration,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
    }

    fn sort(&mut self) {
        self.latencies.sort_unstable();
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Percentile `p` (0–1) of sorted latencies.
    fn pct(&self, p: f64) -> u64 {
        let all = &self.latencies;
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }
}

async fn load(port: u16, connections: usize, duration: Duration) -> Result<Load, Error> {
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
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Load {
        latencies,
        elapsed: started.elapsed(),
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
