//! Event-stream ingest into SQLite: span_start / log / metric / span_end events through the
//! pipeline (span assembly, sqlite sink, batching writer thread) against a raw rusqlite baseline
//! that inserts the same rows into the same schema in batched transactions, in the same run.
//!
//! Run: `cargo bench -p tokentrace-pipeline --bench ingest` (options: `-- --spans 50000 --rounds 3`).

use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokentrace_model::{
    AttrValue, Attributes, Event, LogSeverity, MetricEvent, MetricValue, SpanEndPayload, SpanId,
    SpanStartPayload, SpanStatus, StructuredLogEvent, StructuredLogPayload, Timestamp, TraceId,
    UnstructuredLogEvent,
};
use tokentrace_pipeline::sinks::sqlite::SqliteSink;
use tokentrace_pipeline::{Pipeline, PipelineOptions};
use tokentrace_store::{Store, StoreOptions};

const SPANS_PER_TRACE: usize = 10;

struct SpanInput {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    start: Timestamp,
    end: Timestamp,
    attributes: Attributes,
}

fn inputs(n: usize) -> Vec<SpanInput> {
    let base = Timestamp::now().unix_nanos();
    let mut out = Vec::with_capacity(n);
    let mut trace = TraceId::random();
    let mut root = SpanId::random();
    for i in 0..n {
        if i % SPANS_PER_TRACE == 0 {
            trace = TraceId::random();
            root = SpanId::random();
        }
        let span = if i % SPANS_PER_TRACE == 0 {
            root
        } else {
            SpanId::random()
        };
        let start = base + i as i64 * 1_000_000;
        let attributes: Attributes = [
            ("model_id", AttrValue::from("llama-3.1-8b")),
            ("provider_id", AttrValue::from("vllm")),
            ("gen_ai.operation.name", AttrValue::from("chat")),
            ("gen_ai.request.max_tokens", AttrValue::Int(512)),
            ("gen_ai.request.temperature", AttrValue::Float(0.7)),
            ("http.route", AttrValue::from("/v1/chat/completions")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        out.push(SpanInput {
            trace,
            span,
            parent: (span != root).then_some(root),
            start: Timestamp::from_unix_nanos(start),
            end: Timestamp::from_unix_nanos(start + 250_000_000),
            attributes,
        });
    }
    out
}

fn events(s: &SpanInput) -> [Event; 4] {
    let labels: Attributes = [("model_id", "llama-3.1-8b"), ("provider_id", "vllm")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), AttrValue::from(v)))
        .collect();
    [
        Event::StructuredLog(StructuredLogEvent {
            trace_id: s.trace,
            span_id: s.span,
            timestamp: s.start,
            attributes: s.attributes.clone(),
            payload: StructuredLogPayload::SpanStart(SpanStartPayload {
                name: "chat_completion".into(),
                parent_span_id: s.parent,
            }),
        }),
        Event::UnstructuredLog(UnstructuredLogEvent {
            trace_id: s.trace,
            span_id: s.span,
            timestamp: s.start,
            attributes: Attributes::new(),
            message: "upstream answered".into(),
            severity: LogSeverity::Info,
        }),
        Event::Metric(MetricEvent {
            trace_id: s.trace,
            span_id: s.span,
            timestamp: s.end,
            attributes: labels,
            metric: "total_tokens".into(),
            value: MetricValue::Int(42),
            unit: "tokens".into(),
        }),
        Event::StructuredLog(StructuredLogEvent {
            trace_id: s.trace,
            span_id: s.span,
            timestamp: s.end,
            attributes: Attributes::new(),
            payload: StructuredLogPayload::SpanEnd(SpanEndPayload {
                status: SpanStatus::Ok,
            }),
        }),
    ]
}

/// tokentrace: events → pipeline → sqlite sink → store writer thread; timed until committed.
fn run_tokentrace(
    dir: &std::path::Path,
    spans: &[SpanInput],
) -> Result<Duration, Box<dyn std::error::Error>> {
    let all: Vec<Event> = spans.iter().flat_map(events).collect();
    let store = Store::open(&dir.join("tokentrace.db"), StoreOptions::default())?;
    // A queue that holds the whole stream (in items and in bytes): the producer never has to
    // retry.
    let options = PipelineOptions {
        queue_capacity: all.len() + 16,
        queue_max_bytes: u64::MAX,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::start(options, vec![Box::new(SqliteSink::new(store.writer()))])?;
    let telemetry = pipeline.telemetry();
    let started = Instant::now();
    for event in all {
        telemetry.log_event(event, Some(604_800))?;
    }
    telemetry.flush()?;
    let elapsed = started.elapsed();
    pipeline.shutdown();
    store.close()?;
    Ok(elapsed)
}

/// Baseline: the same rows (span, trace, two span events, metric point) inserted directly with
/// prepared statements in transactions of the same size, into the same schema.
fn run_baseline(
    dir: &std::path::Path,
    spans: &[SpanInput],
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut conn = Connection::open(dir.join("baseline.db"))?;
    tokentrace_store::init_schema(&mut conn)?;
    let expires = Timestamp::now().unix_nanos() + 604_800 * 1_000_000_000;
    // The store's transaction size, in rows (five per span here).
    let batch = StoreOptions::default().batch_max_rows;
    let started = Instant::now();
    for chunk in spans.chunks(batch / 5) {
        let tx = conn.transaction()?;
        {
            // The compact tables of the current schema: a trace row per span's trace (each span
            // here is its own trace), its span, its events; no index entries.
            let mut trace_st = tx.prepare_cached(
                "INSERT INTO trace_rows (trace_id, service_name, root_span_id, root_is_true_root, start_ns, end_ns, expires_at) VALUES (?1, 'svc', ?2, 1, ?3, ?4, ?5) RETURNING id",
            )?;
            let mut span_st = tx.prepare_cached(
                "INSERT INTO span_rows (trace, span_id, parent_span_id, name, kind, start_ns, end_ns, status, status_message, attributes, links, service_name, expires_at) VALUES (?1, ?2, ?3, ?4, 'internal', ?5, ?6, 'ok', NULL, ?7, NULL, 'svc', ?8)",
            )?;
            let mut event_st = tx.prepare_cached(
                "INSERT INTO event_rows (trace, trace_id, span_id, ts_ns, name, kind, severity, message, value, unit, attributes, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            // The point's series: found once per transaction, as the writer remembers it.
            let series: i64 = tx.query_row(
                "INSERT INTO metric_series (name, unit, labels) VALUES ('total_tokens', 'tokens', ?1)
                 ON CONFLICT (name, labels) DO UPDATE SET name = excluded.name RETURNING id",
                [r#"{"model_id":"llama-3.1-8b","provider_id":"vllm"}"#],
                |r| r.get(0),
            )?;
            let mut metric_st = tx.prepare_cached(
                "INSERT INTO metric_points (series, ts_ns, value, trace_id, span_id, expires_at) VALUES (?1, ?2, 42.0, ?3, ?4, ?5)",
            )?;
            for s in chunk {
                let (t, id) = (s.trace.to_bytes().to_vec(), s.span.to_bytes().to_vec());
                let (start, end) = (s.start.unix_nanos(), s.end.unix_nanos());
                let key: i64 =
                    trace_st.query_row(params![t, id, start, end, expires], |r| r.get(0))?;
                span_st.execute(params![
                    key,
                    id,
                    s.parent.map(|p| p.to_bytes().to_vec()),
                    "chat_completion",
                    start,
                    end,
                    serde_json::to_string(&s.attributes)?,
                    expires
                ])?;
                event_st.execute(params![
                    key,
                    t,
                    id,
                    start,
                    "log",
                    "log",
                    "info",
                    "upstream answered",
                    None::<f64>,
                    None::<String>,
                    "{}",
                    expires
                ])?;
                let labels = r#"{"model_id":"llama-3.1-8b","provider_id":"vllm"}"#;
                event_st.execute(params![
                    key,
                    t,
                    id,
                    end,
                    "total_tokens",
                    "metric",
                    None::<String>,
                    None::<String>,
                    42.0,
                    "tokens",
                    labels,
                    expires
                ])?;
                metric_st.execute(params![series, s.end.unix_nanos(), t, id, expires])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

#[derive(clap::Parser)]
struct Args {
    /// Spans per round.
    #[arg(long, default_value_t = 50_000)]
    spans: usize,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        spans: n, rounds, ..
    } = clap::Parser::parse();
    let spans = inputs(n);
    println!(
        "ingest of {n} spans (4 events each: span_start, log, metric, span_end), {rounds} rounds"
    );
    println!(
        "{:<8} {:>16} {:>16} {:>8}",
        "round", "baseline spans/s", "tokentrace spans/s", "ratio"
    );
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let dir = tempfile::tempdir()?;
        // Alternate the order so neither side always runs on a warmer machine.
        let (base, tt) = if round % 2 == 0 {
            let b = run_baseline(dir.path(), &spans)?;
            (b, run_tokentrace(dir.path(), &spans)?)
        } else {
            let t = run_tokentrace(dir.path(), &spans)?;
            (run_baseline(dir.path(), &spans)?, t)
        };
        let (b, t) = (n as f64 / base.as_secs_f64(), n as f64 / tt.as_secs_f64());
        ratios.push(t / b);
        println!("{round:<8} {b:>16.0} {t:>16.0} {:>8.2}", t / b);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio tokentrace / baseline: {:.2}",
        ratios[ratios.len() / 2]
    );
    Ok(())
}
