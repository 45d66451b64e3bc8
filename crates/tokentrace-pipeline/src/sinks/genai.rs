//! What the metric sinks derive from a finished provider-call span.

use tokentrace_model::{AttrValue, SpanRecord};

/// Observations of one provider call.
pub struct GenAiObservation {
    /// `model_id`, `provider_id`.
    pub labels: [String; 2],
    /// Call duration in seconds.
    pub duration: f64,
    /// Time to the first streamed chunk, in seconds.
    pub time_to_first_token: Option<f64>,
    /// Output tokens per second of generation (after the first token when streaming).
    pub output_tokens_per_second: Option<f64>,
}

fn number(span: &SpanRecord, key: &str) -> Option<f64> {
    match span.attributes.get(key)? {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// The observations of a finished span that records a GenAI operation; `None` for other spans.
pub fn observe(span: &SpanRecord) -> Option<GenAiObservation> {
    if !span.attributes.contains_key("gen_ai.operation.name") {
        return None;
    }
    let duration = span.duration_ms()? / 1000.0;
    let label = |k: &str| {
        span.attributes
            .get(k)
            .map(AttrValue::to_label)
            .unwrap_or_default()
    };
    let ttft = number(span, "gen_ai.response.time_to_first_chunk");
    let generating = duration - ttft.unwrap_or(0.0);
    let tps = number(span, "gen_ai.usage.output_tokens")
        .filter(|o| *o > 0.0 && generating > 0.0)
        .map(|o| o / generating);
    Some(GenAiObservation {
        labels: [label("model_id"), label("provider_id")],
        duration,
        time_to_first_token: ttft,
        output_tokens_per_second: tps,
    })
}
