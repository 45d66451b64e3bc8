//! tokentrace spans and metric aggregates → OTLP protobuf messages, for the exporters.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use tokentrace_model::{AttrValue, Attributes, SpanEventBody, SpanKind, SpanRecord, SpanStatus};

/// An attribute value as OTLP.
pub fn any_value(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Null => None,
        AttrValue::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        AttrValue::Int(i) => Some(any_value::Value::IntValue(*i)),
        AttrValue::Float(f) => Some(any_value::Value::DoubleValue(*f)),
        AttrValue::String(s) => Some(any_value::Value::StringValue(s.clone())),
        AttrValue::Array(a) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(any_value).collect(),
        })),
    };
    AnyValue { value }
}

/// Attributes as OTLP key-values (sorted by key).
pub fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(any_value(v)),
            ..Default::default()
        })
        .collect()
}

/// A resource with `service.name` and extra attributes.
pub fn resource(service_name: &str, extra: &[(String, String)]) -> Resource {
    let mut attributes = vec![KeyValue {
        key: "service.name".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(service_name.into())),
        }),
        ..Default::default()
    }];
    for (k, v) in extra {
        if k != "service.name" {
            attributes.push(KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
                ..Default::default()
            });
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// A span kind as OTLP.
pub(crate) fn span_kind(kind: SpanKind) -> span::SpanKind {
    match kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    }
}

/// A span status as an OTLP status code (`None`: unset).
pub(crate) fn status_code(status: Option<SpanStatus>) -> status::StatusCode {
    match status {
        Some(SpanStatus::Ok) => status::StatusCode::Ok,
        Some(SpanStatus::Error) => status::StatusCode::Error,
        None => status::StatusCode::Unset,
    }
}

pub(crate) fn nanos(t: tokentrace_model::Timestamp) -> u64 {
    u64::try_from(t.unix_nanos()).unwrap_or(0)
}

/// A span as OTLP, with the same ids, times, status, kind and attributes; its logs and metrics
/// become span events (`log` with `log.severity` and `log.message`, metrics named after the
/// metric with `metric.value` and `metric.unit`). The exporter writes the same message's bytes
/// directly with [`crate::encode::span`]; this is the readable mapping it is tested against.
pub fn span(s: &SpanRecord) -> Span {
    let events = s
        .events
        .iter()
        .map(|e| {
            let mut attributes = key_values(&e.attributes);
            let mut extra = |k: &str, v: AttrValue| {
                attributes.push(KeyValue {
                    key: k.into(),
                    value: Some(any_value(&v)),
                    ..Default::default()
                })
            };
            match &e.body {
                SpanEventBody::Log { severity, message } => {
                    extra("log.severity", AttrValue::from(severity.as_str()));
                    extra("log.message", AttrValue::from(message.as_str()));
                }
                SpanEventBody::Metric { value, unit } => {
                    extra("metric.value", AttrValue::Float(value.as_f64()));
                    extra("metric.unit", AttrValue::from(unit.as_str()));
                }
                SpanEventBody::Other => {}
            }
            span::Event {
                time_unix_nano: nanos(e.timestamp),
                name: e.name.clone(),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    let links = s
        .links
        .iter()
        .map(|l| span::Link {
            trace_id: l.trace_id.to_bytes().to_vec(),
            span_id: l.span_id.to_bytes().to_vec(),
            attributes: key_values(&l.attributes),
            ..Default::default()
        })
        .collect();
    let kind = span_kind(s.kind);
    let code = status_code(s.status);
    Span {
        trace_id: s.trace_id.to_bytes().to_vec(),
        span_id: s.span_id.to_bytes().to_vec(),
        parent_span_id: s
            .parent_span_id
            .map(|p| p.to_bytes().to_vec())
            .unwrap_or_default(),
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: nanos(s.start_time),
        end_time_unix_nano: s.end_time.map_or(nanos(s.start_time), nanos),
        attributes: key_values(&s.attributes),
        events,
        links,
        status: Some(Status {
            code: code as i32,
            message: s.status_message.clone().unwrap_or_default(),
        }),
        ..Default::default()
    }
}

/// Spans as one export request, a `ResourceSpans` per service (in order of first appearance;
/// spans without a service get a resource without attributes), so that the receiver maps them
/// back to the same records: `tokentrace export` writes these, `tokentrace import` sends them.
pub fn trace_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Option<&str>, Vec<Span>)> = Vec::new();
    for s in spans {
        let service = s.service_name.as_deref();
        match groups.iter_mut().find(|(k, _)| *k == service) {
            Some((_, v)) => v.push(span(s)),
            None => groups.push((service, vec![span(s)])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(match service {
                    Some(name) => resource(name, &[]),
                    None => Resource::default(),
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// A page of `POST /v1/tokentrace/export`: the spans of some traces as an OTLP export request
/// (OTLP/JSON), how many traces and spans it holds, and the cursor of the next page.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceExport {
    /// The spans, with their events and links.
    pub otlp: ExportTraceServiceRequest,
    /// Traces in this page.
    pub traces: u64,
    /// Spans in this page.
    pub spans: u64,
    /// Give as `cursor` for the next page; `null` on the last.
    pub next: Option<String>,
}
