//! A trace as text: its spans as a tree (parent above children, by start time), each line with
//! its duration, status and a bar on the trace's shared time axis (a waterfall), and under it
//! the span's key attributes, or all of them and the GenAI conversation. `tokentrace trace`
//! prints it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokentrace_model::{AttrValue, Attributes, SpanId, SpanStatus, Timestamp};

use crate::genai;

/// ANSI: reset.
pub const RESET: &str = "\x1b[0m";
/// ANSI: dim.
pub const DIM: &str = "\x1b[2m";
/// ANSI: bold.
pub const BOLD: &str = "\x1b[1m";
/// ANSI: red.
pub const RED: &str = "\x1b[31m";
/// ANSI: yellow.
pub const YELLOW: &str = "\x1b[33m";
/// ANSI: green.
pub const GREEN: &str = "\x1b[32m";
/// ANSI: cyan.
pub const CYAN: &str = "\x1b[36m";

/// What the tree needs of a span.
#[derive(Clone, Copy, Debug)]
pub struct TreeSpan<'a> {
    /// The span.
    pub span_id: SpanId,
    /// Its parent; a span whose parent is not among the spans is a root.
    pub parent: Option<SpanId>,
    /// Name.
    pub name: &'a str,
    /// Start.
    pub start: Timestamp,
    /// End, if it ended.
    pub end: Option<Timestamp>,
    /// Status, if it has one.
    pub status: Option<SpanStatus>,
    /// Why it failed, when it says.
    pub status_message: Option<&'a str>,
    /// Attributes.
    pub attributes: &'a Attributes,
}

/// How to print.
#[derive(Clone, Copy, Debug)]
pub struct TreeStyle {
    /// ANSI colours.
    pub color: bool,
    /// Columns available.
    pub width: usize,
    /// Every attribute, not just the key attributes.
    pub full: bool,
    /// With `full`: the GenAI conversation as messages (instead of its two attributes).
    pub conversation: bool,
    /// With `full`: attribute values longer than this are cut.
    pub max_value_len: usize,
}

impl TreeStyle {
    /// Key attributes only (`tokentrace trace`, `tail`).
    pub fn brief(color: bool, width: usize) -> Self {
        Self {
            color,
            width,
            full: false,
            conversation: false,
            max_value_len: usize::MAX,
        }
    }

    /// Every attribute and the conversation (`--full`).
    pub fn full(color: bool, width: usize) -> Self {
        Self {
            full: true,
            conversation: true,
            ..Self::brief(color, width)
        }
    }
}

/// The key facts of a span, in a few words: its model, tokens, finish reason, time to first
/// token, HTTP status, error type, user and session, where it has them.
pub fn key_facts(a: &Attributes) -> Vec<String> {
    let get = |k: &str| a.get(k).map(value_text);
    let mut out = Vec::new();
    if let Some(m) = [genai::RESPONSE_MODEL, genai::REQUEST_MODEL, "model_id"]
        .iter()
        .find_map(|k| get(k))
    {
        out.push(format!("model={m}"));
    }
    match (
        get(genai::USAGE_INPUT_TOKENS),
        get(genai::USAGE_OUTPUT_TOKENS),
    ) {
        (None, None) => {}
        (i, o) => out.push(format!(
            "tokens={}→{}",
            i.as_deref().unwrap_or("?"),
            o.as_deref().unwrap_or("?")
        )),
    }
    if let Some(AttrValue::Array(reasons)) = a.get(genai::RESPONSE_FINISH_REASONS) {
        let r: Vec<String> = reasons.iter().map(value_text).collect();
        out.push(format!("finish={}", r.join(",")));
    }
    if let Some(ttft) = a
        .get(genai::RESPONSE_TIME_TO_FIRST_CHUNK)
        .and_then(|v| match v {
            AttrValue::Float(f) => Some(*f),
            AttrValue::Int(i) => Some(*i as f64),
            _ => None,
        })
    {
        out.push(format!("ttft={}", duration(ttft * 1000.0)));
    }
    for (key, label) in [
        ("http.response.status_code", "http"),
        ("error.type", "error.type"),
        ("user.id", "user"),
        ("session.id", "session"),
    ] {
        if let Some(v) = get(key) {
            out.push(format!("{label}={v}"));
        }
    }
    out
}

/// `text` in the ANSI `code` when `color`, else as it is.
pub fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

/// Cuts `s` to `max` characters, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` safe to print on a terminal: line breaks and tabs become spaces, other control
/// characters (escape sequences a client may have put in an attribute) `�`.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect::<String>()
        .into()
}

/// Pads `s` with spaces to `width` characters.
fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

/// A duration in milliseconds, readable: `850 µs`, `412.3 ms`, `3.21 s`.
pub fn duration(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn value_text(v: &AttrValue) -> String {
    match v {
        AttrValue::String(s) => printable(s).into_owned(),
        other => other.to_json().to_string(),
    }
}

/// Order of the tree: (index, depth, prefix for the span's line, prefix for lines under it).
fn order(spans: &[TreeSpan<'_>]) -> Vec<(usize, String, String)> {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent.filter(|p| ids.contains(p) && *p != s.span_id) {
            Some(p) => children.entry(p).or_default().push(i),
            None => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start, i));
    by_start(&mut roots);
    children.values_mut().for_each(by_start);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    // (index, prefix of its line, prefix of its children's lines)
    let mut stack: Vec<(usize, String, String)> = roots
        .iter()
        .rev()
        .map(|&i| (i, String::new(), String::new()))
        .collect();
    while let Some((i, line, under)) = stack.pop() {
        if !seen.insert(spans[i].span_id) {
            continue;
        }
        let kids = children.get(&spans[i].span_id).cloned().unwrap_or_default();
        for (n, &k) in kids.iter().enumerate().rev() {
            let last = n + 1 == kids.len();
            let (branch, cont) = if last {
                ("└─ ", "   ")
            } else {
                ("├─ ", "│  ")
            };
            stack.push((k, format!("{under}{branch}"), format!("{under}{cont}")));
        }
        let body = if kids.is_empty() {
            format!("{under}   ")
        } else {
            format!("{under}│  ")
        };
        out.push((i, line, body));
    }
    // Spans caught in a parent cycle have no root: print them after the rest.
    for (i, s) in spans.iter().enumerate() {
        if !seen.contains(&s.span_id) {
            out.push((i, String::new(), "   ".into()));
        }
    }
    out
}

/// The lines of a trace's tree.
pub fn render(spans: &[TreeSpan<'_>], style: &TreeStyle) -> Vec<String> {
    if spans.is_empty() {
        return Vec::new();
    }
    let c = style.color;
    let t0 = spans
        .iter()
        .map(|s| s.start)
        .min()
        .unwrap_or(spans[0].start);
    let t1 = spans
        .iter()
        .map(|s| s.end.unwrap_or(s.start))
        .max()
        .unwrap_or(t0)
        .max(t0);
    let total = (t1.unix_nanos() - t0.unix_nanos()).max(1) as f64;
    let rows = order(spans);
    let labels: Vec<String> = rows
        .iter()
        .map(|(i, line, _)| format!("{line}{}", printable(spans[*i].name)))
        .collect();
    let width = style.width.max(60);
    let name_w = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(width * 2 / 5);
    // name, two spaces, duration (10), two, status (5), two, bar
    let bar_w = width.saturating_sub(name_w + 21).max(10);
    let mut out = Vec::new();
    for ((i, _, under), label) in rows.iter().zip(&labels) {
        let s = &spans[*i];
        let dur = s
            .end
            .map(|e| duration((e.unix_nanos() - s.start.unix_nanos()) as f64 / 1e6))
            .unwrap_or_else(|| "-".into());
        let (status, code) = match (s.end, s.status) {
            (None, _) => ("open", YELLOW),
            (_, Some(SpanStatus::Error)) => ("error", RED),
            (_, Some(SpanStatus::Ok)) => ("ok", GREEN),
            (_, None) => ("-", DIM),
        };
        let from =
            ((s.start.unix_nanos() - t0.unix_nanos()) as f64 / total * bar_w as f64) as usize;
        let len = s.end.map_or(1.0, |e| {
            (e.unix_nanos() - s.start.unix_nanos()) as f64 / total * bar_w as f64
        });
        let from = from.min(bar_w - 1);
        let len = (len.round() as usize).clamp(1, bar_w - from);
        let bar = format!("{}{}", " ".repeat(from), "█".repeat(len));
        let name = pad(&truncate(label, name_w), name_w);
        out.push(format!(
            "{}  {:>10}  {}  {}",
            paint(c, BOLD, &name),
            dur,
            paint(c, code, &pad(status, 5)),
            paint(c, if status == "error" { RED } else { CYAN }, &bar),
        ));
        out.extend(details(s, under, style));
    }
    out
}

/// The lines under a span: key attributes on one line, or every attribute and the
/// conversation.
fn details(s: &TreeSpan<'_>, under: &str, style: &TreeStyle) -> Vec<String> {
    let c = style.color;
    let room = style
        .width
        .max(60)
        .saturating_sub(under.chars().count() + 2);
    let mut out = Vec::new();
    if let (Some(SpanStatus::Error), Some(msg)) = (s.status, s.status_message) {
        let msg = truncate(&printable(msg), room.saturating_sub(7));
        out.push(format!(
            "{under}  {}",
            paint(c, RED, &format!("error: {msg}"))
        ));
    }
    if !style.full {
        let parts = key_facts(s.attributes);
        if !parts.is_empty() {
            let text = truncate(&parts.join("  "), room);
            out.push(format!("{under}  {}", paint(c, DIM, &text)));
        }
        return out;
    }
    let key_w = s
        .attributes
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in s.attributes {
        if style.conversation && CONTENT_KEYS.contains(&k.as_str()) {
            continue;
        }
        let max = room
            .saturating_sub(key_w + 3)
            .max(20)
            .min(style.max_value_len);
        out.push(format!(
            "{under}  {} = {}",
            paint(c, CYAN, &pad(&printable(k), key_w)),
            truncate(&value_text(v), max)
        ));
    }
    if !style.conversation {
        return out;
    }
    for (role, text) in conversation(s.attributes) {
        out.push(format!(
            "{under}  {}",
            paint(c, BOLD, &format!("{}:", printable(&role)))
        ));
        for line in text.lines() {
            out.push(format!("{under}    {}", printable(line)));
        }
    }
    out
}

/// The attributes that hold a span's conversation.
const CONTENT_KEYS: &[&str] = &[
    genai::SYSTEM_INSTRUCTIONS,
    genai::INPUT_MESSAGES,
    genai::OUTPUT_MESSAGES,
    genai::PROMPT,
    genai::COMPLETION,
];

/// The GenAI conversation of a span, as (role, text): its system instructions, its input
/// messages (`gen_ai.input.messages`, else `gen_ai.prompt`: OpenAI messages, a prompt string or
/// an input), then the answer (`gen_ai.output.messages`, else `gen_ai.completion`).
pub fn conversation(attributes: &Attributes) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |key: &str, default_role: &str| {
        let Some(AttrValue::String(p)) = attributes.get(key) else {
            return false;
        };
        match serde_json::from_str::<Value>(p) {
            Ok(Value::Array(messages)) => {
                for m in messages {
                    let (role, text) = message(&m);
                    let role = if role == "message" {
                        default_role.to_string()
                    } else {
                        role
                    };
                    out.push((role, text));
                }
            }
            Ok(Value::String(s)) => out.push((default_role.into(), s)),
            Ok(other) => out.push((default_role.into(), other.to_string())),
            Err(_) => out.push((default_role.into(), p.clone())),
        }
        true
    };
    add(genai::SYSTEM_INSTRUCTIONS, "system");
    if !add(genai::INPUT_MESSAGES, "user") {
        add(genai::PROMPT, "prompt");
    }
    if !add(genai::OUTPUT_MESSAGES, "assistant") {
        add(genai::COMPLETION, "assistant");
    }
    out
}

/// One part's text: `text` (OpenAI) or `content` (GenAI conventions), a tool call as
/// `→ name(arguments)`, a tool's answer as its response, other kinds by type.
fn part_text(p: &Value) -> String {
    let as_text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    match p.get("type").and_then(Value::as_str) {
        Some("tool_call") => {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
            let args = as_text(p.get("arguments")).unwrap_or_default();
            format!("→ {name}({args})")
        }
        Some("tool_call_response") => as_text(p.get("response")).unwrap_or_default(),
        kind => as_text(p.get("text"))
            .or_else(|| as_text(p.get("content")))
            .unwrap_or_else(|| format!("[{}]", kind.unwrap_or("part"))),
    }
}

fn message(m: &Value) -> (String, String) {
    let Some(obj) = m.as_object() else {
        return ("message".into(), m.to_string());
    };
    let role = obj.get("role").and_then(Value::as_str).unwrap_or("message");
    let parts = |v: &Vec<Value>| v.iter().map(part_text).collect::<Vec<_>>().join("\n");
    let mut text = match (obj.get("content"), obj.get("parts")) {
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Array(p)), _) | (_, Some(Value::Array(p))) => parts(p),
        // A bare part (system instructions are a list of parts).
        (None, None) if obj.contains_key("type") => part_text(m),
        (Some(Value::Null) | None, _) => String::new(),
        (Some(other), _) => other.to_string(),
    };
    for call in obj
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let args = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("→ {name}({args})"));
    }
    (role.to_string(), text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + ms * 1_000_000)
    }

    #[test]
    fn children_sit_under_their_parent_in_start_order_with_bars_on_one_axis() {
        let (root, a, b) = (SpanId::random(), SpanId::random(), SpanId::random());
        let none = Attributes::new();
        let model: Attributes = [(genai::REQUEST_MODEL.to_string(), AttrValue::from("m1"))]
            .into_iter()
            .collect();
        // Stored in end order: children first.
        let spans = [
            TreeSpan {
                span_id: b,
                parent: Some(root),
                name: "second",
                start: at(50),
                end: Some(at(100)),
                status: Some(SpanStatus::Error),
                status_message: None,
                attributes: &none,
            },
            TreeSpan {
                span_id: a,
                parent: Some(root),
                name: "first",
                start: at(0),
                end: Some(at(50)),
                status: Some(SpanStatus::Ok),
                status_message: None,
                attributes: &model,
            },
            TreeSpan {
                span_id: root,
                parent: None,
                name: "root",
                start: at(0),
                end: Some(at(100)),
                status: Some(SpanStatus::Ok),
                status_message: None,
                attributes: &none,
            },
        ];
        let style = TreeStyle::brief(false, 80);
        let lines = render(&spans, &style);
        assert!(lines[0].starts_with("root"), "{lines:#?}");
        assert!(lines[1].starts_with("├─ first"), "{lines:#?}");
        assert!(lines[2].contains("model=m1"), "{lines:#?}");
        assert!(
            lines[3].starts_with("└─ second") && lines[3].contains("error"),
            "{lines:#?}"
        );
        let bar = |l: &str| {
            (
                l.chars().position(|c| c == '█').unwrap(),
                l.matches('█').count(),
            )
        };
        let (root_at, root_len) = bar(&lines[0]);
        let (first_at, first_len) = bar(&lines[1]);
        let (second_at, second_len) = bar(&lines[3]);
        assert_eq!(root_at, first_at);
        assert_eq!(second_at, first_at + first_len);
        assert_eq!(first_len + second_len, root_len);
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:#?}");
        assert!(!lines.concat().contains('\x1b'));
    }

    #[test]
    fn escape_sequences_in_stored_text_are_not_printed() {
        assert_eq!(printable("ok\x1b[2Jgone\nnext"), "ok\u{fffd}[2Jgone next");
        assert_eq!(printable("plain"), "plain");
    }

    #[test]
    fn a_parent_cycle_still_prints_every_span_once() {
        let (a, b) = (SpanId::random(), SpanId::random());
        let none = Attributes::new();
        let spans = [
            TreeSpan {
                span_id: a,
                parent: Some(b),
                name: "a",
                start: at(0),
                end: Some(at(1)),
                status: None,
                status_message: None,
                attributes: &none,
            },
            TreeSpan {
                span_id: b,
                parent: Some(a),
                name: "b",
                start: at(0),
                end: Some(at(1)),
                status: None,
                status_message: None,
                attributes: &none,
            },
        ];
        let lines = render(&spans, &TreeStyle::brief(false, 80));
        assert_eq!(lines.len(), 2, "{lines:#?}");
    }

    #[test]
    fn the_conversation_reads_messages_tool_calls_and_the_completion() {
        let prompt = r#"[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]}]"#;
        let attrs: Attributes = [
            (genai::PROMPT.to_string(), AttrValue::from(prompt)),
            (genai::COMPLETION.to_string(), AttrValue::from("hello")),
        ]
        .into_iter()
        .collect();
        let c = conversation(&attrs);
        assert_eq!(c[0], ("system".into(), "be brief".into()));
        assert_eq!(c[1], ("user".into(), "hi".into()));
        assert_eq!(
            c[2],
            ("assistant".into(), "→ weather({\"city\":\"Oslo\"})".into())
        );
        assert_eq!(c[3], ("assistant".into(), "hello".into()));
    }

    #[test]
    fn the_conversation_reads_the_conventions_messages_first() {
        let input = r#"[{"role":"user","parts":[{"type":"text","content":"Weather?"}]},{"role":"assistant","parts":[{"type":"tool_call","id":"c1","name":"get_weather","arguments":{"city":"Oslo"}}]},{"role":"tool","parts":[{"type":"tool_call_response","id":"c1","response":"rainy"}]}]"#;
        let output = r#"[{"role":"assistant","parts":[{"type":"text","content":"It rains."}],"finish_reason":"stop"}]"#;
        let attrs: Attributes = [
            (
                genai::SYSTEM_INSTRUCTIONS,
                r#"[{"type":"text","content":"be brief"}]"#,
            ),
            (genai::INPUT_MESSAGES, input),
            (genai::OUTPUT_MESSAGES, output),
            // The older attributes of the same call are not shown twice.
            (genai::COMPLETION, "It rains."),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), AttrValue::from(v)))
        .collect();
        assert_eq!(
            conversation(&attrs),
            vec![
                ("system".to_string(), "be brief".to_string()),
                ("user".into(), "Weather?".into()),
                (
                    "assistant".into(),
                    "→ get_weather({\"city\":\"Oslo\"})".into()
                ),
                ("tool".into(), "rainy".into()),
                ("assistant".into(), "It rains.".into()),
            ]
        );
    }
}
