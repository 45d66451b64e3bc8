//! `otel_trace`: finished spans, with their logs and metrics as span events, batched and sent to
//! `{endpoint}/v1/traces`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use tokentrace_model::{SpanEvent, SpanRecord};
use tokentrace_otlp::proto::common::v1::InstrumentationScope;
use tokentrace_otlp::{encode, from_model};

use super::export::{ExportConfig, ExportStats, ExportThread, Exporter};
use crate::{Sink, SinkError};

/// Spans per export request.
const BATCH: usize = 512;
/// Longest a span waits before its batch is sent.
const DELAY: Duration = Duration::from_secs(1);
/// Spans waiting for export at most; beyond, new spans are dropped and counted.
const QUEUE: usize = 8_192;

enum Msg {
    /// A span's service name and its encoded `Span` message.
    Span(Box<(String, Vec<u8>)>),
    Flush(SyncSender<()>),
}

/// The `otel_trace` sink.
pub struct OtlpTraceSink {
    thread: ExportThread<Msg>,
    stats: Arc<ExportStats>,
    default_service: String,
}

impl OtlpTraceSink {
    /// Starts the exporter thread.
    pub fn start(config: ExportConfig, service_name: &str) -> std::io::Result<Self> {
        let stats = Arc::new(ExportStats::default());
        let thread_stats = stats.clone();
        // The blocking HTTP client lives and dies on this thread, never on the async runtime.
        let nice = config.thread_nice;
        let thread = ExportThread::start(
            "otel_trace",
            "tokentrace-otlp-traces",
            nice,
            QUEUE,
            move |rx| {
                run(
                    rx,
                    Exporter::new(config.clone(), thread_stats, "spans"),
                    config,
                )
            },
        )?;
        Ok(Self {
            thread,
            stats,
            default_service: service_name.to_string(),
        })
    }

    /// The exporter's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }
}

fn run(rx: Receiver<Msg>, mut exporter: Exporter, config: ExportConfig) {
    let mut pending: Vec<(String, Vec<u8>)> = Vec::new();
    let mut first: Option<Instant> = None;
    loop {
        let wait = first.map_or(Duration::from_secs(3600), |t| {
            DELAY.saturating_sub(t.elapsed())
        });
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(s)) => {
                first.get_or_insert_with(Instant::now);
                pending.push(*s);
                if pending.len() >= BATCH {
                    send(
                        &mut exporter,
                        &config,
                        &mut pending,
                        Duration::from_secs(30),
                    );
                    first = None;
                }
            }
            Ok(Msg::Flush(reply)) => {
                send(
                    &mut exporter,
                    &config,
                    &mut pending,
                    Duration::from_secs(30),
                );
                first = None;
                let _ = reply.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                send(
                    &mut exporter,
                    &config,
                    &mut pending,
                    Duration::from_secs(30),
                );
                first = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Shutdown: a last attempt, with a short budget so stopping never hangs.
                send(&mut exporter, &config, &mut pending, Duration::from_secs(5));
                return;
            }
        }
    }
}

fn send(
    exporter: &mut Exporter,
    config: &ExportConfig,
    pending: &mut Vec<(String, Vec<u8>)>,
    budget: Duration,
) {
    if pending.is_empty() {
        return;
    }
    let mut by_service: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let n = pending.len() as u64;
    for (service, span) in pending.drain(..) {
        by_service.entry(service).or_default().push(span);
    }
    let scope = InstrumentationScope {
        name: "tokentrace".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    // An `ExportTraceServiceRequest`: one `ResourceSpans` per service.
    let mut body = Vec::new();
    for (service, spans) in by_service {
        let resource = from_model::resource(&service, &config.resource_attributes);
        encode::resource_spans(&resource, &scope, &spans, &mut body);
    }
    exporter.send(body, n, budget);
}

impl Sink for OtlpTraceSink {
    fn name(&self) -> &'static str {
        "otel_trace"
    }

    fn wants_span_events(&self) -> bool {
        true
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        // An unfinished span has no end to export; its late end (if any) is exported.
        if span.end_time.is_none() {
            return;
        }
        let service = span
            .service_name
            .clone()
            .unwrap_or_else(|| self.default_service.clone());
        let mut encoded = Vec::with_capacity(512);
        encode::span(span, &mut encoded);
        let msg = Msg::Span(Box::new((service, encoded)));
        if !self.thread.try_send(msg) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let dropped = self.stats.dropped.load(Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!("otlp spans exporter: queue full, {dropped} spans dropped so far");
            }
        }
    }

    fn event(&mut self, _event: &SpanEvent) {}

    fn sync(&mut self) -> Result<(), SinkError> {
        self.thread.flush(Msg::Flush)
    }

    fn shutdown(&mut self) -> Result<(), SinkError> {
        self.thread.stop()
    }
}
