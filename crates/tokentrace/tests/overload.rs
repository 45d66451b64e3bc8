//! Sustained overload of each ingest path on its own (OTLP receiver, events API, gateway), with
//! the default configuration and the SQLite sink: senders send as fast as the server answers
//! for a while, and the server's peak memory (`VmHWM` in `/proc/<pid>/status`) must stay within
//! the documented bound while it answers the overload with 503 + `Retry-After` (or, for the
//! gateway, keeps serving chats). The figures over ten minutes of all paths at once are the
//! overload bench's (BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::any_value;

use common::kv;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// The server's peak resident memory under sustained overload with the defaults (docs/CONFIG.md,
/// "Limits"): MiB.
const BOUND_MIB: u64 = 150;
/// How long each path is overloaded.
const SECONDS: u64 = 20;
const SENDERS: usize = 8;

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    refused_without_retry_after: AtomicU64,
    /// Requests the server held for room (`tokentrace_ingest_waits_total`).
    held: AtomicU64,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn otlp_body(sender: usize, n: u64) -> Vec<u8> {
    let mut trace = [0u8; 16];
    trace[0] = 0x0e;
    trace[1] = sender as u8;
    trace[8..].copy_from_slice(&(n + 1).to_be_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..256u64)
        .map(|i| Span {
            trace_id: trace.to_vec(),
            span_id: ((sender as u64) << 48 | (n << 12) | i | 1)
                .to_be_bytes()
                .to_vec(),
            name: "chat llama-3.1-8b".into(),
            kind: 3,
            start_time_unix_nano: now,
            end_time_unix_nano: now + 250_000_000,
            attributes: vec![
                kv(
                    "gen_ai.request.model",
                    any_value::Value::StringValue("llama-3.1-8b".into()),
                ),
                kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(42)),
                kv(
                    "user.id",
                    any_value::Value::StringValue(format!("u-{}", n % 97)),
                ),
                kv("note", any_value::Value::StringValue("x".repeat(512))),
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

/// One request of `path` from `sender`, its `n`-th.
fn send(
    http: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    sender: usize,
    n: u64,
) -> Option<reqwest::blocking::Response> {
    let request = match path {
        "otlp" => http
            .post(format!("{base}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(otlp_body(sender, n)),
        "events" => http
            .post(format!("{base}/v1/telemetry/events"))
            .json(&serde_json::json!({
            "event": {"type": "unstructured_log", "severity": "info",
                      "trace_id": format!("{:016x}{:016x}", 0x0e00 + sender, n + 1),
                      "span_id": format!("{:016x}", n + 1),
                      "timestamp": "2026-12-01T12:00:00Z",
                      "message": "y".repeat(16 << 10),
                      "attributes": {"session.id": format!("s-{}", n % 31)}}})),
        _ => http
            .post(format!("{base}/v1/chat/completions"))
            .json(&serde_json::json!({
            "model": "echo", "max_tokens": 8,
            "messages": [{"role": "user", "content": "tell me about overload"}]})),
    };
    request.send().ok()
}

/// Overloads one path for [`SECONDS`]; returns the counts and the server's peak RSS in KiB.
fn overload(path: &'static str) -> (Arc<Counts>, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::sqlite_config(dir.path(), "");
    let server = common::start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let pid = server.child.id();
    let idle = status_kib(pid, "VmRSS:");
    let base = Arc::new(server.base.clone());
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (base, stop, counts) = (base.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Some(r) = send(&http, &base, path, s, n) else {
                        continue;
                    };
                    if r.status() == 200 {
                        counts.accepted.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    } else {
                        assert_eq!(r.status(), 503, "{path}: {:?}", r.text());
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        if r.headers().get("retry-after").is_none() {
                            counts
                                .refused_without_retry_after
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        // Like a sender that retries soon, not after the full Retry-After.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = r.bytes();
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(SECONDS) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let peak = status_kib(pid, "VmHWM:");
    let metrics = reqwest::blocking::get(format!("{base}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let peak_after = status_kib(pid, "VmHWM:");
    let value = |name: &str| -> u64 {
        common::metric_sample(&metrics, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
            as u64
    };
    counts
        .held
        .store(value("tokentrace_ingest_waits_total"), Ordering::Relaxed);
    // The server reports the peak that /proc shows, read between the two readings of it.
    let reported = value("tokentrace_process_resident_memory_peak_bytes");
    assert!(
        (peak * 1024..=peak_after * 1024).contains(&reported),
        "{path}: /metrics says a peak of {reported} bytes, /proc {peak}..{peak_after} KiB"
    );
    let (sqlite, sqlite_peak) = (
        value("tokentrace_sqlite_memory_bytes"),
        value("tokentrace_sqlite_memory_peak_bytes"),
    );
    assert!(
        0 < sqlite && sqlite <= sqlite_peak && sqlite_peak < reported,
        "{path}: SQLite holds {sqlite} bytes, at most {sqlite_peak}, of {reported}"
    );
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    eprintln!(
        "{path}: {} accepted, {} held for room, {} refused, idle RSS {} MiB, peak RSS {} MiB",
        counts.accepted.load(Ordering::Relaxed),
        counts.held.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        idle / 1024,
        peak / 1024
    );
    (counts, idle, peak)
}

fn check(path: &'static str, must_refuse: bool) {
    let (counts, _idle, peak) = overload(path);
    assert!(
        counts.accepted.load(Ordering::Relaxed) > 0,
        "{path}: nothing accepted"
    );
    if must_refuse {
        assert!(
            counts.held.load(Ordering::Relaxed) + counts.refused.load(Ordering::Relaxed) > 0,
            "{path}: the senders never overloaded the server, so this test measured nothing"
        );
    }
    assert_eq!(
        counts.refused_without_retry_after.load(Ordering::Relaxed),
        0,
        "{path}: every 503 says when to retry"
    );
    assert!(
        peak <= BOUND_MIB * 1024,
        "{path}: peak RSS {} MiB under overload, past the bound of {BOUND_MIB} MiB",
        peak / 1024
    );
}

#[test]
fn sustained_otlp_overload_stays_within_the_memory_bound() {
    check("otlp", true);
}

#[test]
fn sustained_events_overload_stays_within_the_memory_bound() {
    check("events", true);
}

#[test]
fn sustained_gateway_load_stays_within_the_memory_bound() {
    check("gateway", false);
}
