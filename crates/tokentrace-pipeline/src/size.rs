//! About how much memory a queued item holds, in bytes: what the pipeline queue's byte bound
//! counts. Estimates (strings by length, a fixed overhead per value and map entry), cheap
//! enough to compute on every submission.

use tokentrace_model::{
    AttrValue, Attributes, Event, MetricPoint, SpanEvent, SpanRecord, StructuredLogPayload,
};

/// Overhead of a boxed record with its fixed fields.
const RECORD: u64 = 160;
/// Overhead of one attribute (map node, key and value headers).
const ENTRY: u64 = 64;

fn value(v: &AttrValue) -> u64 {
    match v {
        AttrValue::String(s) => s.len() as u64,
        AttrValue::Array(a) => a.iter().map(|v| 16 + value(v)).sum(),
        _ => 0,
    }
}

pub(crate) fn attributes(a: &Attributes) -> u64 {
    a.iter()
        .map(|(k, v)| ENTRY + k.len() as u64 + value(v))
        .sum()
}

pub(crate) fn event(e: &Event) -> u64 {
    RECORD
        + match e {
            Event::UnstructuredLog(l) => attributes(&l.attributes) + l.message.len() as u64,
            Event::Metric(m) => attributes(&m.attributes) + (m.metric.len() + m.unit.len()) as u64,
            Event::StructuredLog(s) => {
                attributes(&s.attributes)
                    + match &s.payload {
                        StructuredLogPayload::SpanStart(p) => p.name.len() as u64,
                        StructuredLogPayload::SpanEnd(_) => 0,
                    }
            }
        }
}

pub(crate) fn span_event(e: &SpanEvent) -> u64 {
    RECORD + e.name.len() as u64 + attributes(&e.attributes)
}

pub(crate) fn span(s: &SpanRecord) -> u64 {
    RECORD
        + s.name.len() as u64
        + attributes(&s.attributes)
        + s.status_message.as_ref().map_or(0, |m| m.len() as u64)
        + s.service_name.as_ref().map_or(0, |m| m.len() as u64)
        + s.events.iter().map(span_event).sum::<u64>()
        + s.links
            .iter()
            .map(|l| RECORD + attributes(&l.attributes))
            .sum::<u64>()
}

pub(crate) fn point(p: &MetricPoint) -> u64 {
    RECORD + (p.name.len() + p.unit.len()) as u64 + attributes(&p.labels)
}
