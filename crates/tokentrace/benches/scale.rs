//! The store at scale: builds a store through the real OTLP ingest path of `tokentrace serve`
//! (sink sqlite) from this second process, then times every query API call on it.
//!
//! Data: traces of 10 spans (a root, 3 children, 6 grandchildren), each span with 8 attributes
//! (a model out of 8, a provider out of 3, a user out of 10,000, a session out of 100,000, token
//! counts, operation, status code), spread over the last 7 days; 3 metric points per trace
//! (`prompt_tokens`, `completion_tokens`, `total_tokens` by `model_id`, `provider_id`).
//!
//! Reports, per million spans acknowledged: the ingest rate over that million, bytes on disk per
//! span (file + WAL), the server's RSS and peak RSS, how busy the store's writer thread was
//! and how much of that went to merging index runs. At the end, p50/p99 of each query API call
//! (HTTP on 127.0.0.1, keep-alive) next to the same query run directly on the file with rusqlite
//! (the floor: what the store's SQL costs without HTTP and JSON), and the query plans.
//!
//! Run: `cargo bench -p tokentrace --bench scale -- --spans 10000000` (default 1,000,000;
//! `--samples 200` queries of each kind, `--senders 4`, `--keep DIR` to keep the store there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use rusqlite::{OpenFlags, params};
use serde_json::{Value, json};
use tokentrace_otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::any_value;
use tokentrace_otlp::proto::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use tokentrace_otlp::proto::resource::v1::Resource;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokentrace_store::text_key;

mod common;

use common::{Error, free_port, kv, status_kib, terminate, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Spans to ingest (10 per trace).
    #[arg(long, default_value_t = 1_000_000)]
    spans: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Queries of each kind timed at the end.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Keep the store in this directory (it must not hold one already).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Skip ingest: time the queries on a store kept earlier with `--keep` in this directory.
    #[arg(long, conflicts_with = "keep")]
    reuse: Option<PathBuf>,
}

const SPANS_PER_TRACE: u64 = 10;
/// Traces per export request (1,000 spans).
const TRACES_PER_REQUEST: u64 = 100;
const WEEK_NANOS: u64 = 7 * 24 * 3600 * 1_000_000_000;

/// A deterministic, well-mixed 64-bit value of `x` (splitmix64), so ids can be recomputed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn trace_id(t: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&mix(t).to_be_bytes());
    id[8..].copy_from_slice(&mix(t ^ 0x5555_5555).to_be_bytes());
    id
}

fn span_id(t: u64, j: u64) -> [u8; 8] {
    (mix(t * SPANS_PER_TRACE + j + (1 << 62)) | 1).to_be_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Span `j`'s parent: 1–3 are children of the root, 4–9 grandchildren.
fn parent(j: u64) -> Option<u64> {
    (j > 0).then(|| (j - 1) / 3)
}

fn user(t: u64) -> String {
    format!("user-{}", mix(t ^ 0xface) % 10_000)
}

fn session(t: u64) -> String {
    format!("session-{}", mix(t ^ 0xbeef) % 100_000)
}

fn model(t: u64) -> String {
    format!("model-{}", t % 8)
}

/// The layout of the run: `traces` traces spread evenly over the week before `end`.
#[derive(Clone, Copy)]
struct Plan {
    traces: u64,
    end: u64,
}

impl Plan {
    fn start_of(&self, t: u64) -> u64 {
        self.end - WEEK_NANOS + t * (WEEK_NANOS / self.traces.max(1))
    }
}

fn s(v: String) -> any_value::Value {
    any_value::Value::StringValue(v)
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", s("scale-bench".into()))],
        ..Default::default()
    })
}

/// Request `r`: the spans of its traces, and their metric points.
fn request(plan: Plan, r: u64) -> (Vec<u8>, Vec<u8>, u64) {
    let first = r * TRACES_PER_REQUEST;
    let last = (first + TRACES_PER_REQUEST).min(plan.traces);
    let mut spans = Vec::new();
    let mut points: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
    for t in first..last {
        let start = plan.start_of(t);
        let (input, output) = (100 + mix(t) % 900, 10 + mix(t ^ 7) % 500);
        let common = |j: u64| {
            vec![
                kv("gen_ai.operation.name", s("chat".into())),
                kv("gen_ai.request.model", s(model(t))),
                kv("provider_id", s(format!("provider-{}", t % 3))),
                kv("user.id", s(user(t))),
                kv("session.id", s(session(t))),
                kv(
                    "gen_ai.usage.input_tokens",
                    any_value::Value::IntValue((input / (j + 1)) as i64),
                ),
                kv(
                    "gen_ai.usage.output_tokens",
                    any_value::Value::IntValue((output / (j + 1)) as i64),
                ),
                kv("http.response.status_code", any_value::Value::IntValue(200)),
            ]
        };
        for j in 0..SPANS_PER_TRACE {
            let begin = start + j * 1_000_000;
            spans.push(Span {
                trace_id: trace_id(t).to_vec(),
                span_id: span_id(t, j).to_vec(),
                parent_span_id: parent(j).map_or(Vec::new(), |p| span_id(t, p).to_vec()),
                name: if j == 0 {
                    "POST /v1/chat/completions".into()
                } else {
                    format!("step-{j}")
                },
                kind: if j == 0 { 2 } else { 1 },
                start_time_unix_nano: begin,
                end_time_unix_nano: begin + 50_000_000 / (j + 1),
                attributes: common(j),
                status: Some(Status {
                    code: 1,
                    message: String::new(),
                }),
                ..Default::default()
            });
        }
        let labels = vec![
            kv("model_id", s(model(t))),
            kv("provider_id", s(format!("provider-{}", t % 3))),
        ];
        for (name, v) in [
            ("prompt_tokens", input),
            ("completion_tokens", output),
            ("total_tokens", input + output),
        ] {
            points.entry(name).or_default().push(NumberDataPoint {
                attributes: labels.clone(),
                time_unix_nano: start + 60_000_000,
                value: Some(number_data_point::Value::AsInt(v as i64)),
                ..Default::default()
            });
        }
    }
    let n = spans.len() as u64;
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: points
                    .into_iter()
                    .map(|(name, data_points)| Metric {
                        name: name.into(),
                        unit: "tokens".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (traces.encode_to_vec(), metrics.encode_to_vec(), n)
}

/// Posts until accepted; a 503 (the pipeline is full) is retried after its `Retry-After`, as
/// the OpenTelemetry SDKs' exporters do.
fn post(client: &reqwest::blocking::Client, url: &str, body: Vec<u8>) -> Result<(), Error> {
    loop {
        let res = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()?;
        match res.status().as_u16() {
            200 => return Ok(()),
            503 => {
                let after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                std::thread::sleep(Duration::from_secs(after.min(5)));
            }
            s => return Err(format!("{url} answered {s}: {}", res.text()?).into()),
        }
    }
}

fn disk_bytes(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A sample of the server's `/metrics`, by its name with labels (0 when absent).
fn metric(client: &reqwest::blocking::Client, base: &str, name: &str) -> Result<f64, Error> {
    let text = client.get(format!("{base}/metrics")).send()?.text()?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// A counter of the server's `/metrics` (what it has committed).
fn committed(client: &reqwest::blocking::Client, base: &str, name: &str) -> Result<u64, Error> {
    Ok(metric(client, base, name)? as u64)
}

/// Seconds the store's writer thread has been busy, in all and merging index runs.
fn writer_busy(client: &reqwest::blocking::Client, base: &str) -> Result<(f64, f64), Error> {
    let work = |w: &str| {
        metric(
            client,
            base,
            &format!("tokentrace_sqlite_writer_busy_seconds_total{{work=\"{w}\"}}"),
        )
    };
    let merge = work("merge")?;
    Ok((work("write")? + merge + work("retention")?, merge))
}

/// A query for trace number `t`.
type ApiCall = Box<dyn Fn(u64) -> Result<(), Error>>;
/// The same query on the file.
type FloorCall = Box<dyn Fn(&rusqlite::Connection, u64) -> Result<(), Error>>;

/// One kind of query: the API call, and the same query on the file (the floor).
struct Query {
    name: &'static str,
    api: ApiCall,
    floor: FloorCall,
    /// The floor's SQL, for its query plan.
    sql: &'static str,
}

/// The targets the sorted runs hold for a key of `kind` (a blob), as the JSON array the floor
/// SQL reads with `json_each`.
fn found(c: &rusqlite::Connection, kind: i64, key: Vec<u8>) -> Result<String, Error> {
    let targets = tokentrace_store::find_targets(c, kind, &rusqlite::types::Value::Blob(key))?;
    Ok(serde_json::Value::from(targets).to_string())
}

/// [`found`] for a value (its 4-byte key) of the indexed attribute `name`.
fn found_attribute(c: &rusqlite::Connection, name: &str, key: Vec<u8>) -> Result<String, Error> {
    let id: i64 = c
        .prepare_cached("SELECT id FROM attribute_keys WHERE key = ?1")?
        .query_row([name], |r| r.get(0))?;
    found(c, 16 + id, key)
}

/// The floor of the lists of newest traces: the index read of the newest trace rows.
fn newest_floor(c: &rusqlite::Connection, _: u64) -> Result<(), Error> {
    let mut st = c.prepare_cached(NEWEST_SQL)?;
    drain(st.query([])?)?;
    Ok(())
}

/// A trace id's key: the sorted runs' entries for it (read from their blocks by
/// `tokentrace_store::find_targets`, two seeks a live run: `?2`), checked against the trace row.
const GET_TRACE_SQL: &str = "SELECT t.root_span_id, t.start_ns, t.end_ns FROM trace_rows t
WHERE t.id IN (SELECT value FROM json_each(?2)) AND t.trace_id = ?1";
const GET_SPAN_SQL: &str = "SELECT s.span_id, s.parent_span_id, s.name, s.start_ns, s.end_ns, s.attributes, s.status FROM span_rows s
WHERE s.trace IN (SELECT t.id FROM trace_rows t WHERE t.id IN (SELECT value FROM json_each(?3)) AND t.trace_id = ?1) AND s.span_id = ?2";
/// The span tree is two lookups: the span's trace (span entries are keyed by the id's first 4
/// bytes, checked against the row), then that trace's spans (walked in Rust).
const TREE_ANCHOR_SQL: &str = "SELECT DISTINCT trace FROM span_rows WHERE id IN (SELECT value FROM json_each(?2)) AND span_id = ?1";
const TREE_SQL: &str = "SELECT s.span_id, t.trace_id, s.parent_span_id, s.name, s.start_ns, s.end_ns, s.attributes, s.status
FROM span_rows s JOIN trace_rows t ON t.id = s.trace WHERE s.trace = ?1 ORDER BY s.start_ns";
const NEWEST_SQL: &str = "SELECT trace_id, root_span_id, start_ns, end_ns FROM trace_rows WHERE start_ns IS NOT NULL ORDER BY start_ns DESC LIMIT 100";
/// Filters on an indexed key read the attribute index (entries of the sorted runs, a text under
/// its 4-byte key `?2`) for candidate traces, then check the filter on the candidates' spans
/// (whose attributes are keyed by the name's id).
const USER_SQL: &str = "SELECT t.trace_id, t.root_span_id, t.start_ns, t.end_ns FROM trace_rows t
WHERE t.start_ns IS NOT NULL
AND t.id IN (SELECT value FROM json_each(?2))
AND EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND json_extract(s.attributes, (SELECT '$.\"' || id || '\"' FROM attribute_names WHERE name = 'user.id')) IS ?1)
ORDER BY t.start_ns DESC LIMIT 100";
const SESSION_SQL: &str = "SELECT s.span_id, s.attributes FROM span_rows s
WHERE s.trace IN (SELECT value FROM json_each(?2))
AND json_extract(s.attributes, (SELECT '$.\"' || id || '\"' FROM attribute_names WHERE name = 'session.id')) IS ?1";
/// A time window without an indexed filter: the traces that start in the hour or a minute
/// before it (and the long ones spanning it), their spans in the hour checked against a filter
/// that none matches, so every span of the hour is read.
const WINDOW_SQL: &str = "SELECT t.trace_id FROM trace_rows t WHERE t.start_ns IS NOT NULL
AND t.id IN (SELECT id FROM trace_rows WHERE start_ns BETWEEN ?1 - 60000000000 AND ?2
    UNION ALL SELECT id FROM trace_rows WHERE last_start_ns - start_ns > 60000000000 AND start_ns <= ?2 AND last_start_ns >= ?1)
AND EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id AND s.start_ns > ?1 AND s.start_ns < ?2
    AND json_extract(s.attributes, (SELECT '$.\"' || id || '\"' FROM attribute_names WHERE name = 'gen_ai.usage.input_tokens')) > 100000)
LIMIT 100";
/// Usage over an hour: the same window, every LLM span's tokens added up per model.
const USAGE_SQL: &str = "SELECT json_extract(s.attributes, (SELECT '$.\"' || id || '\"' FROM attribute_names WHERE name = 'gen_ai.request.model')) AS m,
    count(*), sum(json_extract(s.attributes, (SELECT '$.\"' || id || '\"' FROM attribute_names WHERE name = 'gen_ai.usage.input_tokens')))
FROM span_rows s WHERE s.trace IN (SELECT id FROM trace_rows WHERE start_ns BETWEEN ?1 - 60000000000 AND ?2
    UNION ALL SELECT id FROM trace_rows WHERE last_start_ns - start_ns > 60000000000 AND start_ns <= ?2 AND last_start_ns >= ?1)
AND s.start_ns >= ?1 AND s.start_ns <= ?2 GROUP BY m";
const HOUR_NANOS: u64 = 3_600 * 1_000_000_000;

/// Metric range queries by the hour read the per-hour rollups of the name's series (the store
/// filters the series by label in Rust, and reads the minutes and points of the partial hours
/// at the window's edges). The store's reading of a range query: the series of the name whose
/// label matches, then their hourly rollups over the window's whole hours.
const METRICS_SQL: &str = "SELECT s.id, r.hour, r.sum FROM metric_series s CROSS JOIN metric_rollups_hourly r ON r.series = s.id WHERE s.name = ?1 AND json_extract(s.labels, '$.model_id') = ?4 AND r.hour >= ?2 AND r.hour < ?3";

/// The hour that trace `t` starts in the middle of, in unix nanoseconds.
fn hour_of(plan: Plan, t: u64) -> (u64, u64) {
    let a = plan.start_of(t).saturating_sub(HOUR_NANOS / 2);
    (a, a + HOUR_NANOS)
}

/// Unix nanoseconds as the API's ISO 8601 text.
fn iso(ns: u64) -> String {
    tokentrace_model::Timestamp::from_unix_nanos(ns as i64).to_iso()
}

fn drain(mut rows: rusqlite::Rows<'_>) -> Result<u64, Error> {
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Sends the plan's traces and metric points from `senders` threads; reports per million.
fn ingest(plan: Plan, senders: usize, base: &str, pid: u32, db: &Path) -> Result<(), Error> {
    let traces = plan.traces;
    println!(
        "{:>8} {:>12} {:>14} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "million",
        "committed/s",
        "bytes/span",
        "RSS MiB",
        "peak MiB",
        "acked ahead",
        "writer busy",
        "merging"
    );

    let requests = traces.div_ceil(TRACES_PER_REQUEST);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let senders: Vec<_> = (0..senders)
        .map(|_| {
            let (next, acked, failed, base) = (
                next.clone(),
                acked.clone(),
                failed.clone(),
                base.to_string(),
            );
            std::thread::spawn(move || -> Result<(), Error> {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()?;
                let (traces_url, metrics_url) =
                    (format!("{base}/v1/traces"), format!("{base}/v1/metrics"));
                loop {
                    let r = next.fetch_add(1, Ordering::Relaxed);
                    if r >= requests || failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let (spans, points, n) = request(plan, r);
                    let sent = post(&client, &traces_url, spans)
                        .and_then(|()| post(&client, &metrics_url, points));
                    if let Err(e) = sent {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    acked.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let total = traces * SPANS_PER_TRACE;
    let client = reqwest::blocking::Client::new();
    let mut million = 1;
    let mut last = (Instant::now(), 0u64);
    let mut last_busy = writer_busy(&client, base)?;
    let mut rates = Vec::new();
    let mut peak_rss = 0;
    let mut acked_after = None;
    // Per million spans committed (not merely acknowledged): the store's own counter.
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if failed.load(Ordering::Relaxed) {
            break;
        }
        let rss = status_kib(pid, "VmRSS:");
        peak_rss = peak_rss.max(rss);
        if acked_after.is_none() && acked.load(Ordering::Relaxed) >= total {
            acked_after = Some(started.elapsed());
        }
        let n = committed(&client, base, "tokentrace_sqlite_spans_committed_total")?;
        while n >= million * 1_000_000 || (n == total && last.1 < total) {
            let reached = (million * 1_000_000).min(total);
            let elapsed = last.0.elapsed().as_secs_f64();
            let rate = (reached - last.1) as f64 / elapsed;
            rates.push(rate);
            // The writer thread's busy time over the million, and the share of it merging.
            let busy = writer_busy(&client, base)?;
            let (spent, merging) = (busy.0 - last_busy.0, busy.1 - last_busy.1);
            println!(
                "{:>8} {:>12.0} {:>14.0} {:>10.1} {:>10.1} {:>12} {:>11.0}% {:>8.0}%",
                reached as f64 / 1e6,
                rate,
                disk_bytes(db) as f64 / n as f64,
                rss as f64 / 1024.0,
                status_kib(pid, "VmHWM:") as f64 / 1024.0,
                acked.load(Ordering::Relaxed) - n.min(acked.load(Ordering::Relaxed)),
                100.0 * spent / elapsed,
                100.0 * merging / spent.max(f64::MIN_POSITIVE)
            );
            last = (Instant::now(), reached);
            last_busy = busy;
            million += 1;
            if reached == total {
                break;
            }
        }
        if n >= total {
            break;
        }
    }
    for s in senders {
        s.join().map_err(|_| "a sender panicked")??;
    }
    let acked_after = acked_after.unwrap_or_else(|| started.elapsed());
    let rows = total + traces * 3;
    while committed(&client, base, "tokentrace_sqlite_rows_committed_total")? < rows {
        std::thread::sleep(Duration::from_millis(50));
    }
    let committed_after = started.elapsed();
    println!(
        "acknowledged {total} spans in {:.1} s ({:.0} spans/s), all {rows} rows committed after {:.1} s; {:.0} bytes per span on disk; peak RSS {:.1} MiB (sampled), {:.1} MiB (VmHWM)",
        acked_after.as_secs_f64(),
        total as f64 / acked_after.as_secs_f64(),
        committed_after.as_secs_f64(),
        disk_bytes(db) as f64 / total as f64,
        peak_rss as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!(
            "committed spans/s: first million {first:.0}, last million {last:.0} ({:.2} of the first)",
            last / first
        );
    }

    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Args = common::args();
    let temp = tempfile::tempdir()?;
    let dir = match (&args.keep, &args.reuse) {
        (Some(d), _) | (_, Some(d)) => d.clone(),
        _ => temp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("trace_store.db");
    let layout = dir.join("scale.json");
    let plan = match &args.reuse {
        Some(_) => {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&layout)?)?;
            Plan {
                traces: v["traces"].as_u64().ok_or("scale.json: traces")?,
                end: v["end"].as_u64().ok_or("scale.json: end")?,
            }
        }
        None => {
            if db.exists() {
                return Err(format!("{} exists already", db.display()).into());
            }
            let plan = Plan {
                traces: (args.spans / SPANS_PER_TRACE).max(1),
                end: SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
            };
            let v = json!({"traces": plan.traces, "end": plan.end});
            std::fs::write(&layout, v.to_string())?;
            plan
        }
    };
    let (traces, end) = (plan.traces, plan.end);
    let port = free_port()?;
    let mut server = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--port", &port.to_string()])
        .env("TELEMETRY_SINKS", "sqlite")
        .env("SQLITE_STORE_DIR", &dir)
        .env("TOKENTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    println!(
        "scale: {} spans ({traces} traces of {SPANS_PER_TRACE}), {} metric points, {} senders, store {}",
        traces * SPANS_PER_TRACE,
        traces * 3,
        args.senders,
        db.display()
    );
    if args.reuse.is_none() {
        ingest(plan, args.senders, &base, pid, &db)?;
    }

    let api = Arc::new(reqwest::blocking::Client::new());
    let get = {
        let (api, base) = (api.clone(), base.clone());
        move |path: String| -> Result<(), Error> {
            let res = api.get(format!("{base}{path}")).send()?;
            if !res.status().is_success() {
                return Err(format!("GET {path}: {}", res.status()).into());
            }
            res.bytes()?;
            Ok(())
        }
    };
    let post_json = {
        let (api, base) = (api.clone(), base.clone());
        move |path: String, body: Value| -> Result<(), Error> {
            let res = api.post(format!("{base}{path}")).json(&body).send()?;
            if !res.status().is_success() {
                return Err(format!("POST {path}: {}", res.status()).into());
            }
            res.bytes()?;
            Ok(())
        }
    };
    let week_ago_secs = ((end - WEEK_NANOS) / 1_000_000_000) as i64;
    let end_secs = (end / 1_000_000_000) as i64 + 60;
    let queries: Vec<Query> = vec![
        Query {
            name: "get_trace",
            api: Box::new({
                let get = get.clone();
                move |t| get(format!("/v1/telemetry/traces/{}", hex(&trace_id(t))))
            }),
            floor: Box::new(|c, t| {
                let found = found(c, 1, trace_id(t).to_vec())?;
                let mut st = c.prepare_cached(GET_TRACE_SQL)?;
                drain(st.query(params![trace_id(t).to_vec(), found])?)?;
                Ok(())
            }),
            sql: GET_TRACE_SQL,
        },
        Query {
            name: "get_span",
            api: Box::new({
                let get = get.clone();
                move |t| {
                    get(format!(
                        "/v1/telemetry/traces/{}/spans/{}",
                        hex(&trace_id(t)),
                        hex(&span_id(t, 5))
                    ))
                }
            }),
            floor: Box::new(|c, t| {
                let found = found(c, 1, trace_id(t).to_vec())?;
                let mut st = c.prepare_cached(GET_SPAN_SQL)?;
                drain(st.query(params![trace_id(t).to_vec(), span_id(t, 5).to_vec(), found])?)?;
                Ok(())
            }),
            sql: GET_SPAN_SQL,
        },
        Query {
            name: "get_span_tree (10 spans)",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        format!("/v1/telemetry/spans/{}/tree", hex(&span_id(t, 0))),
                        json!({}),
                    )
                }
            }),
            floor: Box::new(|c, t| {
                let found = found(c, 0, span_id(t, 0)[..4].to_vec())?;
                let trace: i64 = c
                    .prepare_cached(TREE_ANCHOR_SQL)?
                    .query_row(params![span_id(t, 0).to_vec(), found], |r| r.get(0))?;
                let mut st = c.prepare_cached(TREE_SQL)?;
                drain(st.query(params![trace])?)?;
                Ok(())
            }),
            sql: TREE_SQL,
        },
        Query {
            name: "newest 100 traces",
            api: Box::new({
                let post_json = post_json.clone();
                move |_| {
                    post_json(
                        "/v1/telemetry/traces".into(),
                        json!({"limit": 100, "order_by": ["-start_time"]}),
                    )
                }
            }),
            floor: Box::new(newest_floor),
            sql: NEWEST_SQL,
        },
        Query {
            name: "UI trace list (first page of 50)",
            api: Box::new({
                let post_json = post_json.clone();
                move |_| post_json("/v1/tokentrace/traces".into(), json!({"limit": 50}))
            }),
            floor: Box::new(newest_floor),
            sql: NEWEST_SQL,
        },
        Query {
            name: "UI trace list, model eq",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        "/v1/tokentrace/traces".into(),
                        json!({"limit": 50, "model": model(t)}),
                    )
                }
            }),
            floor: Box::new(newest_floor),
            sql: NEWEST_SQL,
        },
        Query {
            name: "UI trace list, user.id eq (rare)",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        "/v1/tokentrace/traces".into(),
                        json!({"limit": 50, "filters": [{"key": "user.id", "op": "eq", "value": user(t)}]}),
                    )
                }
            }),
            floor: Box::new(|c, t| {
                let found = found_attribute(c, "user.id", text_key(&user(t)).to_vec())?;
                let mut st = c.prepare_cached(USER_SQL)?;
                drain(st.query(params![user(t), found])?)?;
                Ok(())
            }),
            sql: USER_SQL,
        },
        Query {
            name: "UI trace page (10 spans in full)",
            api: Box::new({
                let get = get.clone();
                move |t| get(format!("/v1/tokentrace/traces/{}", hex(&trace_id(t))))
            }),
            floor: Box::new(|c, t| {
                let found = found(c, 0, span_id(t, 0)[..4].to_vec())?;
                let trace: i64 = c
                    .prepare_cached(TREE_ANCHOR_SQL)?
                    .query_row(params![span_id(t, 0).to_vec(), found], |r| r.get(0))?;
                let mut st = c.prepare_cached(TREE_SQL)?;
                drain(st.query(params![trace])?)?;
                Ok(())
            }),
            sql: TREE_SQL,
        },
        Query {
            name: "query_traces user.id eq",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        "/v1/telemetry/traces".into(),
                        json!({"attribute_filters": [{"key": "user.id", "op": "eq", "value": user(t)}], "limit": 100}),
                    )
                }
            }),
            floor: Box::new(|c, t| {
                let found = found_attribute(c, "user.id", text_key(&user(t)).to_vec())?;
                let mut st = c.prepare_cached(USER_SQL)?;
                drain(st.query(params![user(t), found])?)?;
                Ok(())
            }),
            sql: USER_SQL,
        },
        Query {
            name: "query_spans session.id eq",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        "/v1/telemetry/spans".into(),
                        json!({"attribute_filters": [{"key": "session.id", "op": "eq", "value": session(t)}], "attributes_to_return": []}),
                    )
                }
            }),
            floor: Box::new(|c, t| {
                let found = found_attribute(c, "session.id", text_key(&session(t)).to_vec())?;
                let mut st = c.prepare_cached(SESSION_SQL)?;
                drain(st.query(params![session(t), found])?)?;
                Ok(())
            }),
            sql: SESSION_SQL,
        },
        Query {
            name: "query_traces 1 h window, scan",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    let (a, b) = hour_of(plan, t);
                    post_json(
                        "/v1/telemetry/traces".into(),
                        json!({"attribute_filters": [
                            {"key": "start_time", "op": "gt", "value": iso(a)},
                            {"key": "start_time", "op": "lt", "value": iso(b)},
                            {"key": "gen_ai.usage.input_tokens", "op": "gt", "value": 100000}
                        ], "limit": 100}),
                    )
                }
            }),
            floor: Box::new(move |c, t| {
                let (a, b) = hour_of(plan, t);
                let mut st = c.prepare_cached(WINDOW_SQL)?;
                drain(st.query(params![a as i64, b as i64])?)?;
                Ok(())
            }),
            sql: WINDOW_SQL,
        },
        Query {
            name: "usage 1 h by model",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    let (a, b) = hour_of(plan, t);
                    post_json(
                        "/v1/tokentrace/usage".into(),
                        json!({"since": iso(a), "until": iso(b)}),
                    )
                }
            }),
            floor: Box::new(move |c, t| {
                let (a, b) = hour_of(plan, t);
                let mut st = c.prepare_cached(USAGE_SQL)?;
                drain(st.query(params![a as i64, b as i64])?)?;
                Ok(())
            }),
            sql: USAGE_SQL,
        },
        Query {
            name: "query_metrics 7d by 1h, model_id",
            api: Box::new({
                let post_json = post_json.clone();
                move |t| {
                    post_json(
                        "/v1/telemetry/metrics/prompt_tokens".into(),
                        json!({
                            "start_time": week_ago_secs, "end_time": end_secs, "granularity": "1h",
                            "query_type": "range",
                            "label_matchers": [{"name": "model_id", "value": model(t), "operator": "="}]
                        }),
                    )
                }
            }),
            floor: Box::new(move |c, t| {
                let mut st = c.prepare_cached(METRICS_SQL)?;
                drain(st.query(params![
                    "prompt_tokens",
                    week_ago_secs.div_euclid(3600) + 1,
                    end_secs.div_euclid(3600),
                    model(t)
                ])?)?;
                Ok(())
            }),
            sql: METRICS_SQL,
        },
    ];

    let conn = rusqlite::Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    println!(
        "\n{:<34} {:>10} {:>10} {:>11} {:>11} {:>8} {:>8}",
        "query", "API p50", "API p99", "floor p50", "floor p99", "p50 ×", "samples"
    );
    for q in &queries {
        let pick = |i: usize| mix(i as u64 ^ 0x1234) % traces;
        // One untimed call of each first, so caches are as warm for both.
        (q.api)(pick(0))?;
        (q.floor)(&conn, pick(0))?;
        let mut api_times = Vec::new();
        let mut floor_times = Vec::new();
        // At most `--samples` of each, and no more than 20 s of them: a scan over a big store
        // takes seconds, and a few samples of it say enough.
        let budget = Instant::now();
        for i in 1..=args.samples {
            if budget.elapsed() > Duration::from_secs(20) {
                break;
            }
            let t = pick(i);
            // Whichever runs second finds the pages the first read in cache: take turns.
            let api = |times: &mut Vec<Duration>| -> Result<(), Error> {
                let at = Instant::now();
                (q.api)(t)?;
                times.push(at.elapsed());
                Ok(())
            };
            let floor = |times: &mut Vec<Duration>| -> Result<(), Error> {
                let at = Instant::now();
                (q.floor)(&conn, t)?;
                times.push(at.elapsed());
                Ok(())
            };
            if i % 2 == 0 {
                api(&mut api_times)?;
                floor(&mut floor_times)?;
            } else {
                floor(&mut floor_times)?;
                api(&mut api_times)?;
            }
        }
        api_times.sort();
        floor_times.sort();
        let (a50, f50) = (percentile(&api_times, 0.5), percentile(&floor_times, 0.5));
        println!(
            "{:<34} {:>8.2}ms {:>8.2}ms {:>9.2}ms {:>9.2}ms {:>8.1} {:>8}",
            q.name,
            ms(a50),
            ms(percentile(&api_times, 0.99)),
            ms(f50),
            ms(percentile(&floor_times, 0.99)),
            a50.as_secs_f64() / f50.as_secs_f64().max(1e-9),
            api_times.len()
        );
    }
    println!("\nquery plans of the floor queries (EXPLAIN QUERY PLAN through rusqlite):");
    for q in &queries {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql))?;
        let n = st.parameter_count();
        let values: Vec<rusqlite::types::Value> =
            (0..n).map(|_| rusqlite::types::Value::Null).collect();
        let plan: Vec<String> = st
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })?
            .collect::<Result<_, _>>()?;
        println!("  {}: {}", q.name, plan.join(" | "));
    }
    drop(conn);
    terminate(&mut server)?;
    Ok(())
}
