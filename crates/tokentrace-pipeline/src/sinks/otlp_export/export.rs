//! OTLP/HTTP delivery: endpoint and headers from the config and the standard environment
//! variables, gzip, retries with backoff, drop accounting, rate-limited warnings.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where and how to send one signal.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// Full URL (`…/v1/traces` or `…/v1/metrics`).
    pub url: String,
    /// Extra headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Compress bodies with gzip (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// Time limit of one HTTP request.
    pub timeout: Duration,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    /// Attempts per export before the data is dropped.
    pub max_attempts: u32,
    /// Nice value of the exporter thread (see [`crate::thread::set_nice`]).
    pub thread_nice: i32,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1,k2=v2` lists (W3C baggage style, percent-encoded values).
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (percent_decode(k), percent_decode(v.trim())))
        })
        .collect()
}

impl ExportConfig {
    /// The config of `signal` (`traces` or `metrics`): `OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`
    /// (used as is) or `{endpoint}/v1/{signal}`, headers, compression and timeout from the
    /// standard variables (signal-specific first).
    pub fn from_env(endpoint: &str, signal: &str, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let upper = signal.to_ascii_uppercase();
        let get = |generic: &str| {
            env(&format!("OTEL_EXPORTER_OTLP_{upper}_{generic}"))
                .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{generic}")))
                .filter(|v| !v.trim().is_empty())
        };
        let url = env(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT"))
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| format!("{}/v1/{signal}", endpoint.trim_end_matches('/')));
        let timeout = get("TIMEOUT")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        Self {
            url,
            headers: get("HEADERS").map(|h| pairs(&h)).unwrap_or_default(),
            gzip: get("COMPRESSION").is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip")),
            timeout,
            resource_attributes: env("OTEL_RESOURCE_ATTRIBUTES")
                .map(|r| pairs(&r))
                .unwrap_or_default(),
            max_attempts: 5,
            thread_nice: 0,
        }
    }
}

/// Counters of one exporter (also published on `/metrics`).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Items delivered.
    pub exported: AtomicU64,
    /// Items dropped (queue full, or undeliverable after retries).
    pub dropped: AtomicU64,
    /// Failed HTTP attempts.
    pub errors: AtomicU64,
}

/// Sends encoded requests.
pub(super) struct Exporter {
    client: Option<reqwest::blocking::Client>,
    config: ExportConfig,
    pub stats: Arc<ExportStats>,
    what: &'static str,
    last_warning: Option<Instant>,
}

enum Attempt {
    Done,
    Retry(Option<Duration>, String),
    Fail(String),
}

impl Exporter {
    pub fn new(config: ExportConfig, stats: Arc<ExportStats>, what: &'static str) -> Self {
        let client = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| tracing::error!("otlp {what} exporter: cannot build its HTTP client: {e}"))
            .ok();
        Self {
            client,
            config,
            stats,
            what,
            last_warning: None,
        }
    }

    /// Warns at most once a minute.
    pub fn warn(&mut self, message: &str) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!("otlp {} exporter: {message}", self.what);
        }
    }

    fn attempt(&self, body: &[u8]) -> Attempt {
        let Some(client) = &self.client else {
            return Attempt::Fail("no HTTP client".into());
        };
        let mut req = client
            .post(&self.config.url)
            .header("content-type", "application/x-protobuf")
            .body(body.to_vec());
        if self.config.gzip {
            req = req.header("content-encoding", "gzip");
        }
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send() {
            Ok(res) if res.status().is_success() => Attempt::Done,
            Ok(res) => {
                let status = res.status().as_u16();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let msg = format!("{} answered {status}", self.config.url);
                if matches!(status, 429 | 502 | 503 | 504) {
                    Attempt::Retry(retry_after, msg)
                } else {
                    Attempt::Fail(msg)
                }
            }
            Err(e) => Attempt::Retry(None, format!("{}: {e}", self.config.url)),
        }
    }

    /// Delivers one request carrying `items` items, retrying with backoff within `budget`;
    /// counts the items as exported or dropped.
    pub fn send(&mut self, body: Vec<u8>, items: u64, budget: Duration) {
        let body = if self.config.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            match gz.write_all(&body).and_then(|()| gz.finish()) {
                Ok(b) => b,
                Err(_) => body,
            }
        } else {
            body
        };
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=self.config.max_attempts {
            match self.attempt(&body) {
                Attempt::Done => {
                    self.stats.exported.fetch_add(items, Ordering::Relaxed);
                    return;
                }
                Attempt::Fail(msg) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.drop_items(items, &msg);
                    return;
                }
                Attempt::Retry(after, msg) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let wait = after.unwrap_or(backoff).min(Duration::from_secs(5));
                    if attempt == self.config.max_attempts || started.elapsed() + wait > budget {
                        self.drop_items(items, &msg);
                        return;
                    }
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Counts items that will not be delivered, with a rate-limited warning.
    pub fn drop_items(&mut self, items: u64, why: &str) {
        self.stats.dropped.fetch_add(items, Ordering::Relaxed);
        let total = self.stats.dropped.load(Ordering::Relaxed);
        self.warn(&format!(
            "dropped {items} {} ({why}); {total} dropped so far",
            self.what
        ));
    }
}

/// The handle of an exporter thread: its queue and its join handle.
pub(super) struct ExportThread<M> {
    tx: Option<std::sync::mpsc::SyncSender<M>>,
    thread: Option<std::thread::JoinHandle<()>>,
    sink: &'static str,
}

impl<M: Send + 'static> ExportThread<M> {
    /// Starts `run` on a thread named `name` with nice value `nice`, fed by a queue of
    /// `capacity` messages.
    pub fn start(
        sink: &'static str,
        name: &str,
        nice: i32,
        capacity: usize,
        run: impl FnOnce(std::sync::mpsc::Receiver<M>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::thread::set_nice(nice);
                run(rx)
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            sink,
        })
    }

    /// Queues a message without waiting; false when the queue is full or the thread stopped.
    pub fn try_send(&self, msg: M) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// Asks the thread to export what it holds and waits until it has.
    pub fn flush(
        &self,
        make: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> M,
    ) -> Result<(), crate::SinkError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        tx.send(make(reply_tx)).map_err(|_| crate::SinkError {
            sink: self.sink,
            message: "exporter thread stopped".into(),
        })?;
        let _ = reply_rx.recv();
        Ok(())
    }

    /// Closes the queue (the thread makes a last export) and joins the thread.
    pub fn stop(&mut self) -> Result<(), crate::SinkError> {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err(crate::SinkError {
                sink: self.sink,
                message: "exporter thread panicked".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_headers_and_compression_from_the_environment() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=s%3Dcret, x-team = llm".to_string()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://traces:4318/custom".to_string()),
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION" => Some("gzip".to_string()),
            "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod".to_string()),
            _ => None,
        };
        let t = ExportConfig::from_env("http://collector:4318/", "traces", &env);
        assert_eq!(t.url, "http://traces:4318/custom");
        assert_eq!(
            t.headers,
            [
                ("api-key".to_string(), "s=cret".to_string()),
                ("x-team".to_string(), "llm".to_string())
            ]
        );
        assert!(!t.gzip);
        let m = ExportConfig::from_env("http://collector:4318/", "metrics", &env);
        assert_eq!(m.url, "http://collector:4318/v1/metrics");
        assert!(m.gzip);
        assert_eq!(
            m.resource_attributes,
            [("deployment.environment".to_string(), "prod".to_string())]
        );
    }
}
