//! The OpenTelemetry GenAI conventions as tokentrace uses them: every `gen_ai.*` attribute name
//! (the gateway writes them, the sinks read them), the histogram bucket boundaries of the GenAI
//! metrics, and what the metric sinks derive from a finished provider-call span.

use tokentrace_model::{AttrValue, SpanRecord};

/// `gen_ai.operation.name`: `chat`, `text_completion`, `embeddings`. Marks a provider-call span.
pub const OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name`: the provider type, e.g. `openai`, `echo`.
pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`: the model the caller asked for.
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.request.stream`: whether the response was streamed.
pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
/// `gen_ai.request.max_tokens`.
pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
/// `gen_ai.request.temperature`.
pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
/// `gen_ai.request.top_p`.
pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
/// `gen_ai.response.id`.
pub const RESPONSE_ID: &str = "gen_ai.response.id";
/// `gen_ai.response.model`: the model the provider says answered.
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.response.finish_reasons`: one per choice.
pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `gen_ai.response.time_to_first_chunk`: seconds from the call to its first streamed chunk.
pub const RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
/// `gen_ai.usage.input_tokens`.
pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`.
pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.prompt`: the request content, JSON (when content capture is on).
pub const PROMPT: &str = "gen_ai.prompt";
/// `gen_ai.completion`: the response text (when content capture is on).
pub const COMPLETION: &str = "gen_ai.completion";

/// `gen_ai.client.operation.duration` bucket boundaries (OpenTelemetry GenAI conventions).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.server.time_to_first_token` bucket boundaries.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Output tokens per second bucket boundaries.
pub const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

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
    if !span.attributes.contains_key(OPERATION_NAME) {
        return None;
    }
    let duration = span.duration_ms()? / 1000.0;
    let label = |k: &str| {
        span.attributes
            .get(k)
            .map(AttrValue::to_label)
            .unwrap_or_default()
    };
    let ttft = number(span, RESPONSE_TIME_TO_FIRST_CHUNK);
    let generating = duration - ttft.unwrap_or(0.0);
    let tps = number(span, USAGE_OUTPUT_TOKENS)
        .filter(|o| *o > 0.0 && generating > 0.0)
        .map(|o| o / generating);
    Some(GenAiObservation {
        labels: [label("model_id"), label("provider_id")],
        duration,
        time_to_first_token: ttft,
        output_tokens_per_second: tps,
    })
}
