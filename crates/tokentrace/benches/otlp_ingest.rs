//! OTLP ingest into SQLite: batches of 512 spans with 8 attributes each, posted over HTTP by this
//! (second) process to `tokentrace serve` (sink sqlite), protobuf and JSON, against a raw rusqlite
//! baseline that inserts the same spans into the same schema in transactions of 512, in the same
//! run. Reports spans/s, the ratio, and the server's peak RSS.
//!
//! Run: `cargo bench -p tokentrace --bench otlp_ingest` (options: `-- --batches 200 --connections 4`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use prost::Message;
use rusqlite::params;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::any_value;
use tokentrace_otlp::proto::resource::v1::Resource;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

mod common;

use common::{Error, free_port, kv, terminate, wait_listening};

#[derive(clap::Parser)]
struct Args {
    /// Export requests of 512 spans each.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

const BATCH: usize = 512;

fn request(batch: usize) -> ExportTraceServiceRequest {
    let now = 1_795_514_400_000_000_000u64;
    let spans = (0..BATCH)
        .map(|i| {
            let n = (batch * BATCH + i) as u64 + 1;
            let mut trace_id = vec![0u8; 16];
            trace_id[..8].copy_from_slice(&(n / 8 + 1).to_be_bytes());
            trace_id[8] = 0xab;
            let s = |v: &str| any_value::Value::StringValue(v.into());
            Span {
                trace_id,
                span_id: n.to_be_bytes().to_vec(),
                parent_span_id: if n.is_multiple_of(8) {
                    vec![]
                } else {
                    ((n / 8) * 8).max(1).to_be_bytes().to_vec()
                },
                name: "chat llama-3.1-8b".into(),
                kind: 3,
                start_time_unix_nano: now + n * 1_000,
                end_time_unix_nano: now + n * 1_000 + 250_000_000,
                attributes: vec![
                    kv("gen_ai.operation.name", s("chat")),
                    kv("gen_ai.provider.name", s("vllm")),
                    kv("gen_ai.request.model", s("llama-3.1-8b")),
                    kv("gen_ai.request.max_tokens", any_value::Value::IntValue(512)),
                    kv(
                        "gen_ai.request.temperature",
                        any_value::Value::DoubleValue(0.7),
                    ),
                    kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(42)),
                    kv(
                        "gen_ai.usage.output_tokens",
                        any_value::Value::IntValue(128),
                    ),
                    kv("server.address", s("gpu-1.internal")),
                ],
                status: Some(Status {
                    code: 1,
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("bench".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn main() -> Result<(), Error> {
    let Args {
        batches,
        connections,
    } = common::args();
    let requests: Vec<ExportTraceServiceRequest> = (0..batches).map(request).collect();
    let total = batches * BATCH;
    println!(
        "OTLP ingest of {total} spans in batches of {BATCH} (8 attributes each), {connections} connections"
    );

    let dir = tempfile::tempdir()?;
    let base = baseline(&dir.path().join("baseline.db"), &requests)?;
    println!(
        "{:<34} {:>12} {:>8} {:>14}",
        "path", "spans/s", "ratio", "server peak RSS"
    );
    println!(
        "{:<34} {:>12.0} {:>8} {:>14}",
        "baseline (raw rusqlite, one thread)", base, "1.00", "-"
    );
    for (label, json) in [
        ("tokentrace OTLP/protobuf over HTTP", false),
        ("tokentrace OTLP/JSON over HTTP", true),
    ] {
        let bodies: Vec<Bytes> = requests
            .iter()
            .map(|r| {
                if json {
                    serde_json::to_vec(r).map(Bytes::from)
                } else {
                    Ok(Bytes::from(r.encode_to_vec()))
                }
            })
            .collect::<Result<_, _>>()?;
        let (rate, rss) = through_tokentrace(
            &dir.path().join(if json { "json" } else { "pb" }),
            bodies,
            json,
            connections,
            total,
        )?;
        println!(
            "{label:<34} {rate:>12.0} {:>8.2} {:>11.1} MiB",
            rate / base,
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// The same spans (span row, trace row) inserted with prepared statements, 512 per transaction.
fn baseline(db: &std::path::Path, requests: &[ExportTraceServiceRequest]) -> Result<f64, Error> {
    let mut conn = rusqlite::Connection::open(db)?;
    tokentrace_store::init_schema(&mut conn)?;
    let expires = tokentrace_model::Timestamp::now().unix_nanos() + 604_800 * 1_000_000_000;
    let started = Instant::now();
    let mut n = 0;
    for req in requests {
        let spans = tokentrace_otlp::traces_to_spans(req, None).items;
        let tx = conn.transaction()?;
        {
            // The compact tables of the current schema; each span here is its own trace.
            let mut trace_st = tx.prepare_cached("INSERT INTO trace_rows (trace_id, service_name, root_span_id, root_is_true_root, start_ns, end_ns, expires_at) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6) RETURNING id")?;
            let mut span_st = tx.prepare_cached("INSERT INTO span_rows (trace, span_id, parent_span_id, name, kind, start_ns, end_ns, status, status_message, attributes, links, service_name, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, NULL, ?10, ?11)")?;
            for s in &spans {
                let (t, id) = (
                    s.trace_id.to_bytes().to_vec(),
                    s.span_id.to_bytes().to_vec(),
                );
                let start = s.start_time.unix_nanos();
                let end = s.end_time.map(|e| e.unix_nanos());
                let key: i64 = trace_st
                    .query_row(params![t, s.service_name, id, start, end, expires], |r| {
                        r.get(0)
                    })?;
                span_st.execute(params![
                    key,
                    id,
                    s.parent_span_id.map(|p| p.to_bytes().to_vec()),
                    s.name,
                    s.kind.as_str(),
                    start,
                    end,
                    "ok",
                    serde_json::to_string(&s.attributes)?,
                    s.service_name,
                    expires
                ])?;
                n += 1;
            }
        }
        tx.commit()?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn through_tokentrace(
    dir: &std::path::Path,
    bodies: Vec<Bytes>,
    json: bool,
    connections: usize,
    total: usize,
) -> Result<(f64, u64), Error> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let mut server = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--port", &port.to_string()])
        .env("TELEMETRY_SINKS", "sqlite")
        .env("SQLITE_STORE_DIR", dir)
        .env("TOKENTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_listening(port)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let content_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let bodies = Arc::new(bodies);
    let started = Instant::now();
    rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (bodies, next) = (bodies.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(conn);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    loop {
                        let req = hyper::Request::post("/v1/traces")
                            .header("host", "127.0.0.1")
                            .header("content-type", content_type)
                            .body(Full::new(body.clone()))?;
                        sender.ready().await?;
                        let res = sender.send_request(req).await?;
                        let status = res.status().as_u16();
                        res.into_body().collect().await?;
                        match status {
                            200 => break,
                            503 => tokio::time::sleep(Duration::from_millis(10)).await,
                            s => return Err::<(), Error>(format!("status {s}").into()),
                        }
                    }
                }
                Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<(), Error>(())
    })?;
    // Committed, not just accepted: wait until the rows are in the file.
    let conn = rusqlite::Connection::open(dir.join("trace_store.db"))?;
    loop {
        let n: i64 = conn.query_row("SELECT count(*) FROM spans", [], |r| r.get(0))?;
        if n as usize >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let rss_kib = common::status_kib(server.id(), "VmHWM:");
    terminate(&mut server)?;
    Ok((rate, rss_kib))
}
