//! `GET /metrics`: what the prometheus sink recorded (token counters, GenAI histograms, request
//! counts, SQLite commit histograms), plus the counters read at scrape time from their owners:
//! the pipeline, the store writer and the OTLP exporters. Prometheus text format 0.0.4, or
//! OpenMetrics when the scraper asks for it.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokentrace_pipeline::sinks::prometheus::{Format, Sample};

use crate::AppState;

pub(crate) async fn metrics(
    State(state): State<AppState>,
    access: crate::guard::Access,
    headers: HeaderMap,
) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = state
        .metrics
        .render(format, &live_samples(&state), access.reads.as_deref());
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

fn counter(name: &'static str, help: &'static str, value: f64) -> Sample {
    Sample {
        name,
        help,
        counter: true,
        labels: Vec::new(),
        value,
    }
}

fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
    Sample {
        counter: false,
        ..counter(name, help, value)
    }
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), where `/proc` has
/// them.
fn resident_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |field: &str| -> Option<u64> {
        let n = status.lines().find_map(|l| l.strip_prefix(field))?;
        n.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// The counters read at scrape time.
fn live_samples(state: &AppState) -> Vec<Sample> {
    let p = state.telemetry.stats();
    let mut live = vec![
        gauge(
            "tokentrace_pipeline_queue_depth",
            "Telemetry messages waiting in the pipeline queue.",
            load(&p.queue_depth),
        ),
        gauge(
            "tokentrace_pipeline_queue_bytes",
            "Bytes (estimated) of the telemetry waiting in the pipeline queue.",
            load(&p.queue_bytes),
        ),
        gauge(
            "tokentrace_pipeline_drain_bytes_per_second",
            "Bytes per second the pipeline drains through the sinks (moving average): ingestion is let in while the queue holds less than 25 ms of it, the API's requests wait past 50 ms.",
            state.telemetry.drain_pace() as f64,
        ),
        counter(
            "tokentrace_pipeline_accepted_total",
            "Telemetry messages accepted into the pipeline.",
            load(&p.accepted),
        ),
        Sample {
            labels: vec![("reason", "queue_full".into())],
            ..counter(
                "tokentrace_dropped_events_total",
                "Telemetry refused or lost, by reason.",
                load(&p.rejected_full),
            )
        },
        counter(
            "tokentrace_spans_unfinished_total",
            "Spans stored unfinished (timeout, open-span limit, shutdown).",
            load(&p.spans_unfinished),
        ),
        counter(
            "tokentrace_span_starts_duplicate_total",
            "Duplicate span_start events ignored.",
            load(&p.duplicate_starts),
        ),
        counter(
            "tokentrace_span_ends_orphan_total",
            "span_end events without a known start.",
            load(&p.orphan_ends),
        ),
        counter(
            "tokentrace_backpressure_waits_total",
            "Traced requests that waited for room in a nearly full pipeline queue.",
            load(&p.room_waits),
        ),
        counter(
            "tokentrace_backpressure_timeouts_total",
            "Traced requests that stopped waiting for room and went on (their spans may be dropped).",
            load(&p.room_wait_timeouts),
        ),
        counter(
            "tokentrace_ingest_waits_total",
            "Events-API and OTLP requests held for room in the pipeline queue before being let in or answered 503.",
            load(&p.ingest_waits),
        ),
        gauge(
            "tokentrace_request_body_bytes_held",
            "Bytes of the request-body budget held by requests being received and handled now.",
            state.settings.bodies.held_bytes() as f64,
        ),
        gauge(
            "tokentrace_request_body_budget_bytes",
            "The request-body budget: bytes of bodies that may be held at once.",
            state.settings.bodies.total_bytes() as f64,
        ),
        counter(
            "tokentrace_request_bodies_refused_total",
            "Requests answered 503 at once because the request-body budget was spent.",
            state.settings.bodies.refused() as f64,
        ),
        gauge(
            "tokentrace_connections_open",
            "Connections open now on both ports.",
            state.settings.connections.open() as f64,
        ),
        gauge(
            "tokentrace_connections_max",
            "The most connections open at once (server.max_connections).",
            state.settings.connections.max() as f64,
        ),
        counter(
            "tokentrace_connections_refused_total",
            "Connections answered 503 and closed (or closed) because server.max_connections were open.",
            state.settings.connections.refused() as f64,
        ),
        counter(
            "tokentrace_sink_errors_total",
            "Sink flush failures.",
            load(&p.sink_errors),
        ),
    ];
    let (sqlite_now, sqlite_peak) = tokentrace_store::sqlite_memory();
    live.extend([
        gauge(
            "tokentrace_sqlite_memory_bytes",
            "Bytes SQLite holds now: page caches of every connection, statements, sorts.",
            sqlite_now as f64,
        ),
        gauge(
            "tokentrace_sqlite_memory_peak_bytes",
            "The most bytes SQLite has held since start.",
            sqlite_peak as f64,
        ),
    ]);
    if let Some((rss, peak)) = resident_memory() {
        live.extend([
            gauge(
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes.",
                rss as f64,
            ),
            gauge(
                "tokentrace_process_resident_memory_peak_bytes",
                "The most resident memory the process has had since start, in bytes.",
                peak as f64,
            ),
        ]);
    }
    if let Ok(writer) = state.writer() {
        let w = writer.stats();
        live.extend([
            gauge(
                "tokentrace_sqlite_queue_bytes",
                "Bytes of rows handed to the SQLite writer and not yet committed.",
                w.queued_bytes as f64,
            ),
            counter(
                "tokentrace_sqlite_rows_committed_total",
                "Rows committed to SQLite.",
                w.rows_committed as f64,
            ),
            counter(
                "tokentrace_sqlite_spans_committed_total",
                "Spans committed to SQLite (also counted in rows).",
                w.spans_committed as f64,
            ),
            counter(
                "tokentrace_sqlite_batches_committed_total",
                "SQLite transactions committed.",
                w.batches_committed as f64,
            ),
            counter(
                "tokentrace_sqlite_write_errors_total",
                "SQLite batches that failed to commit.",
                w.write_errors as f64,
            ),
            counter(
                "tokentrace_sqlite_rows_expired_total",
                "Rows deleted by retention.",
                w.rows_expired as f64,
            ),
        ]);
        for (work, ns) in [
            ("write", w.write_ns),
            ("merge", w.merge_ns),
            ("retention", w.retention_ns),
        ] {
            live.push(Sample {
                labels: vec![("work", work.to_string())],
                ..counter(
                    "tokentrace_sqlite_writer_busy_seconds_total",
                    "Seconds the SQLite writer thread spent on each kind of work: writing batches, merging index runs, retention.",
                    ns as f64 / 1e9,
                )
            });
        }
    }
    for (signal, stats) in &state.exporters {
        let dropped = if *signal == "traces" {
            "tokentrace_exporter_dropped_spans_total"
        } else {
            "tokentrace_exporter_dropped_metric_points_total"
        };
        let by_signal = |s: Sample| Sample {
            labels: vec![("signal", signal.to_string())],
            ..s
        };
        live.extend([
            counter(
                dropped,
                "Items the OTLP exporter could not deliver (queue full, or still failing after retries).",
                load(&stats.dropped),
            ),
            by_signal(counter(
                "tokentrace_exporter_errors_total",
                "Failed OTLP export attempts, by signal.",
                load(&stats.errors),
            )),
            by_signal(counter(
                "tokentrace_exporter_exported_total",
                "Items delivered by the OTLP exporters, by signal.",
                load(&stats.exported),
            )),
        ]);
    }
    if let Ok(counts) = p.redactions.lock() {
        live.extend(counts.iter().map(|(kind, n)| Sample {
            labels: vec![("kind", kind.clone())],
            ..counter(
                "tokentrace_redactions_total",
                "Matches replaced by redaction before any sink, by kind.",
                *n as f64,
            )
        }));
    }
    live
}
