//! OTLP payloads → tokentrace spans, events and metric points. Items that cannot be stored
//! (invalid ids, no name) are counted as rejected, never silently dropped.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, Gauge, HistogramDataPoint, Sum, SummaryDataPoint, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricPoint, MetricValue, SpanEvent, SpanEventBody, SpanId,
    SpanKind, SpanLink, SpanRecord, SpanStatus, Timestamp, TraceId,
};

/// What a payload turned into.
#[derive(Debug)]
pub struct Converted<T> {
    /// The items to store.
    pub items: Vec<T>,
    /// How many items were rejected.
    pub rejected: i64,
    /// Why (the first few reasons).
    pub errors: Vec<String>,
}

impl<T> Default for Converted<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            rejected: 0,
            errors: Vec::new(),
        }
    }
}

impl<T> Converted<T> {
    fn reject(&mut self, why: String) {
        self.rejected += 1;
        if self.errors.len() < 5 {
            self.errors.push(why);
        }
    }

    /// The partial-success message: the reasons joined.
    pub fn error_message(&self) -> String {
        self.errors.join("; ")
    }
}

/// An OTLP value as an attribute value: maps and bytes become strings (JSON, hex).
pub fn attr_value(v: &AnyValue) -> AttrValue {
    match &v.value {
        None => AttrValue::Null,
        Some(any_value::Value::StringValue(s)) => AttrValue::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Float(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            AttrValue::Array(a.values.iter().map(attr_value).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let map: serde_json::Map<String, serde_json::Value> = kv
                .values
                .iter()
                .map(|k| {
                    (
                        k.key.clone(),
                        k.value
                            .as_ref()
                            .map_or(serde_json::Value::Null, |v| attr_value(v).to_json()),
                    )
                })
                .collect();
            AttrValue::String(serde_json::Value::Object(map).to_string())
        }
        Some(any_value::Value::BytesValue(b)) => {
            AttrValue::String(b.iter().map(|x| format!("{x:02x}")).collect())
        }
        Some(any_value::Value::StringValueStrindex(i)) => AttrValue::Int(i64::from(*i)),
    }
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(AttrValue::Null, attr_value),
            )
        })
        .collect()
}

/// The resource's `service.name` and its other attributes (prefixed `resource.`).
fn resource_parts(resource: Option<&Resource>) -> (Option<String>, Attributes) {
    let Some(r) = resource else {
        return (None, Attributes::new());
    };
    let mut service = None;
    let mut attrs = Attributes::new();
    for kv in &r.attributes {
        let v = kv.value.as_ref().map_or(AttrValue::Null, attr_value);
        if kv.key == "service.name" {
            service = v.as_str().map(str::to_string);
        } else {
            attrs.insert(format!("resource.{}", kv.key), v);
        }
    }
    (service, attrs)
}

/// A time in unix nanoseconds: `None` when it is 0 (unset) or past what the store holds
/// (2^63 − 1 ns, 2262-04-11), which is refused rather than clamped.
fn time(nanos: u64) -> Option<Timestamp> {
    i64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(Timestamp::from_unix_nanos)
}

/// The latest time tokentrace stores, for messages.
const LATEST: &str = "2262-04-11 (2^63 - 1 ns)";

fn kind(k: i32) -> SpanKind {
    match span::SpanKind::try_from(k) {
        Ok(span::SpanKind::Server) => SpanKind::Server,
        Ok(span::SpanKind::Client) => SpanKind::Client,
        Ok(span::SpanKind::Producer) => SpanKind::Producer,
        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

/// What a span event says: a log or a metric when it is in the form tokentrace's exporter
/// writes them (`log` with `log.severity` and `log.message`; `metric.value` with `metric.unit`),
/// so spans exported by tokentrace come back as they were; any other event as it is.
fn event_body(name: &str, mut attrs: Attributes) -> (SpanEventBody, Attributes) {
    let text = |v: &AttrValue| v.as_str().map(str::to_string);
    if name == "log"
        && let (Some(sev), Some(msg)) = (
            attrs.get("log.severity").and_then(text),
            attrs.get("log.message").and_then(text),
        )
        && let Ok(severity) = serde_json::from_value::<LogSeverity>(serde_json::Value::String(sev))
    {
        attrs.remove("log.severity");
        attrs.remove("log.message");
        return (
            SpanEventBody::Log {
                severity,
                message: msg,
            },
            attrs,
        );
    }
    let value = match attrs.get("metric.value") {
        Some(AttrValue::Float(f)) => Some(*f),
        Some(AttrValue::Int(i)) => Some(*i as f64),
        _ => None,
    };
    if let (Some(v), Some(unit)) = (value, attrs.get("metric.unit").and_then(text)) {
        attrs.remove("metric.value");
        attrs.remove("metric.unit");
        let value = if v.fract() == 0.0 && v.abs() < 9.0e15 {
            MetricValue::Int(v as i64)
        } else {
            MetricValue::Float(v)
        };
        return (SpanEventBody::Metric { value, unit }, attrs);
    }
    (SpanEventBody::Other, attrs)
}

/// Spans of an export request; `default_expiry` is the retention of received spans.
pub fn traces_to_spans(
    req: &ExportTraceServiceRequest,
    expires_at: Option<Timestamp>,
) -> Converted<SpanRecord> {
    let mut out = Converted::default();
    for rs in &req.resource_spans {
        let (service, resource_attrs) = resource_parts(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let Some(trace_id) = TraceId::from_slice(&s.trace_id) else {
                    out.reject(format!(
                        "span {:?}: trace_id must be 16 bytes, not all zero",
                        s.name
                    ));
                    continue;
                };
                let Some(span_id) = SpanId::from_slice(&s.span_id) else {
                    out.reject(format!(
                        "span {:?}: span_id must be 8 bytes, not all zero",
                        s.name
                    ));
                    continue;
                };
                let parent_span_id = if s.parent_span_id.is_empty() {
                    None
                } else if let Some(p) = SpanId::from_slice(&s.parent_span_id) {
                    Some(p)
                } else {
                    out.reject(format!(
                        "span {:?}: parent_span_id must be empty or 8 bytes",
                        s.name
                    ));
                    continue;
                };
                let Some(start_time) = time(s.start_time_unix_nano) else {
                    out.reject(if s.start_time_unix_nano == 0 {
                        format!("span {:?}: start_time_unix_nano is missing", s.name)
                    } else {
                        format!(
                            "span {:?}: start_time_unix_nano {} is past {LATEST}, the latest time tokentrace stores",
                            s.name, s.start_time_unix_nano
                        )
                    });
                    continue;
                };
                let end_time = time(s.end_time_unix_nano);
                if s.end_time_unix_nano > 0 && end_time.is_none() {
                    out.reject(format!(
                        "span {:?}: end_time_unix_nano {} is past {LATEST}, the latest time tokentrace stores",
                        s.name, s.end_time_unix_nano
                    ));
                    continue;
                }
                if end_time.is_some_and(|end| end < start_time) {
                    out.reject(format!(
                        "span {:?}: end_time_unix_nano {} is before start_time_unix_nano {}",
                        s.name, s.end_time_unix_nano, s.start_time_unix_nano
                    ));
                    continue;
                }
                let (status, status_message) = match &s.status {
                    Some(st) => {
                        let code = match status::StatusCode::try_from(st.code) {
                            Ok(status::StatusCode::Ok) => Some(SpanStatus::Ok),
                            Ok(status::StatusCode::Error) => Some(SpanStatus::Error),
                            _ => None,
                        };
                        (code, (!st.message.is_empty()).then(|| st.message.clone()))
                    }
                    None => (None, None),
                };
                let mut attrs = resource_attrs.clone();
                attrs.extend(attributes(&s.attributes));
                let events = s
                    .events
                    .iter()
                    .map(|e| {
                        let (body, attributes) = event_body(&e.name, attributes(&e.attributes));
                        SpanEvent {
                            trace_id: Some(trace_id),
                            span_id: Some(span_id),
                            timestamp: time(e.time_unix_nano).unwrap_or(start_time),
                            name: e.name.clone(),
                            body,
                            attributes,
                            expires_at,
                        }
                    })
                    .collect();
                let links = s
                    .links
                    .iter()
                    .filter_map(|l| {
                        Some(SpanLink {
                            trace_id: TraceId::from_slice(&l.trace_id)?,
                            span_id: SpanId::from_slice(&l.span_id)?,
                            attributes: attributes(&l.attributes),
                        })
                    })
                    .collect();
                out.items.push(SpanRecord {
                    trace_id,
                    span_id,
                    parent_span_id,
                    name: if s.name.is_empty() {
                        "unnamed".into()
                    } else {
                        s.name.clone()
                    },
                    kind: kind(s.kind),
                    start_time,
                    end_time,
                    status: status
                        .or(Some(SpanStatus::Ok))
                        .filter(|_| s.end_time_unix_nano > 0),
                    status_message,
                    attributes: attrs,
                    events,
                    links,
                    service_name: service.clone(),
                    expires_at,
                });
            }
        }
    }
    out
}

/// Metric data points: gauges and sums one point each; histograms and summaries as `_count`
/// and `_sum` points.
pub fn metrics_to_points(
    req: &ExportMetricsServiceRequest,
    expires_at: Option<Timestamp>,
) -> Converted<MetricPoint> {
    let mut out = Converted::default();
    for rm in &req.resource_metrics {
        let (service, _) = resource_parts(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                if m.name.is_empty() {
                    out.reject("metric without a name".into());
                    continue;
                }
                let points: Vec<Point<'_>> = match &m.data {
                    Some(metric::Data::Gauge(Gauge { data_points }))
                    | Some(metric::Data::Sum(Sum { data_points, .. })) => data_points
                        .iter()
                        .map(|p| {
                            let v = number(p.value);
                            (m.name.clone(), &p.attributes[..], p.time_unix_nano, v)
                        })
                        .collect(),
                    Some(metric::Data::Histogram(h)) => count_sum(&m.name, &h.data_points),
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        count_sum(&m.name, &h.data_points)
                    }
                    Some(metric::Data::Summary(s)) => count_sum(&m.name, &s.data_points),
                    None => {
                        out.reject(format!("metric {:?} has no data", m.name));
                        continue;
                    }
                };
                let mut push = |name: String, kvs: &[KeyValue], t: u64, value: f64| {
                    let mut labels = attributes(kvs);
                    if let Some(s) = &service {
                        labels
                            .entry("service.name".into())
                            .or_insert_with(|| AttrValue::from(s.as_str()));
                    }
                    match time(t) {
                        Some(timestamp) => out.items.push(MetricPoint {
                            name,
                            timestamp,
                            value,
                            unit: m.unit.clone(),
                            labels,
                            trace_id: None,
                            span_id: None,
                            expires_at,
                        }),
                        None => out.reject(format!(
                            "metric {:?}: a data point has no time_unix_nano, or one past {LATEST}",
                            m.name
                        )),
                    }
                };
                for (name, kvs, t, value) in points {
                    push(name, kvs, t, value);
                }
            }
        }
    }
    out
}

/// A metric data point before its labels are built: name, attributes, time, value.
type Point<'a> = (String, &'a [KeyValue], u64, f64);

/// A histogram or summary data point: its attributes, time, count and sum.
trait CountSum {
    fn parts(&self) -> (&[KeyValue], u64, u64, f64);
}

impl CountSum for HistogramDataPoint {
    fn parts(&self) -> (&[KeyValue], u64, u64, f64) {
        let sum = self.sum.unwrap_or(0.0);
        (&self.attributes, self.time_unix_nano, self.count, sum)
    }
}

impl CountSum for ExponentialHistogramDataPoint {
    fn parts(&self) -> (&[KeyValue], u64, u64, f64) {
        let sum = self.sum.unwrap_or(0.0);
        (&self.attributes, self.time_unix_nano, self.count, sum)
    }
}

impl CountSum for SummaryDataPoint {
    fn parts(&self) -> (&[KeyValue], u64, u64, f64) {
        (&self.attributes, self.time_unix_nano, self.count, self.sum)
    }
}

/// Histograms and summaries are kept as their `_count` and `_sum` series.
fn count_sum<'a, P: CountSum>(name: &str, points: &'a [P]) -> Vec<Point<'a>> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for p in points {
        let (kvs, t, count, sum) = p.parts();
        out.push((format!("{name}_count"), kvs, t, count as f64));
        out.push((format!("{name}_sum"), kvs, t, sum));
    }
    out
}

fn number(v: Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

fn severity(n: i32, text: &str) -> LogSeverity {
    match n {
        1..=4 => LogSeverity::Verbose,
        5..=8 => LogSeverity::Debug,
        9..=12 => LogSeverity::Info,
        13..=16 => LogSeverity::Warn,
        17..=20 => LogSeverity::Error,
        21..=24 => LogSeverity::Critical,
        _ => match text.to_ascii_lowercase().as_str() {
            "trace" | "verbose" => LogSeverity::Verbose,
            "debug" => LogSeverity::Debug,
            "warn" | "warning" => LogSeverity::Warn,
            "error" => LogSeverity::Error,
            "fatal" | "critical" => LogSeverity::Critical,
            _ => LogSeverity::Info,
        },
    }
}

/// Log records as log events, of their span when they carry one.
pub fn logs_to_events(
    req: &ExportLogsServiceRequest,
    expires_at: Option<Timestamp>,
) -> Converted<SpanEvent> {
    let mut out = Converted::default();
    for rl in &req.resource_logs {
        let (_, resource_attrs) = resource_parts(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                let Some(timestamp) =
                    time(r.time_unix_nano).or_else(|| time(r.observed_time_unix_nano))
                else {
                    out.reject(
                        format!("log record without time_unix_nano or observed_time_unix_nano (or with one past {LATEST})"),
                    );
                    continue;
                };
                let trace_id = TraceId::from_slice(&r.trace_id);
                let span_id = SpanId::from_slice(&r.span_id);
                let message = match r.body.as_ref().map(attr_value) {
                    Some(AttrValue::String(s)) => s,
                    Some(AttrValue::Null) | None => String::new(),
                    Some(other) => other.to_json().to_string(),
                };
                let mut attrs = resource_attrs.clone();
                attrs.extend(attributes(&r.attributes));
                out.items.push(SpanEvent {
                    trace_id: trace_id.filter(|_| span_id.is_some()),
                    span_id: span_id.filter(|_| trace_id.is_some()),
                    timestamp,
                    name: if r.event_name.is_empty() {
                        "log".into()
                    } else {
                        r.event_name.clone()
                    },
                    body: SpanEventBody::Log {
                        severity: severity(r.severity_number, &r.severity_text),
                        message,
                    },
                    attributes: attrs,
                    expires_at,
                });
            }
        }
    }
    out
}
