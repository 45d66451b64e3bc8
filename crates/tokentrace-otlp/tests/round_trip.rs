//! Spans through `from_model::trace_request` and back through `traces_to_spans` (what
//! `tokentrace export` then `tokentrace import` does): the same records, logs and metric
//! events included, through protobuf bytes and through OTLP/JSON.
#![allow(clippy::unwrap_used)]

use prost::Message;
use tokentrace_model::{
    AttrValue, Attributes, LogSeverity, MetricValue, SpanEvent, SpanEventBody, SpanId, SpanKind,
    SpanLink, SpanRecord, SpanStatus, Timestamp, TraceId,
};
use tokentrace_otlp::from_model::trace_request;
use tokentrace_otlp::proto::collector::trace::v1::ExportTraceServiceRequest;
use tokentrace_otlp::traces_to_spans;

fn record(service: Option<&str>, parent: Option<SpanId>, trace: TraceId) -> SpanRecord {
    let span_id = SpanId::random();
    let t = Timestamp::from_unix_nanos(1_764_000_000_123_456_789);
    let event = |name: &str, body| SpanEvent {
        trace_id: Some(trace),
        span_id: Some(span_id),
        timestamp: t,
        name: name.into(),
        body,
        attributes: [("k".to_string(), AttrValue::Int(1))].into_iter().collect(),
        expires_at: None,
    };
    SpanRecord {
        trace_id: trace,
        span_id,
        parent_span_id: parent,
        name: "chat".into(),
        kind: SpanKind::Client,
        start_time: t,
        end_time: Some(Timestamp::from_unix_nanos(t.unix_nanos() + 5_000_001)),
        status: Some(SpanStatus::Error),
        status_message: Some("boom".into()),
        attributes: [
            ("gen_ai.request.model".to_string(), AttrValue::from("m")),
            ("n".to_string(), AttrValue::Float(1.5)),
            (
                "list".to_string(),
                AttrValue::Array(vec![AttrValue::from("a"), AttrValue::Int(2)]),
            ),
        ]
        .into_iter()
        .collect::<Attributes>(),
        events: vec![
            event(
                "log",
                SpanEventBody::Log {
                    severity: LogSeverity::Warn,
                    message: "slow".into(),
                },
            ),
            event(
                "prompt_tokens",
                SpanEventBody::Metric {
                    value: MetricValue::Int(12),
                    unit: "tokens".into(),
                },
            ),
            event("retry", SpanEventBody::Other),
        ],
        links: vec![SpanLink {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            attributes: Attributes::new(),
        }],
        service_name: service.map(str::to_string),
        expires_at: None,
    }
}

#[test]
fn exported_spans_come_back_as_they_were() {
    let trace = TraceId::random();
    let root = record(Some("svc-a"), None, trace);
    let spans = vec![
        record(None, Some(root.span_id), trace),
        root.clone(),
        record(Some("svc-b"), Some(root.span_id), trace),
    ];
    let req = trace_request(&spans);
    assert_eq!(req.resource_spans.len(), 3);
    let bytes = ExportTraceServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    let json: ExportTraceServiceRequest =
        serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    for again in [bytes, json] {
        let back = traces_to_spans(&again, None);
        assert_eq!(back.rejected, 0, "{:?}", back.errors);
        let mut got = back.items;
        let mut want = spans.clone();
        got.sort_by_key(|s| s.span_id.to_string());
        want.sort_by_key(|s| s.span_id.to_string());
        assert_eq!(got, want);
    }
}
