//! Offline token counting (cl100k_base, embedded in the binary) for providers that report no
//! usage, and for the embedded echo provider.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| match tiktoken_rs::cl100k_base() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!("cannot load the embedded tokenizer: {e}");
            None
        }
    })
    .as_ref()
}

/// Loads the tokenizer now rather than on the first request.
pub fn warm_up() {
    let _ = bpe();
}

/// Texts longer than this are counted with the async worker thread handed over to other
/// tasks first (a megabyte takes tens of milliseconds).
const LONG_TEXT: usize = 64 << 10;

/// Runs CPU-heavy `f`; on a multi-threaded runtime's worker with a long text, after moving the
/// worker's other tasks to other threads, so `/v1/health` and the other requests go on.
fn heavy<T>(len: usize, f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len > LONG_TEXT && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Number of tokens in `text`. Falls back to a 4-characters-per-token estimate only if the
/// embedded tokenizer failed to load.
pub fn count(text: &str) -> u64 {
    heavy(text.len(), || match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => text.chars().count().div_ceil(4) as u64,
    })
}

/// The text split into token pieces (for streaming), at most `max` of them.
pub fn pieces(text: &str, max: Option<u64>) -> Vec<String> {
    let Some(b) = bpe() else {
        return vec![text.to_string()];
    };
    let tokens = heavy(text.len(), || b.encode_ordinary(text));
    let limit = max.map_or(tokens.len(), |m| (m as usize).min(tokens.len()));
    let mut out = Vec::with_capacity(limit);
    let mut pending: Vec<u32> = Vec::new();
    for t in &tokens[..limit] {
        pending.push(*t);
        // A piece may end inside a multi-byte character: keep it until it decodes.
        if let Ok(s) = b.decode(&pending) {
            out.push(s);
            pending.clear();
        }
    }
    out
}

/// The text of a message `content`: a string, or the text parts of a list.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(""),
        Value::Object(o) => o
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The prompt text of a chat request (all message contents) or a completion request (`prompt`).
pub fn prompt_text(req: &serde_json::Map<String, Value>) -> String {
    if let Some(Value::Array(messages)) = req.get("messages") {
        return messages
            .iter()
            .filter_map(|m| m.get("content"))
            .map(content_text)
            .collect::<Vec<_>>()
            .join("\n");
    }
    match req.get("prompt").or_else(|| req.get("input")) {
        Some(Value::Array(items)) => items
            .iter()
            .map(content_text)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(v) => content_text(v),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_real_tokens() {
        assert_eq!(count("hello world"), 2);
        assert_eq!(count(""), 0);
        let p = pieces("Hello, wonderful world", Some(2));
        assert_eq!(p.len(), 2);
        assert_eq!(
            pieces("héllo ünïcode 😀", None).concat(),
            "héllo ünïcode 😀"
        );
    }
}
