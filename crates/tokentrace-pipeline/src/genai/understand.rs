//! Spans from other instrumentations, understood: the LLM spans of OpenLLMetry (Traceloop),
//! OpenInference (Phoenix) and older GenAI conventions get the canonical GenAI attributes
//! (model, provider, usage, messages, user, session) beside their own, which are kept.

use serde_json::{Map, Value, json};
use tokentrace_model::{AttrValue, Attributes};

use super::{
    CONVERSATION_ID, INPUT_MESSAGES, OPERATION_NAME, OUTPUT_MESSAGES, PROVIDER_NAME, REQUEST_MODEL,
    RESPONSE_FINISH_REASONS, RESPONSE_ID, RESPONSE_MODEL, USAGE_CACHE_READ_INPUT_TOKENS,
    USAGE_INPUT_TOKENS, USAGE_OUTPUT_TOKENS, USAGE_REASONING_OUTPUT_TOKENS,
};

/// Who described an LLM call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The OpenTelemetry GenAI conventions as they are (`opentelemetry-instrumentation-openai-v2`
    /// and every instrumentation that follows them).
    OtelGenAi,
    /// OpenLLMetry / Traceloop.
    OpenLlmetry,
    /// OpenInference / Phoenix.
    OpenInference,
}

impl Origin {
    /// The value of `tokentrace.genai.origin` and of the metric label `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::OtelGenAi => "otel_genai",
            Origin::OpenLlmetry => "openllmetry",
            Origin::OpenInference => "openinference",
        }
    }
}

/// Largest `output.value` read for a response id.
const MAX_OUTPUT_VALUE: usize = 1 << 20;

fn has_prefix(a: &Attributes, prefix: &str) -> bool {
    a.range(prefix.to_string()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(prefix))
}

fn origin_of(a: &Attributes) -> Option<Origin> {
    if a.contains_key("openinference.span.kind")
        || a.contains_key("llm.model_name")
        || has_prefix(a, "llm.token_count.")
    {
        return Some(Origin::OpenInference);
    }
    if [
        "llm.request.type",
        "llm.is_streaming",
        "gen_ai.is_streaming",
        "gen_ai.openai.api_base",
        "llm.usage.total_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
    ]
    .iter()
    .any(|k| a.contains_key(*k))
        || has_prefix(a, "gen_ai.prompt.")
        || has_prefix(a, "gen_ai.completion.")
        || has_prefix(a, "traceloop.")
    {
        return Some(Origin::OpenLlmetry);
    }
    [
        OPERATION_NAME,
        USAGE_INPUT_TOKENS,
        USAGE_OUTPUT_TOKENS,
        "gen_ai.system",
    ]
    .iter()
    .any(|k| a.contains_key(*k))
    .then_some(Origin::OtelGenAi)
}

/// Copies `from` to `to` unless `to` is already there.
fn alias(a: &mut Attributes, from: &str, to: &str) {
    if !a.contains_key(to)
        && let Some(v) = a.get(from).cloned()
    {
        a.insert(to.to_string(), v);
    }
}

fn set_default(a: &mut Attributes, key: &str, v: impl Into<AttrValue>) {
    if !a.contains_key(key) {
        a.insert(key.to_string(), v.into());
    }
}

/// The attributes under `prefix` (`gen_ai.prompt.`) as a tree: `0.role` → `{"0": {"role": …}}`.
fn tree(a: &Attributes, prefix: &str) -> Map<String, Value> {
    let mut root = Map::new();
    for (k, v) in a.range(prefix.to_string()..) {
        let Some(rest) = k.strip_prefix(prefix) else {
            break;
        };
        let mut node = &mut root;
        let mut parts = rest.split('.').peekable();
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                node.insert(p.to_string(), v.to_json());
                break;
            }
            let next = node
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            match next {
                Value::Object(m) => node = m,
                _ => break,
            }
        }
    }
    root
}

/// The numbered children of a tree node, in number order.
fn numbered(m: &Map<String, Value>) -> Vec<&Value> {
    let mut items: Vec<(u64, &Value)> = m
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
        .collect();
    items.sort_by_key(|(i, _)| *i);
    items.into_iter().map(|(_, v)| v).collect()
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Arguments as the conventions want them: the JSON they hold, else the text.
fn arguments(v: Option<&Value>) -> Value {
    match v {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// One message in the GenAI conventions' shape: `{role, parts: [...], finish_reason?}`.
fn message(
    role: Option<String>,
    texts: Vec<String>,
    tool_calls: Vec<Value>,
    tool_call_id: Option<String>,
    finish_reason: Option<String>,
) -> Value {
    let role = role.unwrap_or_else(|| "user".into());
    let mut parts: Vec<Value> = Vec::new();
    if role == "tool" {
        let response = texts.join("");
        parts.push(json!({"type": "tool_call_response", "id": tool_call_id, "response": response}));
    } else {
        parts.extend(
            texts
                .into_iter()
                .map(|t| json!({"type": "text", "content": t})),
        );
    }
    parts.extend(tool_calls);
    let mut m = json!({"role": role, "parts": parts});
    if let Some(f) = finish_reason {
        m["finish_reason"] = json!(f);
    }
    m
}

/// OpenLLMetry's `gen_ai.prompt.N.*` / `gen_ai.completion.N.*`.
fn openllmetry_messages(a: &Attributes, prefix: &str) -> Vec<Value> {
    numbered(&tree(a, prefix))
        .into_iter()
        .filter_map(Value::as_object)
        .map(|m| {
            let calls = m
                .get("tool_calls")
                .and_then(Value::as_object)
                .map(numbered)
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    json!({"type": "tool_call", "id": text_of(c.get("id")),
                           "name": text_of(c.get("name")), "arguments": arguments(c.get("arguments"))})
                })
                .collect();
            message(
                text_of(m.get("role")),
                text_of(m.get("content")).into_iter().collect(),
                calls,
                text_of(m.get("tool_call_id")),
                text_of(m.get("finish_reason")),
            )
        })
        .collect()
}

/// OpenInference's `llm.input_messages.N.message.*`.
fn openinference_messages(a: &Attributes, prefix: &str, finish: Option<String>) -> Vec<Value> {
    let mut out: Vec<Value> = numbered(&tree(a, prefix))
        .into_iter()
        .filter_map(|m| m.get("message")?.as_object())
        .map(|m| {
            let mut texts: Vec<String> = text_of(m.get("content")).into_iter().collect();
            if let Some(contents) = m.get("contents").and_then(Value::as_object) {
                texts.extend(
                    numbered(contents)
                        .into_iter()
                        .filter_map(|c| text_of(c.pointer("/message_content/text"))),
                );
            }
            let calls = m
                .get("tool_calls")
                .and_then(Value::as_object)
                .map(numbered)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.get("tool_call"))
                .map(|c| {
                    json!({"type": "tool_call", "id": text_of(c.get("id")),
                           "name": text_of(c.pointer("/function/name")),
                           "arguments": arguments(c.pointer("/function/arguments"))})
                })
                .collect();
            message(
                text_of(m.get("role")),
                texts,
                calls,
                text_of(m.get("tool_call_id")),
                None,
            )
        })
        .collect();
    if let (Some(f), Some(first)) = (finish, out.first_mut()) {
        first["finish_reason"] = json!(f);
    }
    out
}

fn put_messages(a: &mut Attributes, key: &str, messages: Vec<Value>) {
    if !messages.is_empty() && !a.contains_key(key) {
        a.insert(key.to_string(), Value::Array(messages).to_string().into());
    }
}

/// OpenLLMetry's names → the conventions' (first found wins for a target).
const OPENLLMETRY_NAMES: &[(&str, &str)] = &[
    ("gen_ai.usage.prompt_tokens", USAGE_INPUT_TOKENS),
    ("gen_ai.usage.completion_tokens", USAGE_OUTPUT_TOKENS),
    (
        "gen_ai.usage.cache_read_input_tokens",
        USAGE_CACHE_READ_INPUT_TOKENS,
    ),
    (
        "gen_ai.usage.reasoning_tokens",
        USAGE_REASONING_OUTPUT_TOKENS,
    ),
    ("llm.usage.reasoning_tokens", USAGE_REASONING_OUTPUT_TOKENS),
    ("traceloop.association.properties.user_id", "user.id"),
    ("gen_ai.user", "user.id"),
    ("llm.user", "user.id"),
    ("traceloop.association.properties.session_id", "session.id"),
];

/// OpenInference's token counts → the conventions' usage names.
const OPENINFERENCE_USAGE: &[(&str, &str)] = &[
    ("llm.token_count.prompt", USAGE_INPUT_TOKENS),
    ("llm.token_count.completion", USAGE_OUTPUT_TOKENS),
    (
        "llm.token_count.prompt_details.cache_read",
        USAGE_CACHE_READ_INPUT_TOKENS,
    ),
    (
        "llm.token_count.completion_details.reasoning",
        USAGE_REASONING_OUTPUT_TOKENS,
    ),
];

fn openllmetry(a: &mut Attributes) {
    if let Some(t) = a.get("llm.request.type").and_then(AttrValue::as_str) {
        let op = match t {
            "chat" => "chat",
            "completion" => "text_completion",
            "embedding" => "embeddings",
            other => other,
        }
        .to_string();
        set_default(a, OPERATION_NAME, op);
    }
    for (from, to) in OPENLLMETRY_NAMES {
        alias(a, from, to);
    }
    let input = openllmetry_messages(a, "gen_ai.prompt.");
    put_messages(a, INPUT_MESSAGES, input);
    let output = openllmetry_messages(a, "gen_ai.completion.");
    put_messages(a, OUTPUT_MESSAGES, output);
}

fn openinference(a: &mut Attributes) {
    match a.get("openinference.span.kind").and_then(AttrValue::as_str) {
        Some("LLM") => set_default(a, OPERATION_NAME, "chat"),
        Some("EMBEDDING") => set_default(a, OPERATION_NAME, "embeddings"),
        _ => {}
    }
    alias(a, "llm.provider", PROVIDER_NAME);
    alias(a, "llm.system", PROVIDER_NAME);
    alias(a, "llm.model_name", RESPONSE_MODEL);
    if !a.contains_key(REQUEST_MODEL) {
        let asked = a
            .get("llm.invocation_parameters")
            .and_then(AttrValue::as_str)
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .and_then(|p| p.get("model")?.as_str().map(str::to_string));
        match asked {
            Some(m) => {
                a.insert(REQUEST_MODEL.into(), m.into());
            }
            None => alias(a, "llm.model_name", REQUEST_MODEL),
        }
    }
    for (from, to) in OPENINFERENCE_USAGE {
        alias(a, from, to);
    }
    let finish = a
        .get("llm.finish_reason")
        .and_then(AttrValue::as_str)
        .map(str::to_string);
    if let Some(f) = &finish {
        set_default(
            a,
            RESPONSE_FINISH_REASONS,
            AttrValue::Array(vec![f.as_str().into()]),
        );
    }
    let input = openinference_messages(a, "llm.input_messages.", None);
    put_messages(a, INPUT_MESSAGES, input);
    let output = openinference_messages(a, "llm.output_messages.", finish);
    put_messages(a, OUTPUT_MESSAGES, output);
    if !a.contains_key(RESPONSE_ID) {
        let id = a
            .get("output.value")
            .and_then(AttrValue::as_str)
            .filter(|v| v.len() <= MAX_OUTPUT_VALUE && v.starts_with('{'))
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
            .and_then(|v| v.get("id")?.as_str().map(str::to_string));
        if let Some(id) = id {
            a.insert(RESPONSE_ID.into(), id.into());
        }
    }
}

/// Adds the canonical GenAI attributes to the attributes of a span that describes an LLM call
/// in another instrumentation's words; returns whose words they were, `None` for spans that
/// are no GenAI description. Nothing present is overwritten.
pub fn understand(a: &mut Attributes) -> Option<Origin> {
    let origin = origin_of(a)?;
    alias(a, "gen_ai.system", PROVIDER_NAME);
    match origin {
        Origin::OpenLlmetry => openllmetry(a),
        Origin::OpenInference => openinference(a),
        Origin::OtelGenAi => {}
    }
    alias(a, "session.id", CONVERSATION_ID);
    Some(origin)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn messages(a: &Attributes, key: &str) -> Value {
        serde_json::from_str(a.get(key).and_then(AttrValue::as_str).unwrap()).unwrap()
    }

    #[test]
    fn openllmetry_legacy_spans_get_the_canonical_names() {
        let mut a = attrs(&[
            ("llm.request.type", "chat".into()),
            ("gen_ai.system", "openai".into()),
            ("gen_ai.request.model", "gpt-4o-mini".into()),
            ("llm.user", "u-42".into()),
            ("gen_ai.prompt.0.role", "system".into()),
            ("gen_ai.prompt.0.content", "You are terse.".into()),
            ("gen_ai.prompt.1.role", "user".into()),
            ("gen_ai.prompt.1.content", "Hi".into()),
            ("gen_ai.usage.input_tokens", AttrValue::Int(12)),
            ("gen_ai.usage.output_tokens", AttrValue::Int(5)),
            ("gen_ai.usage.cache_read_input_tokens", AttrValue::Int(4)),
            ("llm.usage.reasoning_tokens", AttrValue::Int(2)),
            ("gen_ai.completion.0.role", "assistant".into()),
            ("gen_ai.completion.0.finish_reason", "tool_calls".into()),
            ("gen_ai.completion.0.tool_calls.0.id", "call_1".into()),
            (
                "gen_ai.completion.0.tool_calls.0.name",
                "get_weather".into(),
            ),
            (
                "gen_ai.completion.0.tool_calls.0.arguments",
                "{\"location\": \"Paris\"}".into(),
            ),
            ("traceloop.association.properties.session_id", "s-1".into()),
        ]);
        assert_eq!(understand(&mut a), Some(Origin::OpenLlmetry));
        assert_eq!(a["gen_ai.provider.name"], "openai".into());
        assert_eq!(a["gen_ai.operation.name"], "chat".into());
        assert_eq!(a["gen_ai.usage.cache_read.input_tokens"], AttrValue::Int(4));
        assert_eq!(a["gen_ai.usage.reasoning.output_tokens"], AttrValue::Int(2));
        assert_eq!(a["user.id"], "u-42".into());
        assert_eq!(a["session.id"], "s-1".into());
        assert_eq!(a["gen_ai.conversation.id"], "s-1".into());
        assert_eq!(
            messages(&a, INPUT_MESSAGES),
            json!([
                {"role": "system", "parts": [{"type": "text", "content": "You are terse."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Hi"}]}
            ])
        );
        assert_eq!(
            messages(&a, OUTPUT_MESSAGES),
            json!([{"role": "assistant", "finish_reason": "tool_calls", "parts": [
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"location": "Paris"}}
            ]}])
        );
        // The originals stay.
        assert!(a.contains_key("gen_ai.prompt.1.content"));
    }

    #[test]
    fn openinference_spans_get_model_usage_messages_and_the_response_id() {
        let mut a = attrs(&[
            ("openinference.span.kind", "LLM".into()),
            ("llm.system", "openai".into()),
            ("llm.model_name", "gpt-4o-mini-2024-07-18".into()),
            (
                "llm.invocation_parameters",
                "{\"model\": \"gpt-4o-mini\"}".into(),
            ),
            ("llm.token_count.prompt", AttrValue::Int(12)),
            ("llm.token_count.completion", AttrValue::Int(5)),
            (
                "llm.token_count.prompt_details.cache_read",
                AttrValue::Int(4),
            ),
            ("llm.input_messages.0.message.role", "user".into()),
            ("llm.input_messages.0.message.content", "Hi".into()),
            ("llm.output_messages.0.message.role", "assistant".into()),
            ("llm.output_messages.0.message.content", "Hello!".into()),
            ("llm.finish_reason", "stop".into()),
            (
                "output.value",
                "{\"id\":\"chatcmpl-abc\",\"choices\":[]}".into(),
            ),
            ("session.id", "s-7".into()),
        ]);
        assert_eq!(understand(&mut a), Some(Origin::OpenInference));
        assert_eq!(a["gen_ai.operation.name"], "chat".into());
        assert_eq!(a["gen_ai.request.model"], "gpt-4o-mini".into());
        assert_eq!(a["gen_ai.response.model"], "gpt-4o-mini-2024-07-18".into());
        assert_eq!(a["gen_ai.usage.input_tokens"], AttrValue::Int(12));
        assert_eq!(a["gen_ai.response.id"], "chatcmpl-abc".into());
        assert_eq!(
            messages(&a, OUTPUT_MESSAGES),
            json!([{"role": "assistant", "finish_reason": "stop", "parts": [{"type": "text", "content": "Hello!"}]}])
        );
    }

    #[test]
    fn other_spans_are_left_alone_and_nothing_present_is_overwritten() {
        let mut plain = attrs(&[("http.route", "/x".into())]);
        assert_eq!(understand(&mut plain), None);
        assert_eq!(plain.len(), 1);
        let mut current = attrs(&[
            ("gen_ai.operation.name", "chat".into()),
            ("gen_ai.system", "old".into()),
            ("gen_ai.provider.name", "openai".into()),
        ]);
        assert_eq!(understand(&mut current), Some(Origin::OtelGenAi));
        assert_eq!(current["gen_ai.provider.name"], "openai".into());
    }
}
