//! The OpenTelemetry GenAI conventions as tokentrace uses them: every `gen_ai.*` attribute name
//! (the gateway writes them, the sinks read them), the histogram bucket boundaries of the GenAI
//! metrics, what the metric sinks derive from a finished provider-call span, and the LLM spans
//! of other instrumentations understood and counted.

mod calls;
mod understand;

pub(crate) use calls::Calls;
pub use understand::{Origin, understand};

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
/// `gen_ai.usage.cache_read.input_tokens`: input tokens read from the provider's prompt cache
/// (part of the input tokens).
pub const USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
/// `gen_ai.usage.reasoning.output_tokens`: output tokens spent on reasoning (part of the output
/// tokens).
pub const USAGE_REASONING_OUTPUT_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
/// `gen_ai.conversation.id`: the conversation (session, thread) a call belongs to.
pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
/// `tokentrace.cost.usd`: what the call cost, in USD, by the price table (no GenAI convention
/// names cost). Absent when the model has no price.
pub const COST_USD: &str = "tokentrace.cost.usd";
/// The metric event of a call's cost (`query_metrics`, `tokentrace_cost_usd_total`).
pub const COST_METRIC: &str = "cost_usd";
/// Its unit.
pub const COST_UNIT: &str = "USD";
/// `tokentrace.genai.origin`: who described the call: `gateway` (tokentrace's own), or the
/// instrumentation its span came from (`openai-v2`, `openllmetry`, `openinference`, `genai`).
pub const ORIGIN: &str = "tokentrace.genai.origin";
/// The gateway's origin.
pub const GATEWAY: &str = "gateway";
/// `tokentrace.genai.counted_by`: on an application's span of a call made through the gateway,
/// the gateway's span of the same call (which counted it; this one is not counted again).
pub const COUNTED_BY: &str = "tokentrace.genai.counted_by";
/// `gen_ai.input.messages`: the request's messages, JSON in the conventions' shape
/// (`[{role, parts: [{type: text, content} | {type: tool_call, id, name, arguments} | …]}]`).
pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
/// `gen_ai.output.messages`: the response's messages, same shape, with `finish_reason`.
pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
/// `gen_ai.system_instructions`: the system prompt, apart (`[{type: text, content}]`).
pub const SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
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
/// `gen_ai.client.token.usage` bucket boundaries: powers of 4 from 1 to 4^13.
pub const TOKEN_USAGE_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Output tokens per second bucket boundaries.
pub const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A metric event of LLM calls that is a running total: its name in Prometheus (`/metrics`)
/// and as an `otel_metric` instrument.
pub struct CallCounter {
    /// The metric event (`query_metrics` name).
    pub metric: &'static str,
    /// The Prometheus counter.
    pub prometheus: &'static str,
    /// The OTLP instrument (a monotonic sum), named so that a Collector's Prometheus exporter
    /// yields the same name as `/metrics`.
    pub otlp: &'static str,
    /// The OTLP unit.
    pub unit: &'static str,
    /// Help text.
    pub help: &'static str,
}

/// The running totals of LLM calls.
pub const CALL_COUNTERS: &[CallCounter] = &[
    CallCounter {
        metric: "prompt_tokens",
        prometheus: "llama_stack_prompt_tokens_total",
        otlp: "llama_stack_prompt_tokens",
        unit: "tokens",
        help: "Prompt (input) tokens of inference requests.",
    },
    CallCounter {
        metric: "completion_tokens",
        prometheus: "llama_stack_completion_tokens_total",
        otlp: "llama_stack_completion_tokens",
        unit: "tokens",
        help: "Completion (output) tokens of inference requests.",
    },
    CallCounter {
        metric: "total_tokens",
        prometheus: "llama_stack_tokens_total",
        otlp: "llama_stack_tokens",
        unit: "tokens",
        help: "Total tokens (prompt + completion) of inference requests.",
    },
    CallCounter {
        metric: "cached_tokens",
        prometheus: "tokentrace_cached_tokens_total",
        otlp: "tokentrace_cached_tokens",
        unit: "tokens",
        help: "Prompt tokens read from the provider's cache (part of the prompt tokens).",
    },
    CallCounter {
        metric: "reasoning_tokens",
        prometheus: "tokentrace_reasoning_tokens_total",
        otlp: "tokentrace_reasoning_tokens",
        unit: "tokens",
        help: "Completion tokens spent on reasoning (part of the completion tokens).",
    },
    CallCounter {
        metric: COST_METRIC,
        prometheus: "tokentrace_cost_usd_total",
        otlp: "tokentrace_cost_usd",
        unit: "{USD}",
        help: "What inference calls cost in USD, by the price table (priced calls only).",
    },
];

/// The running total a metric event adds to, if it is one.
pub fn call_counter(metric: &str) -> Option<&'static CallCounter> {
    CALL_COUNTERS.iter().find(|c| c.metric == metric)
}

/// Labels of the LLM-call metrics: the model, the provider, and (for calls described by an
/// application's instrumentation) the origin; an empty value is no label.
pub const CALL_LABELS: &[&str] = &["model_id", "provider_id", "origin", "project"];

/// Observations of one provider call.
pub struct GenAiObservation {
    /// `model_id`, `provider_id`, `origin`, `project` ([`CALL_LABELS`]).
    pub labels: [String; 4],
    /// Whether its tokens were counted, and it had no price.
    pub unpriced: bool,
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

/// The labels of a call: `model_id` (else the answering or requested model), `provider_id`
/// (else `gen_ai.provider.name`), the origin unless it is the gateway, and the project unless
/// it is `default`.
pub fn call_labels(span: &SpanRecord) -> [String; 4] {
    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| span.attributes.get(*k))
            .map(AttrValue::to_label)
            .unwrap_or_default()
    };
    let origin = label(&[ORIGIN]);
    [
        label(&["model_id", RESPONSE_MODEL, REQUEST_MODEL]),
        label(&["provider_id", PROVIDER_NAME]),
        if origin == GATEWAY {
            String::new()
        } else {
            origin
        },
        label(&[tokentrace_model::PROJECT_ATTRIBUTE]),
    ]
}

/// The observations of a finished span that records a GenAI operation; `None` for other spans
/// and for an application's span of a call the gateway recorded (counted there).
pub fn observe(span: &SpanRecord) -> Option<GenAiObservation> {
    if !span.attributes.contains_key(OPERATION_NAME) || span.attributes.contains_key(COUNTED_BY) {
        return None;
    }
    let duration = span.duration_ms()? / 1000.0;
    let ttft = number(span, RESPONSE_TIME_TO_FIRST_CHUNK);
    let generating = duration - ttft.unwrap_or(0.0);
    let tps = number(span, USAGE_OUTPUT_TOKENS)
        .filter(|o| *o > 0.0 && generating > 0.0)
        .map(|o| o / generating);
    let counted = span.attributes.contains_key(USAGE_INPUT_TOKENS)
        || span.attributes.contains_key(USAGE_OUTPUT_TOKENS);
    Some(GenAiObservation {
        labels: call_labels(span),
        unpriced: counted && !span.attributes.contains_key(COST_USD),
        duration,
        time_to_first_token: ttft,
        output_tokens_per_second: tps,
    })
}
