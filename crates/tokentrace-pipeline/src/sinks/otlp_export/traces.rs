//! `otel_trace`: finished spans, with their logs and metrics as span events, batched and sent to
//! `{endpoint}/v1/traces`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
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
/// Spans waiting for export at most; beyond, new spans are dropped and counted. Their bytes
/// (encoded) are bounded too (`otel_queue_max_bytes`, 8 MiB by default): large spans are
/// dropped as soon as many small ones. The spans being sent are outside the queue, so at most
/// twice that is held.
const QUEUE: usize = 8_192;

enum Msg {
    /// A batch is full: send it now.
    Full,
    /// Send everything and answer.
    Flush(SyncSender<()>),
}

/// A span's service name and its encoded `Span` message.
type Encoded = (String, Vec<u8>);

/// Spans waiting for the exporter thread. The pipeline thread appends under the lock and wakes
/// the exporter only when a batch is full; otherwise the exporter picks them up on its timer. So
/// an exported span costs the pipeline an encode and a push, not a wake-up of another thread.
#[derive(Default)]
struct Queue {
    spans: Vec<Encoded>,
    /// Their encoded bytes.
    bytes: usize,
    /// When the oldest waiting span arrived.
    since: Option<Instant>,
}

/// The `otel_trace` sink.
pub struct OtlpTraceSink {
    queue: Arc<Mutex<Queue>>,
    max_bytes: usize,
    thread: ExportThread<Msg>,
    stats: Arc<ExportStats>,
    default_service: String,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl OtlpTraceSink {
    /// Starts the exporter thread; at most `max_bytes` of encoded spans wait for it.
    pub fn start(
        config: ExportConfig,
        service_name: &str,
        max_bytes: usize,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(ExportStats::default());
        let queue = Arc::new(Mutex::new(Queue::default()));
        let thread_stats = stats.clone();
        let thread_queue = queue.clone();
        // The blocking HTTP client lives and dies on this thread, never on the async runtime.
        let nice = config.thread_nice;
        let thread =
            ExportThread::start("otel_trace", "tokentrace-otlp-traces", nice, 4, move |rx| {
                run(
                    rx,
                    &thread_queue,
                    Exporter::new(config.clone(), thread_stats, "spans"),
                    config,
                )
            })?;
        Ok(Self {
            queue,
            max_bytes,
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

fn run(rx: Receiver<Msg>, queue: &Mutex<Queue>, mut exporter: Exporter, config: ExportConfig) {
    loop {
        // Wake when the oldest waiting span has waited DELAY, or when told to.
        let wait = lock(queue)
            .since
            .map_or(DELAY, |t| DELAY.saturating_sub(t.elapsed()));
        let (reply, last) = match rx.recv_timeout(wait) {
            Ok(Msg::Full) => (None, false),
            Ok(Msg::Flush(reply)) => (Some(reply), false),
            Err(RecvTimeoutError::Timeout) => {
                if lock(queue).since.is_none_or(|t| t.elapsed() < DELAY) {
                    continue;
                }
                (None, false)
            }
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        // At shutdown, a last attempt with a short budget so stopping never hangs.
        let budget = Duration::from_secs(if last { 5 } else { 30 });
        let spans = {
            let mut q = lock(queue);
            q.since = None;
            q.bytes = 0;
            std::mem::take(&mut q.spans)
        };
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            send(&mut exporter, &config, spans.by_ref().take(BATCH), budget);
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        if last {
            return;
        }
    }
}

fn send(
    exporter: &mut Exporter,
    config: &ExportConfig,
    spans: impl Iterator<Item = Encoded>,
    budget: Duration,
) {
    let mut by_service: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut n = 0u64;
    for (service, span) in spans {
        by_service.entry(service).or_default().push(span);
        n += 1;
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
        let full = {
            let mut q = lock(&self.queue);
            // One span larger than the whole bound still goes into an empty queue.
            if q.spans.len() >= QUEUE
                || (!q.spans.is_empty() && q.bytes + encoded.len() > self.max_bytes)
            {
                None
            } else {
                q.since.get_or_insert_with(Instant::now);
                q.bytes += encoded.len();
                q.spans.push((service, encoded));
                Some(q.spans.len() == BATCH)
            }
        };
        match full {
            // A full queue means the exporter is retrying; it looks again when it is done.
            Some(true) => {
                let _ = self.thread.try_send(Msg::Full);
            }
            Some(false) => {}
            None => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        "otlp spans exporter: queue full, {dropped} spans dropped so far"
                    );
                }
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use prost::Message;
    use tokentrace_model::{Attributes, SpanId, SpanKind, SpanStatus, Timestamp, TraceId};
    use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;

    /// An OTLP/HTTP endpoint that holds its first answer until `release` is set and then answers
    /// everything at once; it counts the spans it decoded.
    fn held_collector(release: Arc<AtomicBool>) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (release, counted) = (release.clone(), counted.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end().to_ascii_lowercase();
                            if line.is_empty() {
                                break;
                            }
                            if let Some(v) = line.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        while !release.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
                        let spans: usize = request
                            .resource_spans
                            .iter()
                            .flat_map(|r| &r.scope_spans)
                            .map(|s| s.spans.len())
                            .sum();
                        counted.fetch_add(spans as u64, Ordering::SeqCst);
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .unwrap();
                    }
                });
            }
        });
        (url, received)
    }

    fn span() -> SpanRecord {
        let start = Timestamp::now();
        SpanRecord {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: "POST /v1/chat/completions".into(),
            kind: SpanKind::Server,
            start_time: start,
            end_time: Some(start),
            status: Some(SpanStatus::Ok),
            status_message: None,
            attributes: Attributes::new(),
            events: Vec::new(),
            links: Vec::new(),
            service_name: None,
            expires_at: None,
        }
    }

    /// One attempt per batch, a minute's timeout: a held collector holds the exporter.
    fn held_config(url: String) -> ExportConfig {
        ExportConfig {
            url,
            headers: Vec::new(),
            gzip: false,
            timeout: Duration::from_secs(60),
            resource_attributes: Vec::new(),
            max_attempts: 1,
            thread_nice: 0,
        }
    }

    #[test]
    fn a_stalled_collector_bounds_the_queue_and_every_span_is_exported_or_counted_dropped() {
        let release = Arc::new(AtomicBool::new(false));
        let (url, received) = held_collector(release.clone());
        let config = held_config(url);
        let mut sink = OtlpTraceSink::start(config, "svc", 8 << 20).unwrap();
        let stats = sink.stats();
        // The first full batch goes out and hangs; the queue behind it fills and then refuses.
        let sent = 3 * QUEUE as u64;
        for _ in 0..sent {
            sink.span_ended(&span());
        }
        let dropped = stats.dropped.load(Ordering::SeqCst);
        assert!(
            dropped >= sent - 2 * QUEUE as u64,
            "at most the queue and one send's worth are held, {dropped} dropped"
        );
        release.store(true, Ordering::SeqCst);
        sink.shutdown().unwrap();
        let exported = stats.exported.load(Ordering::SeqCst);
        assert_eq!(exported, received.load(Ordering::SeqCst));
        assert_eq!(exported + stats.dropped.load(Ordering::SeqCst), sent);
        assert!(
            exported >= QUEUE as u64,
            "the held queue was sent at shutdown"
        );
    }

    #[test]
    fn large_spans_fill_the_queue_by_their_bytes() {
        let release = Arc::new(AtomicBool::new(false));
        let (url, received) = held_collector(release.clone());
        let config = held_config(url);
        let mut sink = OtlpTraceSink::start(config, "svc", 2 << 20).unwrap();
        let stats = sink.stats();
        let mut big = span();
        big.attributes
            .insert("content".into(), "x".repeat(1 << 20).into());
        // 64 spans of a little over 1 MiB encoded: a queue of 2 MiB (as configured) takes one
        // of them at a time; the exporter's timer may have taken one or two into the send that
        // hangs; the rest are dropped (with the default 8 MiB about 57 would be).
        for _ in 0..64 {
            sink.span_ended(&big);
        }
        let dropped = stats.dropped.load(Ordering::SeqCst);
        assert!(
            (60..=63).contains(&dropped),
            "{dropped} of 64 dropped: the queue holds about 2 MiB"
        );
        release.store(true, Ordering::SeqCst);
        sink.shutdown().unwrap();
        assert_eq!(
            stats.exported.load(Ordering::SeqCst) + stats.dropped.load(Ordering::SeqCst),
            64
        );
        assert_eq!(
            stats.exported.load(Ordering::SeqCst),
            received.load(Ordering::SeqCst)
        );
    }
}
