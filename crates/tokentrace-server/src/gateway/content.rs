//! A call's content in the GenAI conventions' shape: OpenAI request messages as
//! `gen_ai.input.messages` (`[{role, parts}]`, parts `text`, `tool_call`, `tool_call_response`,
//! `uri`), the answer as `gen_ai.output.messages` with its `finish_reason`.

use serde_json::{Map, Value, json};

/// A tool call of the answer, assembled from the response or from streamed fragments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    /// The function.
    pub name: String,
    /// Its arguments as the model wrote them (JSON text).
    pub arguments: String,
}

/// Arguments as the conventions want them: the JSON they hold, else the text.
fn arguments(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!(text))
}

fn tool_call_part(id: Option<&str>, name: &str, args: &str) -> Value {
    json!({"type": "tool_call", "id": id, "name": name, "arguments": arguments(args)})
}

/// The parts of an OpenAI `content`: a string, or a list of typed parts.
fn content_parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) => vec![json!({"type": "text", "content": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") | None => {
                    json!({"type": "text", "content": p.get("text").and_then(Value::as_str).unwrap_or_default()})
                }
                Some("image_url") => {
                    let uri = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    // Inline images are data, not a place: kept out of the span.
                    if uri.starts_with("data:") {
                        json!({"type": "blob", "modality": "image"})
                    } else {
                        json!({"type": "uri", "modality": "image", "uri": uri})
                    }
                }
                Some(other) => json!({"type": other}),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// One OpenAI request message in the conventions' shape.
fn input_message(m: &Value) -> Value {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
    let mut parts = Vec::new();
    if role == "tool" {
        let response: String = content_parts(m.get("content"))
            .iter()
            .filter_map(|p| p.get("content").and_then(Value::as_str))
            .collect();
        parts.push(json!({"type": "tool_call_response",
                          "id": m.get("tool_call_id").and_then(Value::as_str),
                          "response": response}));
    } else {
        parts = content_parts(m.get("content"));
    }
    for c in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(tool_call_part(
            c.get("id").and_then(Value::as_str),
            c.pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            c.pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        ));
    }
    let mut out = json!({"role": role, "parts": parts});
    if let Some(name) = m.get("name").and_then(Value::as_str) {
        out["name"] = json!(name);
    }
    out
}

/// `gen_ai.input.messages` of a request: its chat messages, else its prompt or input as one
/// user message.
pub fn input_messages(req: &Map<String, Value>) -> Value {
    if let Some(Value::Array(messages)) = req.get("messages") {
        return Value::Array(messages.iter().map(input_message).collect());
    }
    let texts: Vec<Value> = match req.get("prompt").or_else(|| req.get("input")) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| json!({"type": "text", "content": super::tokens::content_text(i)}))
            .collect(),
        Some(v) => vec![json!({"type": "text", "content": super::tokens::content_text(v)})],
        None => Vec::new(),
    };
    json!([{"role": "user", "parts": texts}])
}

/// The conventions' finish reason for an OpenAI one.
fn finish_reason(openai: Option<&str>) -> &str {
    match openai {
        Some("tool_calls") | Some("function_call") => "tool_call",
        Some(other) => other,
        None => "stop",
    }
}

/// `gen_ai.output.messages` of an answer.
pub fn output_messages(text: &str, calls: &[ToolCall], finish: Option<&str>) -> Value {
    let mut parts = Vec::new();
    if !text.is_empty() {
        parts.push(json!({"type": "text", "content": text}));
    }
    for c in calls {
        let id = (!c.id.is_empty()).then_some(c.id.as_str());
        parts.push(tool_call_part(id, &c.name, &c.arguments));
    }
    json!([{"role": "assistant", "parts": parts, "finish_reason": finish_reason(finish)}])
}

/// Adds the tool calls of a response message (`tool_calls`) or of a streamed delta (fragments
/// by `index`) to `calls`.
pub fn add_tool_calls(calls: &mut Vec<ToolCall>, tool_calls: Option<&Value>, streamed: bool) {
    for (i, c) in tool_calls
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = if streamed {
            c.get("index")
                .and_then(Value::as_u64)
                .map_or(i, |n| n as usize)
        } else {
            calls.len()
        };
        // Indexes come from the provider: only the next one may open a new call.
        if index > calls.len() || index >= 128 {
            continue;
        }
        if index == calls.len() {
            calls.push(ToolCall::default());
        }
        let call = &mut calls[index];
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            call.id = id.to_string();
        }
        if let Some(n) = c.pointer("/function/name").and_then(Value::as_str) {
            call.name.push_str(n);
        }
        if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str) {
            call.arguments.push_str(a);
        }
    }
}

fn shorten_strings(v: &mut Value, budget: usize) {
    match v {
        Value::String(s) if s.len() > budget => {
            let mut end = budget;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shorten_strings(i, budget)),
        Value::Object(m) => m.values_mut().for_each(|i| shorten_strings(i, budget)),
        _ => {}
    }
}

fn count_strings(v: &Value) -> usize {
    match v {
        Value::String(_) => 1,
        Value::Array(items) => items.iter().map(count_strings).sum(),
        Value::Object(m) => m.values().map(count_strings).sum(),
        _ => 0,
    }
}

/// `messages` as JSON text of at most about `max` bytes: past it, every text is cut to its
/// share (still valid JSON; a cut text ends in `…`).
pub fn fit(mut messages: Value, max: usize) -> String {
    let text = messages.to_string();
    if text.len() <= max {
        return text;
    }
    let budget = (max / count_strings(&messages).max(1)).max(16);
    shorten_strings(&mut messages, budget);
    messages.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn openai_messages_become_the_conventions_shape() {
        let req = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "rainy, 57F"}
        ]});
        let got = input_messages(req.as_object().unwrap());
        assert_eq!(
            got,
            json!([
                {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                {"role": "user", "parts": [{"type": "text", "content": "hi"},
                                           {"type": "uri", "modality": "image", "uri": "https://x/cat.png"},
                                           {"type": "blob", "modality": "image"}]},
                {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"location": "Paris"}}]},
                {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "rainy, 57F"}]}
            ])
        );
        let prompt = json!({"prompt": "once upon"});
        assert_eq!(
            input_messages(prompt.as_object().unwrap()),
            json!([{"role": "user", "parts": [{"type": "text", "content": "once upon"}]}])
        );
    }

    #[test]
    fn long_content_is_cut_and_stays_json() {
        let m =
            json!([{"role": "user", "parts": [{"type": "text", "content": "x".repeat(10_000)}]}]);
        let t = fit(m, 1_000);
        assert!(t.len() < 1_200, "{}", t.len());
        let back: Value = serde_json::from_str(&t).unwrap();
        assert!(
            back[0]["parts"][0]["content"]
                .as_str()
                .unwrap()
                .ends_with('…')
        );
    }

    #[test]
    fn streamed_tool_call_fragments_are_joined_by_index() {
        let mut calls = Vec::new();
        for delta in [
            json!([{"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": ""}}]),
            json!([{"index": 0, "function": {"arguments": "{\"loc"}}]),
            json!([{"index": 0, "function": {"arguments": "ation\":\"Paris\"}"}}]),
            json!([{"index": 7, "function": {"arguments": "ignored"}}]),
        ] {
            add_tool_calls(&mut calls, Some(&delta), true);
        }
        assert_eq!(calls.len(), 1);
        assert_eq!(
            output_messages("", &calls, Some("tool_calls")),
            json!([{"role": "assistant", "finish_reason": "tool_call", "parts": [
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"location": "Paris"}}]}])
        );
    }
}
