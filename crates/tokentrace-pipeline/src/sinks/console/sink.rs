//! Writes each trace as a tree once its root span ends (parent above children, durations
//! aligned, attributes under each span; see [`super::group`] and [`super::tree`]), and a line
//! per log and metric as it arrives. Colour only when asked for (a terminal without `NO_COLOR`).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokentrace_config::ColorChoice;
use tokentrace_model::{
    Attributes, LogSeverity, MetricPoint, SpanEvent, SpanEventBody, SpanRecord, Timestamp,
};

use super::group::{self, Grouper, OwnedSpan};
use super::tree::{self, CYAN, DIM, RED, TreeStyle, YELLOW, truncate};
use crate::{Sink, SinkError};

/// Longest a trace's spans wait for its root before they are printed without it.
const ROOT_WAIT: Duration = Duration::from_secs(5);
/// Most spans held for their roots.
const MAX_HELD: usize = 10_000;

/// Prints telemetry as it arrives.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    color: bool,
    max_value_len: usize,
    width: usize,
    grouper: Grouper,
    failed: bool,
}

impl ConsoleSink {
    /// A sink writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, color: bool, max_value_len: usize) -> Self {
        Self {
            out,
            color,
            max_value_len: max_value_len.max(8),
            width: 120,
            grouper: Grouper::new(MAX_HELD, ROOT_WAIT),
            failed: false,
        }
    }

    /// A sink writing to stderr, with colour per `choice` (`auto`: a terminal and no `NO_COLOR`).
    pub fn stderr(choice: ColorChoice, max_value_len: usize) -> Self {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        };
        let mut sink = Self::new(Box::new(std::io::stderr()), color, max_value_len);
        if let Ok(size) = rustix::termios::tcgetwinsize(std::io::stderr())
            && size.ws_col > 0
        {
            sink.width = size.ws_col as usize;
        }
        sink
    }

    fn print_blocks(&mut self, blocks: Vec<group::Block>) {
        let style = TreeStyle {
            full: true,
            conversation: false,
            max_value_len: self.max_value_len,
            ..TreeStyle::brief(self.color, self.width)
        };
        for b in &blocks {
            for line in group::render(b, &style) {
                self.write_line(line);
            }
        }
    }

    fn paint(&self, code: &'static str, text: &str) -> String {
        tree::paint(self.color, code, text)
    }

    fn write_line(&mut self, line: String) {
        if self.failed {
            return;
        }
        if writeln!(self.out, "{line}").is_err() {
            // A closed terminal or pipe must not stop telemetry; stop printing instead.
            self.failed = true;
        }
    }

    fn time(&self, t: Timestamp) -> String {
        let local = t.to_datetime().with_timezone(&chrono::Local);
        self.paint(DIM, &local.format("%H:%M:%S%.3f").to_string())
    }

    fn labels(&self, labels: &Attributes) -> String {
        if labels.is_empty() {
            return String::new();
        }
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", truncate(&v.to_label(), self.max_value_len)))
            .collect();
        format!("  {{{}}}", inner.join(", "))
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &'static str {
        "console"
    }

    fn span_ended(&mut self, s: &SpanRecord) {
        let span = OwnedSpan {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent: s.parent_span_id,
            name: s.name.clone(),
            start: s.start_time,
            end: s.end_time,
            status: s.status,
            status_message: s.status_message.clone(),
            attributes: s.attributes.clone(),
        };
        let blocks = self.grouper.add(span, Instant::now());
        self.print_blocks(blocks);
    }

    fn event(&mut self, e: &SpanEvent) {
        let line = match &e.body {
            SpanEventBody::Log { severity, message } => {
                let code = match severity {
                    LogSeverity::Error | LogSeverity::Critical => RED,
                    LogSeverity::Warn => YELLOW,
                    _ => DIM,
                };
                format!(
                    "{}    {}  {}",
                    self.time(e.timestamp),
                    self.paint(code, &format!("{:<8}", severity.as_str())),
                    message
                )
            }
            SpanEventBody::Metric { value, unit } => format!(
                "{}    {}  {} = {} {}{}",
                self.time(e.timestamp),
                self.paint(CYAN, &format!("{:<8}", "metric")),
                e.name,
                value.as_f64(),
                unit,
                self.labels(&e.attributes)
            ),
            SpanEventBody::Other => format!(
                "{}    {}  {}{}",
                self.time(e.timestamp),
                self.paint(DIM, &format!("{:<8}", "event")),
                e.name,
                self.labels(&e.attributes)
            ),
        };
        self.write_line(line);
    }

    fn metric(&mut self, point: &MetricPoint) {
        // Metric events are printed by `event`; points without a span event (received
        // metrics) are printed here.
        if point.span_id.is_none() {
            let line = format!(
                "{}    {}  {} = {} {}{}",
                self.time(point.timestamp),
                self.paint(CYAN, &format!("{:<8}", "metric")),
                point.name,
                point.value,
                point.unit,
                self.labels(&point.labels)
            );
            self.write_line(line);
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let blocks = self.grouper.expire(Instant::now());
        self.print_blocks(blocks);
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), SinkError> {
        let blocks = self.grouper.drain();
        self.print_blocks(blocks);
        self.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokentrace_model::{MetricValue, SpanId, SpanKind, TraceId};

    use tokentrace_model::{AttrValue, SpanStatus};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn span(status: Option<SpanStatus>, end: bool) -> SpanRecord {
        let start = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        SpanRecord {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            name: "chat_completion".into(),
            kind: SpanKind::Internal,
            start_time: start,
            end_time: end.then(|| Timestamp::from_unix_nanos(start.unix_nanos() + 333_100_000)),
            status,
            status_message: Some("upstream 503".into()),
            attributes: [
                ("zeta".to_string(), AttrValue::Int(1)),
                ("alpha".to_string(), AttrValue::String("x".repeat(500))),
            ]
            .into_iter()
            .collect(),
            events: vec![],
            links: vec![],
            service_name: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_root_prints_its_trace_with_duration_status_and_sorted_cut_attributes() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        sink.span_ended(&span(Some(SpanStatus::Ok), true));
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("1 span · 333.1 ms"), "{text}");
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            words[..4],
            ["chat_completion", "333.1", "ms", "ok"],
            "{text}"
        );
        assert!(lines[2].trim_start().starts_with("alpha"), "{text}");
        assert!(lines[3].trim_start().starts_with("zeta"), "{text}");
        assert!(
            lines[2].ends_with('…') && lines[2].chars().count() < 80,
            "{text}"
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn a_child_waits_for_its_root_and_prints_under_it() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        let root = span(Some(SpanStatus::Ok), true);
        let child = SpanRecord {
            span_id: SpanId::random(),
            parent_span_id: Some(root.span_id),
            name: "provider call".into(),
            ..root.clone()
        };
        sink.span_ended(&child);
        sink.flush().unwrap();
        assert_eq!(buf.text(), "");
        sink.span_ended(&root);
        let text = buf.text();
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        assert!(at("chat_completion") < at("└─ provider call"), "{text}");
        // A span of a trace already printed comes under a "late" header.
        sink.span_ended(&SpanRecord {
            span_id: SpanId::random(),
            name: "late one".into(),
            ..child
        });
        assert!(buf.text().contains("late span"), "{}", buf.text());
    }

    #[test]
    fn spans_whose_root_never_comes_print_at_shutdown() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        sink.span_ended(&SpanRecord {
            parent_span_id: Some(SpanId::random()),
            ..span(Some(SpanStatus::Ok), true)
        });
        sink.flush().unwrap();
        assert_eq!(buf.text(), "");
        sink.shutdown().unwrap();
        assert!(buf.text().contains("without its root"), "{}", buf.text());
    }

    #[test]
    fn errors_are_red_only_with_colour_and_unfinished_is_said() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), true, 40);
        sink.span_ended(&span(Some(SpanStatus::Error), true));
        assert!(
            buf.text()
                .contains(&format!("{RED}error: upstream 503{}", tree::RESET)),
            "{}",
            buf.text()
        );
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        sink.span_ended(&span(None, false));
        assert!(buf.text().contains("open"), "{}", buf.text());
    }

    #[test]
    fn logs_and_metrics() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        let base = SpanEvent {
            trace_id: None,
            span_id: None,
            timestamp: Timestamp::now(),
            name: "log".into(),
            body: SpanEventBody::Log {
                severity: LogSeverity::Warn,
                message: "slow upstream".into(),
            },
            attributes: Attributes::new(),
            expires_at: None,
        };
        sink.event(&base);
        sink.event(&SpanEvent {
            name: "total_tokens".into(),
            body: SpanEventBody::Metric {
                value: MetricValue::Int(42),
                unit: "tokens".into(),
            },
            attributes: [("model_id".to_string(), AttrValue::from("llama"))]
                .into_iter()
                .collect(),
            ..base.clone()
        });
        let text = buf.text();
        assert!(text.contains("warn      slow upstream"), "{text}");
        assert!(
            text.contains("total_tokens = 42 tokens  {model_id=llama}"),
            "{text}"
        );
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn a_broken_writer_does_not_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut sink = ConsoleSink::new(Box::new(Broken), false, 40);
        sink.span_ended(&span(Some(SpanStatus::Ok), true));
        sink.flush().unwrap();
    }
}
