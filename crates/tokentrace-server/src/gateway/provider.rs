//! Inference providers: any OpenAI-compatible HTTP API, and the embedded echo provider.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};
use tokentrace_config::{InferenceProvider, ProviderKind};

use super::tokens;

/// The OpenAI operation being proxied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `chat/completions`.
    Chat,
    /// `completions`.
    Completion,
    /// `embeddings`.
    Embeddings,
}

impl Operation {
    /// The path below the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Operation::Chat => "chat/completions",
            Operation::Completion => "completions",
            Operation::Embeddings => "embeddings",
        }
    }

    /// `gen_ai.operation.name`.
    pub fn genai_name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Completion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// A provider call that failed; becomes an OpenAI-format error with this status.
#[derive(Debug, Clone)]
pub struct ProviderError {
    /// Status for the client (the upstream's own for upstream 4xx/5xx).
    pub status: StatusCode,
    /// `error.type` on the span: `timeout`, `connection_refused`, `invalid_response`, or the
    /// upstream status code.
    pub error_type: String,
    /// Message for the client.
    pub message: String,
    /// The upstream's error body when it was OpenAI-shaped, passed on as is.
    pub body: Option<Value>,
}

impl ProviderError {
    fn new(status: StatusCode, error_type: &str, message: String) -> Self {
        Self {
            status,
            error_type: error_type.to_string(),
            message,
            body: None,
        }
    }
}

/// What a provider answered.
pub enum Upstream {
    /// A whole JSON response.
    Json(Value),
    /// A server-sent-events byte stream.
    Stream(BoxStream<'static, Result<Bytes, ProviderError>>),
}

/// A configured provider, ready to call.
pub struct Provider {
    /// Its configuration.
    pub config: InferenceProvider,
    client: Option<reqwest::Client>,
    /// `server.address` of its upstream.
    pub server_address: Option<String>,
}

/// A provider that could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider_id}: cannot build its HTTP client: {source}")]
pub struct ProviderSetupError {
    /// The provider's id.
    pub provider_id: String,
    /// Why.
    source: reqwest::Error,
}

impl Provider {
    /// Builds the provider (and its HTTP client for remote ones).
    pub fn new(config: InferenceProvider) -> Result<Self, ProviderSetupError> {
        let client = match config.kind {
            ProviderKind::Echo => None,
            ProviderKind::OpenAiCompatible => Some(
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(config.connect_timeout_seconds))
                    .read_timeout(Duration::from_secs(config.timeout_seconds))
                    .pool_max_idle_per_host(256)
                    .tcp_nodelay(true)
                    .build()
                    .map_err(|source| ProviderSetupError {
                        provider_id: config.provider_id.clone(),
                        source,
                    })?,
            ),
        };
        let server_address = config.url.as_deref().and_then(|u| {
            let rest = u.split("://").nth(1)?;
            Some(rest.split(['/', ':']).next()?.to_string())
        });
        Ok(Self {
            config,
            client,
            server_address,
        })
    }

    /// Sends an OpenAI-format request (its `model` already the provider's name).
    pub async fn send(
        &self,
        op: Operation,
        body: Map<String, Value>,
        stream: bool,
    ) -> Result<Upstream, ProviderError> {
        match (&self.client, &self.config.url) {
            (Some(client), Some(url)) => self.send_remote(client, url, op, body, stream).await,
            _ => Ok(echo(op, &body, stream)),
        }
    }

    async fn send_remote(
        &self,
        client: &reqwest::Client,
        url: &str,
        op: Operation,
        body: Map<String, Value>,
        stream: bool,
    ) -> Result<Upstream, ProviderError> {
        let mut req = client.post(format!("{url}/{}", op.path())).json(&body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        if !stream {
            req = req.timeout(Duration::from_secs(self.config.timeout_seconds));
        }
        let res = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = res.status();
        if !status.is_success() {
            // Upstreams echo a wrong key in their message ("Incorrect API key provided: sk-…"):
            // never pass it on, store it or print it.
            let bytes = self.scrub(&res.bytes().await.unwrap_or_default());
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .or_else(|| v.get("detail"))
                        .or_else(|| v.get("message"))
                })
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
                });
            let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return Err(ProviderError {
                status,
                error_type: status.as_u16().to_string(),
                message: format!(
                    "provider {} answered {}: {message}",
                    self.config.provider_id,
                    status.as_u16()
                ),
                body: parsed.filter(|v| v.get("error").is_some_and(Value::is_object)),
            });
        }
        let is_sse = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if stream && is_sse {
            let provider_id = self.config.provider_id.clone();
            let s = res.bytes_stream().map(move |r| {
                r.map_err(|e| {
                    let (status, kind) = if e.is_timeout() {
                        (StatusCode::GATEWAY_TIMEOUT, "timeout")
                    } else {
                        (StatusCode::BAD_GATEWAY, "upstream_stream_error")
                    };
                    ProviderError::new(
                        status,
                        kind,
                        format!("provider {provider_id}: stream failed: {e}"),
                    )
                })
            });
            return Ok(Upstream::Stream(s.boxed()));
        }
        let bytes = res.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object)
            .map(Upstream::Json)
            .ok_or_else(|| {
                ProviderError::new(
                    StatusCode::BAD_GATEWAY,
                    "invalid_response",
                    format!(
                        "provider {} answered with a body that is not a JSON object",
                        self.config.provider_id
                    ),
                )
            })
    }

    /// `bytes` with every occurrence of the provider's API key replaced by `[REDACTED]`.
    fn scrub(&self, bytes: &[u8]) -> Vec<u8> {
        let Some(key) = self.config.api_key.as_deref().filter(|k| !k.is_empty()) else {
            return bytes.to_vec();
        };
        let key = key.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(key) {
                out.extend_from_slice(b"[REDACTED]");
                i += key.len();
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        let id = &self.config.provider_id;
        if e.is_timeout() {
            ProviderError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "provider {id} did not answer within {} s",
                    self.config.timeout_seconds
                ),
            )
        } else if e.is_connect() {
            ProviderError::new(
                StatusCode::BAD_GATEWAY,
                "connection_refused",
                format!("cannot connect to provider {id}: {e}"),
            )
        } else {
            ProviderError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                format!("provider {id}: {e}"),
            )
        }
    }
}

fn max_tokens(body: &Map<String, Value>) -> Option<u64> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
}

fn echo_id(prefix: &str) -> String {
    format!("{prefix}-{}", tokentrace_model::SpanId::random())
}

/// The embedded development provider: the answer is the last user message (chat) or the
/// prompt (completions), cut to `max_tokens`; usage is counted with the tokenizer.
fn echo(op: Operation, body: &Map<String, Value>, stream: bool) -> Upstream {
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    let created = tokentrace_model::Timestamp::now().unix_seconds();
    let prompt = tokens::prompt_text(body);
    let prompt_tokens = tokens::count(&prompt);
    if op == Operation::Embeddings {
        let inputs: Vec<String> = match body.get("input") {
            Some(Value::Array(items)) => items.iter().map(tokens::content_text).collect(),
            Some(v) => vec![tokens::content_text(v)],
            None => Vec::new(),
        };
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
            .collect();
        return Upstream::Json(json!({
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        }));
    }
    let answer = match op {
        Operation::Chat => body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| {
                m.iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|m| m.get("content"))
            .map(tokens::content_text)
            .unwrap_or_default(),
        _ => prompt.clone(),
    };
    let full = tokens::pieces(&answer, None);
    let limit = max_tokens(body);
    let pieces: Vec<String> = match limit {
        Some(m) => full.iter().take(m as usize).cloned().collect(),
        None => full.clone(),
    };
    let finish = if pieces.len() < full.len() {
        "length"
    } else {
        "stop"
    };
    let completion_tokens = pieces.len() as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let id = echo_id(if op == Operation::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    if !stream {
        let text = pieces.concat();
        let choice = if op == Operation::Chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
        };
        let object = if op == Operation::Chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        return Upstream::Json(
            json!({"id": id, "object": object, "created": created, "model": model,
                                     "choices": [choice], "usage": usage}),
        );
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let object = if op == Operation::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choice: Value, usage: Value| {
        let mut c = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if include_usage {
            c["usage"] = usage;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let delta = |text: &str| {
        if op == Operation::Chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": null})
        }
    };
    let mut out = Vec::new();
    if op == Operation::Chat {
        out.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}), Value::Null));
    }
    for p in &pieces {
        out.push(chunk(delta(p), Value::Null));
    }
    let last = if op == Operation::Chat {
        json!({"index": 0, "delta": {}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": "", "finish_reason": finish})
    };
    out.push(chunk(last, Value::Null));
    if include_usage {
        let c = json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage});
        out.push(Bytes::from(format!("data: {c}\n\n")));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Upstream::Stream(futures_util::stream::iter(out.into_iter().map(Ok)).boxed())
}

/// A deterministic unit vector of 16 dimensions derived from the text (FNV-1a per dimension).
fn embed(text: &str) -> Vec<f64> {
    let mut v: Vec<f64> = (0..16u64)
        .map(|d| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ d;
            for b in text.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            (h % 20_001) as f64 / 10_000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}
