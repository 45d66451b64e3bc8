//! The streaming proxy: upstream SSE events are forwarded as each completes, a copy is parsed
//! for usage and content, and the provider span ends when the stream ends or is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};

use super::call::{Outcome, ProviderCall};
use super::provider::ProviderError;
use super::sse::{SseEvent, SseParser};

/// What the client receives.
pub enum Output {
    /// The upstream's events as they are, except the usage-only chunk when the client did not
    /// ask for usage (tokentrace asked for it on the client's behalf).
    OpenAi {
        /// Drop the usage-only chunk.
        strip_usage: bool,
    },
    /// Llama Stack's native chunks (`event_type` start / progress / complete).
    Native {
        /// Whether the start event was sent.
        started: bool,
    },
}

/// The proxied stream.
pub struct TrackedStream {
    upstream: BoxStream<'static, Result<Bytes, ProviderError>>,
    parser: SseParser,
    call: ProviderCall,
    output: Output,
    out: VecDeque<Bytes>,
    done: bool,
}

impl TrackedStream {
    /// Wraps an upstream stream.
    pub fn new(
        upstream: BoxStream<'static, Result<Bytes, ProviderError>>,
        call: ProviderCall,
        output: Output,
    ) -> Self {
        Self {
            upstream,
            parser: SseParser::default(),
            call,
            output,
            out: VecDeque::new(),
            done: false,
        }
    }

    fn handle(&mut self, event: SseEvent) {
        let data = event.data.trim();
        if data == "[DONE]" {
            if let Output::OpenAi { .. } = self.output {
                self.out.push_back(Bytes::from(event.raw));
            }
            return;
        }
        let parsed: Option<Value> = serde_json::from_str(data).ok();
        let added = parsed
            .as_ref()
            .map(|v| self.call.observe_chunk(v))
            .unwrap_or_default();
        match &mut self.output {
            Output::OpenAi { strip_usage } => {
                let usage_only = parsed.as_ref().is_some_and(|v| {
                    v.get("usage").is_some_and(Value::is_object)
                        && v.get("choices")
                            .and_then(Value::as_array)
                            .is_none_or(Vec::is_empty)
                });
                if !(*strip_usage && usage_only) {
                    self.out.push_back(Bytes::from(event.raw));
                }
            }
            Output::Native { started } => {
                if !*started {
                    *started = true;
                    self.out
                        .push_back(native_chunk("start", "", None, Value::Null));
                }
                if !added.is_empty() {
                    self.out
                        .push_back(native_chunk("progress", &added, None, Value::Null));
                }
            }
        }
    }

    fn end(&mut self, outcome: Outcome<'_>) {
        if let Some(tail) = self.parser.finish() {
            self.handle(tail);
        }
        if let Output::Native { started } = &mut self.output
            && matches!(outcome, Outcome::Ok)
        {
            if !*started {
                self.out
                    .push_back(native_chunk("start", "", None, Value::Null));
            }
            let usage = self.call.usage();
            let stop = stop_reason(self.call.finish_reason());
            self.out.push_back(native_chunk(
                "complete",
                "",
                Some(stop),
                metrics_json(usage),
            ));
        }
        self.call.finish(outcome);
        self.done = true;
    }
}

/// Llama Stack's `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "out_of_tokens",
        Some("tool_calls") => "end_of_message",
        _ => "end_of_turn",
    }
}

/// The `metrics` list of native responses.
pub fn metrics_json(u: super::call::Usage) -> Value {
    json!([
        {"metric": "prompt_tokens", "value": u.prompt, "unit": "tokens"},
        {"metric": "completion_tokens", "value": u.completion, "unit": "tokens"},
        {"metric": "total_tokens", "value": u.prompt + u.completion, "unit": "tokens"},
    ])
}

fn native_chunk(event_type: &str, text: &str, stop: Option<&str>, metrics: Value) -> Bytes {
    let mut event = json!({"event_type": event_type, "delta": {"type": "text", "text": text}, "logprobs": null});
    if let Some(s) = stop {
        event["stop_reason"] = json!(s);
    }
    let chunk = json!({"event": event, "metrics": metrics});
    Bytes::from(format!("data: {chunk}\n\n"))
}

impl Stream for TrackedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => {
                    for event in this.parser.push(&bytes) {
                        this.handle(event);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let kind = e.error_type.clone();
                    let message = e.message.clone();
                    this.end(Outcome::Error(&kind, &message));
                    // Tell an OpenAI client in-band; the status line has already been sent.
                    if let Output::OpenAi { .. } = this.output {
                        let err = json!({"error": {"message": message, "type": "upstream_error", "code": kind}});
                        this.out.push_back(Bytes::from(format!("data: {err}\n\n")));
                    }
                }
                Poll::Ready(None) => this.end(Outcome::Ok),
            }
        }
    }
}
