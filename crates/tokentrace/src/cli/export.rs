//! `tokentrace export`: whole traces (every span with its kind, status, links, service and
//! events) as OTLP/JSON lines or as one span per JSON line; `tokentrace import` sends either to
//! a tokentrace server or any OTLP/HTTP receiver. Ids are kept, so importing twice stores
//! nothing twice.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;
use tokentrace_model::SpanRecord;
use tokentrace_model::query::SpanLine;
use tokentrace_otlp::from_model::trace_request;
use tokentrace_otlp::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokentrace_otlp::traces_to_spans;

use super::source::Source;
use super::{CliError, CliResult, FilterArgs, SourceArgs};

/// What `export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One OTLP/JSON `ExportTraceServiceRequest` per line (what an OpenTelemetry Collector's
    /// file exporter writes and its OTLP JSON file receiver reads).
    OtlpJson,
    /// One span per line, with its events and links (for jq and scripts).
    Jsonl,
}

/// Arguments of `tokentrace export`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tokentrace export --since 24h > day.otlp.jsonl
  tokentrace export --model gpt-4o --format jsonl --output gpt4o.jsonl
  tokentrace export --url http://prod:8321 --where user.id=alice > alice.otlp.jsonl")]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::OtlpJson)]
    pub format: Format,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Traces read per page (a page's spans must fit the answer limit).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub page: u16,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// Arguments of `tokentrace import`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Reads what `tokentrace export` writes (either format, even mixed) and sends it as OTLP
protobuf to URL/v1/traces: a tokentrace server, or any OTLP/HTTP receiver such as a Collector
on :4318. Ids are kept: importing a file twice stores nothing twice.

Examples:
  tokentrace import day.otlp.jsonl
  tokentrace import day.otlp.jsonl --url http://127.0.0.1:4318
  cat alice.jsonl | tokentrace import - --url http://staging:8321"
)]
pub struct ImportArgs {
    /// The file, or - for standard input.
    pub file: PathBuf,
    /// Where to send: a tokentrace server or an OTLP/HTTP receiver.
    #[arg(long, env = "TOKENTRACE_URL", default_value = "http://127.0.0.1:8321")]
    pub url: String,
    /// Key sent as `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "TOKENTRACE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// The project the traces go to (sent as `X-Tokentrace-Project`; one of the key's).
    #[arg(long, env = "TOKENTRACE_PROJECT", value_name = "NAME")]
    pub project: Option<String>,
    /// Spans per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub batch: u16,
}

fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs `tokentrace export`.
pub fn run_export(args: ExportArgs) -> CliResult {
    let source = Source::open(&args.source)?;
    let mut req = args.filter.request()?;
    req.limit = Some(i64::from(args.page));
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).map_err(|e| {
                CliError(format!("cannot write {}: {e}", path.display()))
            })?))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let bar = spinner("exporting");
    let (mut traces, mut spans) = (0u64, 0u64);
    loop {
        let page = source.export(&req)?;
        traces += page.traces;
        spans += page.spans;
        let write = |out: &mut Box<dyn Write>, line: String| {
            writeln!(out, "{line}").map_err(|e| CliError(format!("cannot write: {e}")))
        };
        match args.format {
            Format::OtlpJson => {
                if page.spans > 0 {
                    write(&mut out, serde_json::to_string(&page.otlp)?)?;
                }
            }
            Format::Jsonl => {
                for s in traces_to_spans(&page.otlp, None).items {
                    write(&mut out, serde_json::to_string(&SpanLine::from_record(&s))?)?;
                }
            }
        }
        bar.set_message(format!("exporting: {traces} traces, {spans} spans"));
        match page.next {
            Some(next) => req.cursor = Some(next),
            None => break,
        }
    }
    out.flush()
        .map_err(|e| CliError(format!("cannot write: {e}")))?;
    bar.finish_and_clear();
    let to = args
        .output
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    eprintln!("exported {traces} traces, {spans} spans to {to}");
    Ok(())
}

/// Sends OTLP export requests, retrying what the receiver asks to retry.
struct Sender {
    url: String,
    key: Option<String>,
    project: Option<String>,
    http: reqwest::blocking::Client,
    sent: u64,
    rejected: u64,
}

impl Sender {
    fn send(&mut self, spans: &[SpanRecord]) -> Result<(), CliError> {
        if spans.is_empty() {
            return Ok(());
        }
        let body = trace_request(spans).encode_to_vec();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .post(&self.url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone());
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            if let Some(p) = &self.project {
                req = req.header("x-tokentrace-project", p);
            }
            let resp = req
                .send()
                .map_err(|e| CliError(format!("cannot reach {}: {e}", self.url)))?;
            let status = resp.status();
            if status.is_success() {
                let bytes = resp.bytes().unwrap_or_default();
                let rejected = ExportTraceServiceResponse::decode(bytes.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_spans.max(0) as u64);
                if rejected > 0 {
                    eprintln!("tokentrace: {} rejected {rejected} spans", self.url);
                }
                self.rejected += rejected;
                self.sent += spans.len() as u64 - rejected.min(spans.len() as u64);
                return Ok(());
            }
            let retry = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            if retry && attempt < 10 {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(30);
                std::thread::sleep(Duration::from_secs(wait));
                continue;
            }
            let text = resp.text().unwrap_or_default();
            return Err(CliError(format!(
                "{} answered {status}: {}",
                self.url,
                text.chars().take(500).collect::<String>()
            )));
        }
    }
}

/// The spans of one line of either format.
fn line_spans(line: &str) -> Result<Vec<SpanRecord>, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if value.get("resourceSpans").is_some() || value.get("resource_spans").is_some() {
        let req: ExportTraceServiceRequest =
            serde_json::from_value(value).map_err(|e| format!("not OTLP/JSON: {e}"))?;
        let converted = traces_to_spans(&req, None);
        if let Some(why) = converted.errors.first() {
            return Err(why.clone());
        }
        return Ok(converted.items);
    }
    let span: SpanLine = serde_json::from_value(value).map_err(|e| format!("not a span: {e}"))?;
    Ok(vec![span.into_record()?])
}

/// Runs `tokentrace import`.
pub fn run_import(args: ImportArgs) -> CliResult {
    let base = args.url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(CliError(format!(
            "--url {:?}: expected http://host:port or https://host:port",
            args.url
        )));
    }
    let (input, size): (Box<dyn Read>, u64) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), 0)
    } else {
        let f = File::open(&args.file)
            .map_err(|e| CliError(format!("cannot read {}: {e}", args.file.display())))?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), size)
    };
    let bar = if size > 0 {
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        spinner("importing")
    };
    let mut sender = Sender {
        url: format!("{base}/v1/traces"),
        key: args.api_key,
        project: args.project,
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        sent: 0,
        rejected: 0,
    };
    let mut pending = Vec::new();
    let mut bad = 0u64;
    let mut reader = BufReader::new(input);
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| CliError(format!("cannot read {}: {e}", args.file.display())))?;
        if n == 0 {
            break;
        }
        number += 1;
        bar.inc(n as u64);
        if line.trim().is_empty() {
            continue;
        }
        match line_spans(&line) {
            Ok(spans) => pending.extend(spans),
            Err(why) => {
                bad += 1;
                if bad <= 10 {
                    bar.suspend(|| eprintln!("tokentrace: line {number}: {why}; skipped"));
                }
            }
        }
        if pending.len() >= usize::from(args.batch) {
            sender.send(&pending)?;
            pending.clear();
            bar.set_message(format!("{} spans sent", sender.sent));
        }
    }
    sender.send(&pending)?;
    bar.finish_and_clear();
    eprintln!(
        "imported {} spans into {}{}{}",
        sender.sent,
        sender.url,
        if sender.rejected > 0 {
            format!("; {} rejected", sender.rejected)
        } else {
            String::new()
        },
        if bad > 0 {
            format!("; {bad} lines skipped")
        } else {
            String::new()
        }
    );
    if bad > 0 || sender.rejected > 0 {
        return Err(CliError(
            "some of the file was not imported (see above)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokentrace_model::{
        AttrValue, Attributes, LogSeverity, SpanEvent, SpanEventBody, SpanId, SpanKind, SpanLink,
        SpanStatus, Timestamp, TraceId,
    };

    use super::*;

    #[test]
    fn a_span_line_keeps_nanoseconds_events_and_links() {
        let trace = TraceId::random();
        let span = SpanId::random();
        let t = Timestamp::from_unix_nanos(1_764_000_000_123_456_789);
        let record = SpanRecord {
            trace_id: trace,
            span_id: span,
            parent_span_id: None,
            name: "n".into(),
            kind: SpanKind::Server,
            start_time: t,
            end_time: Some(t),
            status: Some(SpanStatus::Ok),
            status_message: None,
            attributes: [("a".to_string(), AttrValue::Int(1))].into_iter().collect(),
            events: vec![SpanEvent {
                trace_id: Some(trace),
                span_id: Some(span),
                timestamp: t,
                name: "log".into(),
                body: SpanEventBody::Log {
                    severity: LogSeverity::Error,
                    message: "m".into(),
                },
                attributes: Attributes::new(),
                expires_at: None,
            }],
            links: vec![SpanLink {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                attributes: Attributes::new(),
            }],
            service_name: Some("s".into()),
            expires_at: None,
        };
        let line = serde_json::to_string(&SpanLine::from_record(&record)).unwrap();
        assert_eq!(line_spans(&line).unwrap(), vec![record]);
        assert!(line_spans("{\"trace_id\": 1}").is_err());
        assert!(line_spans("not json").is_err());
    }
}
