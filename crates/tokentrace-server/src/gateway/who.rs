//! Who a call is for: the user and session an inference request names, read in this order
//! from W3C `baggage` (`user.id`, `session.id`, `gen_ai.conversation.id`), the headers
//! `X-User-Id` / `X-Session-Id` / `X-Conversation-Id`, and the OpenAI request's `user` and
//! `metadata` (`user_id`, `session_id`, `conversation_id`).

use axum::http::HeaderMap;
use serde_json::{Map, Value};

/// Longest id kept; longer ones are ignored (ids, not content).
const MAX_ID: usize = 256;

/// The user and session of a call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    /// `user.id`.
    pub user: Option<String>,
    /// `session.id`.
    pub session: Option<String>,
    /// `gen_ai.conversation.id`: as given, else the session.
    pub conversation: Option<String>,
}

fn clean(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= MAX_ID && !v.chars().any(char::is_control)).then(|| v.to_string())
}

fn percent_decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `key` in the W3C `baggage` headers (`k=v;prop,k2=v2`), percent-decoded.
fn baggage(headers: &HeaderMap, key: &str) -> Option<String> {
    headers
        .get_all("baggage")
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .find_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            (k.trim() == key)
                .then(|| percent_decode(v.trim()))
                .flatten()
        })
        .and_then(|v| clean(&v))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().and_then(clean)
}

fn field(req: &Map<String, Value>, path: &[&str]) -> Option<String> {
    let mut v = req.get(path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    v.as_str().and_then(clean)
}

/// Reads who a request is for.
pub fn identify(headers: &HeaderMap, req: &Map<String, Value>) -> Who {
    let first = |b: &str, h: &str, fields: &[&[&str]]| {
        baggage(headers, b)
            .or_else(|| header(headers, h))
            .or_else(|| fields.iter().find_map(|f| field(req, f)))
    };
    let user = first(
        "user.id",
        "x-user-id",
        &[
            &["user"],
            &["metadata", "user_id"],
            &["metadata", "user.id"],
        ],
    );
    let session = first(
        "session.id",
        "x-session-id",
        &[&["metadata", "session_id"], &["metadata", "session.id"]],
    );
    let conversation = first(
        "gen_ai.conversation.id",
        "x-conversation-id",
        &[&["metadata", "conversation_id"]],
    )
    .or_else(|| session.clone());
    Who {
        user,
        session,
        conversation,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn baggage_comes_first_then_headers_then_the_request() {
        let mut h = HeaderMap::new();
        h.insert(
            "baggage",
            "other=1,user.id=alice%40example;p=1, session.id=s-1"
                .parse()
                .unwrap(),
        );
        h.insert("x-user-id", "bob".parse().unwrap());
        h.insert("x-session-id", "s-2".parse().unwrap());
        let r = req(json!({"user": "carol", "metadata": {"session_id": "s-3"}}));
        let w = identify(&h, &r);
        assert_eq!(w.user.as_deref(), Some("alice@example"));
        assert_eq!(w.session.as_deref(), Some("s-1"));
        assert_eq!(w.conversation.as_deref(), Some("s-1"));

        h.remove("baggage");
        let w = identify(&h, &r);
        assert_eq!(
            (w.user.as_deref(), w.session.as_deref()),
            (Some("bob"), Some("s-2"))
        );

        let w = identify(&HeaderMap::new(), &r);
        assert_eq!(
            (w.user.as_deref(), w.session.as_deref()),
            (Some("carol"), Some("s-3"))
        );
        let w = identify(
            &HeaderMap::new(),
            &req(json!({"metadata": {"user_id": "dave", "conversation_id": "c-9"}})),
        );
        assert_eq!(w.user.as_deref(), Some("dave"));
        assert_eq!(w.session, None);
        assert_eq!(w.conversation.as_deref(), Some("c-9"));
    }

    #[test]
    fn bad_values_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert("baggage", "user.id=%zz,session.id=".parse().unwrap());
        let long = "x".repeat(MAX_ID + 1);
        let w = identify(&h, &req(json!({"user": long, "metadata": "nope"})));
        assert_eq!(w, Who::default());
    }
}
