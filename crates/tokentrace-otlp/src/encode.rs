//! Spans straight to OTLP protobuf bytes, for the trace exporter: the message
//! [`from_model::span`](crate::from_model::span) builds, without building it. Building it copies
//! every attribute key and value into new strings that encoding then copies again and frees;
//! writing the bytes from the record copies each once.

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokentrace_model::{AttrValue, Attributes, SpanEvent, SpanEventBody, SpanLink, SpanRecord};

use crate::from_model::{nanos, span_kind, status_code};

/// Appends the encoded `Span` message (its fields, without a tag or length in front).
pub fn span(s: &SpanRecord, buf: &mut Vec<u8>) {
    put_bytes(1, &s.trace_id.to_bytes(), buf);
    put_bytes(2, &s.span_id.to_bytes(), buf);
    if let Some(parent) = s.parent_span_id {
        put_bytes(4, &parent.to_bytes(), buf);
    }
    put_bytes(5, s.name.as_bytes(), buf);
    put_varint(6, span_kind(s.kind) as u64, buf);
    put_fixed64(7, nanos(s.start_time), buf);
    put_fixed64(8, nanos(s.end_time.unwrap_or(s.start_time)), buf);
    put_attributes(9, &s.attributes, buf);
    for e in &s.events {
        let extra = event_extra(e);
        put_header(11, event_len(e, &extra), buf);
        put_fixed64(1, nanos(e.timestamp), buf);
        put_bytes(2, e.name.as_bytes(), buf);
        put_attributes(3, &e.attributes, buf);
        for (k, v) in &extra {
            put_key_value(3, k, v, buf);
        }
    }
    for l in &s.links {
        put_header(13, link_len(l), buf);
        put_bytes(1, &l.trace_id.to_bytes(), buf);
        put_bytes(2, &l.span_id.to_bytes(), buf);
        put_attributes(4, &l.attributes, buf);
    }
    let code = status_code(s.status);
    let message = s.status_message.as_deref().unwrap_or_default();
    put_header(
        15,
        delimited_len(2, message.len()) + key_len(3) + encoded_len_varint(code as u64),
        buf,
    );
    put_bytes(2, message.as_bytes(), buf);
    put_varint(3, code as u64, buf);
}

/// Appends one `ResourceSpans` entry of an `ExportTraceServiceRequest` (field 1): `resource`,
/// one scope, and spans encoded by [`span`].
pub fn resource_spans(
    resource: &Resource,
    scope: &InstrumentationScope,
    spans: &[Vec<u8>],
    buf: &mut Vec<u8>,
) {
    let scope_len = scope.encoded_len();
    let scope_spans_len = delimited_len(1, scope_len)
        + spans
            .iter()
            .map(|s| delimited_len(2, s.len()))
            .sum::<usize>();
    let resource_len = resource.encoded_len();
    put_header(
        1,
        delimited_len(1, resource_len) + delimited_len(2, scope_spans_len),
        buf,
    );
    put_header(1, resource_len, buf);
    resource.encode_raw(buf);
    put_header(2, scope_spans_len, buf);
    put_header(1, scope_len, buf);
    scope.encode_raw(buf);
    for s in spans {
        put_bytes(2, s, buf);
    }
}

/// The attributes `from_model::span` adds to a log or metric event.
fn event_extra(e: &SpanEvent) -> Vec<(&'static str, AttrValue)> {
    match &e.body {
        SpanEventBody::Log { severity, message } => vec![
            ("log.severity", AttrValue::from(severity.as_str())),
            ("log.message", AttrValue::from(message.as_str())),
        ],
        SpanEventBody::Metric { value, unit } => vec![
            ("metric.value", AttrValue::Float(value.as_f64())),
            ("metric.unit", AttrValue::from(unit.as_str())),
        ],
        SpanEventBody::Other => Vec::new(),
    }
}

fn event_len(e: &SpanEvent, extra: &[(&str, AttrValue)]) -> usize {
    key_len(1)
        + 8
        + delimited_len(2, e.name.len())
        + attributes_len(3, &e.attributes)
        + extra
            .iter()
            .map(|(k, v)| delimited_len(3, key_value_len(k, v)))
            .sum::<usize>()
}

fn link_len(l: &SpanLink) -> usize {
    delimited_len(1, 16) + delimited_len(2, 8) + attributes_len(4, &l.attributes)
}

fn attributes_len(tag: u32, attrs: &Attributes) -> usize {
    attrs
        .iter()
        .map(|(k, v)| delimited_len(tag, key_value_len(k, v)))
        .sum()
}

fn put_attributes(tag: u32, attrs: &Attributes, buf: &mut Vec<u8>) {
    for (k, v) in attrs {
        put_key_value(tag, k, v, buf);
    }
}

/// `KeyValue { key = 1, value = 2 }`.
fn key_value_len(key: &str, value: &AttrValue) -> usize {
    delimited_len(1, key.len()) + delimited_len(2, any_value_len(value))
}

fn put_key_value(tag: u32, key: &str, value: &AttrValue, buf: &mut Vec<u8>) {
    put_header(tag, key_value_len(key, value), buf);
    put_bytes(1, key.as_bytes(), buf);
    put_header(2, any_value_len(value), buf);
    put_any_value(value, buf);
}

/// `AnyValue { string = 1, bool = 2, int = 3, double = 4, array = 5 }`; null is no value.
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Null => 0,
        AttrValue::Bool(_) => key_len(2) + 1,
        AttrValue::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        AttrValue::Float(_) => key_len(4) + 8,
        AttrValue::String(s) => delimited_len(1, s.len()),
        AttrValue::Array(items) => delimited_len(5, array_len(items)),
    }
}

/// `ArrayValue { values = 1 }`.
fn array_len(items: &[AttrValue]) -> usize {
    items
        .iter()
        .map(|i| delimited_len(1, any_value_len(i)))
        .sum()
}

fn put_any_value(v: &AttrValue, buf: &mut Vec<u8>) {
    match v {
        AttrValue::Null => {}
        AttrValue::Bool(b) => put_varint(2, u64::from(*b), buf),
        AttrValue::Int(i) => put_varint(3, *i as u64, buf),
        AttrValue::Float(f) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        AttrValue::String(s) => put_bytes(1, s.as_bytes(), buf),
        AttrValue::Array(items) => {
            put_header(5, array_len(items), buf);
            for item in items {
                put_header(1, any_value_len(item), buf);
                put_any_value(item, buf);
            }
        }
    }
}

fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    put_header(tag, bytes.len(), buf);
    buf.extend_from_slice(bytes);
}

fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

fn put_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}
