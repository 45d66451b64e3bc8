//! Writes one line per span start, span end, log and metric, with the span's attributes indented
//! under its end line. Colour only when asked for (a terminal without `NO_COLOR`).

use std::io::{IsTerminal, Write};

use tokentrace_config::ColorChoice;
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricPoint, SpanEvent, SpanEventBody, SpanRecord,
    SpanStatus, Timestamp,
};

use crate::{Sink, SinkError, SpanStart};

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";

/// Prints telemetry as it arrives.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    color: bool,
    max_value_len: usize,
    failed: bool,
}

impl ConsoleSink {
    /// A sink writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, color: bool, max_value_len: usize) -> Self {
        Self {
            out,
            color,
            max_value_len: max_value_len.max(8),
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
        Self::new(Box::new(std::io::stderr()), color, max_value_len)
    }

    fn paint(&self, code: &'static str, text: &str) -> String {
        if self.color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
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

    fn value(&self, v: &AttrValue) -> String {
        let text = match v {
            AttrValue::String(s) => format!("{s:?}"),
            other => other.to_json().to_string(),
        };
        truncate(&text, self.max_value_len)
    }

    fn attribute_lines(&mut self, attributes: &Attributes) {
        let width = attributes
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        let lines: Vec<String> = attributes
            .iter()
            .map(|(k, v)| {
                let key = self.paint(CYAN, &format!("{k:<width$}"));
                format!("{:14}    {key} = {}", "", self.value(v))
            })
            .collect();
        for line in lines {
            self.write_line(line);
        }
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

/// Cuts `s` to at most `max` characters, ending with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn short(id: &impl std::fmt::Display, n: usize) -> String {
    id.to_string().chars().take(n).collect()
}

impl Sink for ConsoleSink {
    fn name(&self) -> &'static str {
        "console"
    }

    fn span_started(&mut self, s: &SpanStart) {
        let parent = s
            .parent_span_id
            .map(|p| format!("  parent={}", short(&p, 8)))
            .unwrap_or_default();
        let line = format!(
            "{}  {} {}  {}{}",
            self.time(s.timestamp),
            self.paint(GREEN, "▶"),
            self.paint(BOLD, &s.name),
            self.paint(
                DIM,
                &format!(
                    "trace={} span={}",
                    short(&s.trace_id, 8),
                    short(&s.span_id, 8)
                )
            ),
            self.paint(DIM, &parent),
        );
        self.write_line(line);
    }

    fn span_ended(&mut self, s: &SpanRecord) {
        let at = s.end_time.unwrap_or(s.start_time);
        let (mark, status) = match (s.end_time, s.status) {
            (None, _) => (self.paint(YELLOW, "■"), self.paint(YELLOW, "unfinished")),
            (Some(_), Some(SpanStatus::Error)) => {
                let msg = s
                    .status_message
                    .as_deref()
                    .map(|m| format!(": {}", truncate(m, self.max_value_len)))
                    .unwrap_or_default();
                (
                    self.paint(RED, "■"),
                    self.paint(RED, &format!("error{msg}")),
                )
            }
            (Some(_), Some(SpanStatus::Ok)) => (self.paint(GREEN, "■"), self.paint(GREEN, "ok")),
            (Some(_), None) => (self.paint(GREEN, "■"), "unset".to_string()),
        };
        let duration = s
            .duration_ms()
            .map(|d| format!("{d:.1} ms"))
            .unwrap_or_else(|| "-".to_string());
        let line = format!(
            "{}  {mark} {}  {duration}  {status}  {}",
            self.time(at),
            self.paint(BOLD, &s.name),
            self.paint(
                DIM,
                &format!(
                    "trace={} span={}",
                    short(&s.trace_id, 8),
                    short(&s.span_id, 8)
                )
            ),
        );
        self.write_line(line);
        self.attribute_lines(&s.attributes);
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
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokentrace_model::{MetricValue, SpanId, SpanKind, TraceId};

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
    fn end_line_has_duration_status_and_sorted_cut_attributes() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        sink.span_ended(&span(Some(SpanStatus::Ok), true));
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("■ chat_completion  333.1 ms  ok"),
            "{text}"
        );
        assert!(lines[1].trim_start().starts_with("alpha"), "{text}");
        assert!(lines[2].trim_start().starts_with("zeta"), "{text}");
        assert!(
            lines[1].ends_with('…') && lines[1].chars().count() < 80,
            "{text}"
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn errors_are_red_only_with_colour_and_unfinished_is_said() {
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), true, 40);
        sink.span_ended(&span(Some(SpanStatus::Error), true));
        assert!(
            buf.text()
                .contains(&format!("{RED}error: upstream 503{RESET}")),
            "{}",
            buf.text()
        );
        let buf = Buf::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), false, 40);
        sink.span_ended(&span(None, false));
        assert!(buf.text().contains("unfinished"));
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
