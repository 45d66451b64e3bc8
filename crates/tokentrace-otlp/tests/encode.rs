//! Spans written straight to protobuf decode, with the official OTLP types, to exactly the
//! messages `from_model` builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricValue, SpanEvent, SpanEventBody, SpanId, SpanKind,
    SpanLink, SpanRecord, SpanStatus, Timestamp, TraceId,
};
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::proto::common::v1::InstrumentationScope;
use tokentrace_otlp::proto::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokentrace_otlp::{encode, from_model};

fn attrs(pairs: Vec<(&str, AttrValue)>) -> Attributes {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn every_kind_of_value() -> Attributes {
    attrs(vec![
        ("s", AttrValue::from("héllo, \"world\"")),
        ("empty", AttrValue::from("")),
        ("long", AttrValue::from("x".repeat(300).as_str())),
        ("t", AttrValue::Bool(true)),
        ("f", AttrValue::Bool(false)),
        ("zero", AttrValue::Int(0)),
        ("neg", AttrValue::Int(-42)),
        ("big", AttrValue::Int(i64::MAX)),
        ("pi", AttrValue::Float(3.25)),
        ("nan-free zero", AttrValue::Float(0.0)),
        ("null", AttrValue::Null),
        (
            "list",
            AttrValue::Array(vec![
                AttrValue::Int(1),
                AttrValue::from("two"),
                AttrValue::Null,
                AttrValue::Array(vec![AttrValue::Bool(true)]),
            ]),
        ),
    ])
}

fn event(name: &str, body: SpanEventBody, attributes: Attributes) -> SpanEvent {
    SpanEvent {
        trace_id: None,
        span_id: None,
        timestamp: Timestamp::parse_iso("2025-03-01T12:00:00.123456Z").unwrap(),
        name: name.into(),
        body,
        attributes,
        expires_at: None,
    }
}

fn records() -> Vec<SpanRecord> {
    let start = Timestamp::parse_iso("2025-03-01T12:00:00Z").unwrap();
    let end = Timestamp::parse_iso("2025-03-01T12:00:01.5Z").unwrap();
    let full = SpanRecord {
        trace_id: TraceId::random(),
        span_id: SpanId::random(),
        parent_span_id: Some(SpanId::random()),
        name: "chat llama".into(),
        kind: SpanKind::Client,
        start_time: start,
        end_time: Some(end),
        status: Some(SpanStatus::Error),
        status_message: Some("upstream said 500".into()),
        attributes: every_kind_of_value(),
        events: vec![
            event(
                "log",
                SpanEventBody::Log {
                    severity: LogSeverity::Warn,
                    message: "slow".into(),
                },
                attrs(vec![("k", AttrValue::Int(1))]),
            ),
            event(
                "total_tokens",
                SpanEventBody::Metric {
                    value: MetricValue::Int(21),
                    unit: "tokens".into(),
                },
                attrs(vec![("model_id", AttrValue::from("llama"))]),
            ),
            event("exception", SpanEventBody::Other, every_kind_of_value()),
        ],
        links: vec![SpanLink {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            attributes: attrs(vec![("why", AttrValue::from("retry"))]),
        }],
        service_name: Some("svc".into()),
        expires_at: None,
    };
    let bare = SpanRecord {
        parent_span_id: None,
        name: String::new(),
        kind: SpanKind::Internal,
        end_time: None,
        status: None,
        status_message: None,
        attributes: Attributes::new(),
        events: Vec::new(),
        links: Vec::new(),
        ..full.clone()
    };
    let mut kinds = Vec::new();
    for (kind, status) in [
        (SpanKind::Server, Some(SpanStatus::Ok)),
        (SpanKind::Producer, None),
        (SpanKind::Consumer, Some(SpanStatus::Error)),
    ] {
        kinds.push(SpanRecord {
            kind,
            status,
            ..bare.clone()
        });
    }
    [vec![full, bare], kinds].concat()
}

#[test]
fn an_encoded_span_decodes_to_the_message_from_model_builds() {
    for record in records() {
        let mut buf = Vec::new();
        encode::span(&record, &mut buf);
        let decoded = Span::decode(buf.as_slice()).unwrap();
        assert_eq!(decoded, from_model::span(&record), "{}", record.name);
    }
}

#[test]
fn an_export_request_assembled_from_encoded_spans_decodes_whole() {
    let spans = records();
    let resource = from_model::resource("svc", &[("env".into(), "test".into())]);
    let scope = InstrumentationScope {
        name: "tokentrace".into(),
        version: "1.0".into(),
        ..Default::default()
    };
    let encoded: Vec<Vec<u8>> = spans
        .iter()
        .map(|s| {
            let mut b = Vec::new();
            encode::span(s, &mut b);
            b
        })
        .collect();
    let mut body = Vec::new();
    encode::resource_spans(&resource, &scope, &encoded[..2], &mut body);
    encode::resource_spans(&resource, &scope, &encoded[2..], &mut body);
    let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
    let expected = ExportTraceServiceRequest {
        resource_spans: [&spans[..2], &spans[2..]]
            .iter()
            .map(|group| ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: group.iter().map(from_model::span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    assert_eq!(decoded, expected);
}
