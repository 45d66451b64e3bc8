//! The inference gateway: OpenAI-compatible and Llama Stack native routes, each call traced
//! with a provider span and counted in tokens.

mod call;
mod content;
mod provider;
pub mod sse;
mod stream;
pub mod tokens;
mod who;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};
use tokentrace_config::{InferenceConfig, Model, ModelType, PriceTable};

pub use provider::{Operation, Provider, ProviderError, ProviderSetupError, Upstream};

use crate::guard::Access;
use crate::{AppState, RequestContext};
use call::{Outcome, ProviderCall, Recorder};
use stream::{Output, TrackedStream};
use tokentrace_config::Action;

/// Providers and models, ready to serve.
pub struct Inference {
    models: Vec<Model>,
    by_id: HashMap<String, usize>,
    providers: HashMap<String, Arc<Provider>>,
    pricing: Arc<PriceTable>,
}

impl Inference {
    /// Builds the providers of a config.
    pub fn new(config: &InferenceConfig) -> Result<Self, ProviderSetupError> {
        let mut providers = HashMap::new();
        for p in &config.providers {
            providers.insert(p.provider_id.clone(), Arc::new(Provider::new(p.clone())?));
        }
        let by_id = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.model_id.clone(), i))
            .collect();
        // The tokenizer holds ~24 MiB: loaded now only for the echo provider, which counts
        // every call; otherwise on the first answer that reports no usage.
        if config
            .providers
            .iter()
            .any(|p| p.kind == tokentrace_config::ProviderKind::Echo)
        {
            tokens::warm_up();
        }
        Ok(Self {
            models: config.models.clone(),
            by_id,
            providers,
            pricing: Arc::new(PriceTable::embedded()),
        })
    }

    /// Prices calls by `pricing` (the embedded table otherwise).
    pub fn with_pricing(mut self, pricing: PriceTable) -> Self {
        self.pricing = Arc::new(pricing);
        self
    }

    fn resolve(&self, model_id: &str) -> Option<(&Model, Arc<Provider>)> {
        let model = &self.models[*self.by_id.get(model_id)?];
        let provider = self.providers.get(&model.provider_id)?.clone();
        Some((model, provider))
    }
}

/// OpenAI-compatible routes, relative to `/v1/openai/v1` or `/v1`.
pub fn openai_routes() -> Router<AppState> {
    Router::new()
        .route("/chat/completions", post(chat_completions))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
}

/// Llama Stack native routes, relative to `/v1`.
pub fn native_routes() -> Router<AppState> {
    Router::new()
        .route("/inference/chat-completion", post(native_chat_completion))
        .route("/models", get(list_models))
}

/// `GET /v1/openai/v1/models`.
pub fn openai_models_route() -> Router<AppState> {
    Router::new().route("/models", get(list_models))
}

/// An OpenAI-format error: `{"error": {"message", "type", "code"}}`.
pub struct OpenAiError {
    status: StatusCode,
    body: Value,
}

impl OpenAiError {
    fn new(status: StatusCode, kind: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    fn from_provider(e: &ProviderError) -> Self {
        if let Some(body) = &e.body {
            return Self {
                status: e.status,
                body: body.clone(),
            };
        }
        let kind = if e.status.is_client_error() {
            "invalid_request_error"
        } else {
            "api_error"
        };
        Self::new(e.status, kind, Some(&e.error_type), e.message.clone())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, OpenAiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OpenAiError::invalid(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(OpenAiError::invalid(format!("malformed JSON: {e}"))),
    }
}

fn ctx_of(ext: Option<Extension<RequestContext>>) -> RequestContext {
    ext.map_or_else(RequestContext::detached, |Extension(c)| c)
}

async fn chat_completions(
    State(state): State<AppState>,
    ctx: Option<Extension<RequestContext>>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai_call(
        state,
        (ctx_of(ctx), &access),
        &headers,
        Operation::Chat,
        &body,
    )
    .await
}

async fn completions(
    State(state): State<AppState>,
    ctx: Option<Extension<RequestContext>>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai_call(
        state,
        (ctx_of(ctx), &access),
        &headers,
        Operation::Completion,
        &body,
    )
    .await
}

async fn embeddings(
    State(state): State<AppState>,
    ctx: Option<Extension<RequestContext>>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    openai_call(
        state,
        (ctx_of(ctx), &access),
        &headers,
        Operation::Embeddings,
        &body,
    )
    .await
}

/// A request ready to send: its call span started, its model renamed for the provider.
struct Prepared {
    call: ProviderCall,
    provider: Arc<Provider>,
    req: Map<String, Value>,
    stream: bool,
}

/// Checks the request, finds model and provider, and starts the call span.
fn prepare(
    state: &AppState,
    (ctx, access, headers): (RequestContext, &Access, &HeaderMap),
    op: Operation,
    mut req: Map<String, Value>,
    model_field: &str,
) -> Result<Prepared, OpenAiError> {
    let model_id = match req.get(model_field) {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(OpenAiError::invalid(format!(
                "`{model_field}` must be a non-empty string"
            )));
        }
        None => return Err(OpenAiError::invalid(format!("`{model_field}` is required"))),
    };
    let Some((model, provider)) = state.inference.resolve(&model_id) else {
        return Err(OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("model {model_id:?} is not configured; GET /v1/models lists the models"),
        ));
    };
    if !access.may(Action::Read, &format!("model::{model_id}")) {
        let who = access.who.as_ref().map(|p| p.shown()).unwrap_or_default();
        return Err(OpenAiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            Some("model_not_allowed"),
            format!("{who} may not use the model {model_id:?} (server.auth.access_policy)"),
        ));
    }
    let wants_embedding = op == Operation::Embeddings;
    if wants_embedding != (model.model_type == ModelType::Embedding)
        && provider.config.kind != tokentrace_config::ProviderKind::Echo
    {
        return Err(OpenAiError::invalid(format!(
            "model {model_id:?} is an {} model",
            model.model_type.as_str()
        )));
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && !wants_embedding,
        Some(_) => return Err(OpenAiError::invalid("`stream` must be a boolean")),
    };
    let recorder = Recorder {
        telemetry: state.telemetry.clone(),
        capture_content: state.settings.capture_content,
        content_format: state.settings.content_format,
        pricing: state.inference.pricing.clone(),
    };
    let who = who::identify(headers, &req);
    let call = ProviderCall::start(&recorder, ctx, op, model, &provider, (&req, who), stream);
    req.insert(
        "model".into(),
        Value::String(model.provider_model_id.clone()),
    );
    if model_field != "model" {
        req.remove(model_field);
    }
    Ok(Prepared {
        call,
        provider,
        req,
        stream,
    })
}

async fn openai_call(
    state: AppState,
    (ctx, access): (RequestContext, &Access),
    headers: &HeaderMap,
    op: Operation,
    body: &[u8],
) -> Response {
    let req = match parse_body(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Prepared {
        mut call,
        provider,
        mut req,
        stream,
    } = match prepare(&state, (ctx, access, headers), op, req, "model") {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut strip_usage = false;
    if stream {
        // Ask the upstream for usage; hide the extra chunk if the client did not ask.
        let options = req.entry("stream_options").or_insert_with(|| json!({}));
        match options {
            Value::Object(o) => {
                let asked = o
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                strip_usage = !asked;
                o.insert("include_usage".into(), Value::Bool(true));
            }
            _ => return OpenAiError::invalid("`stream_options` must be an object").into_response(),
        }
    }
    match provider.send(op, req, stream).await {
        Err(e) => {
            call.finish(Outcome::Error(&e.error_type, &e.message));
            OpenAiError::from_provider(&e).into_response()
        }
        Ok(Upstream::Json(v)) => {
            call.observe_response(&v);
            call.finish(Outcome::Ok);
            Json(v).into_response()
        }
        Ok(Upstream::Stream(s)) => {
            sse_response(TrackedStream::new(s, call, Output::OpenAi { strip_usage }))
        }
    }
}

fn sse_response(stream: TrackedStream) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /v1/inference/chat-completion`: Llama Stack's native chat completion.
async fn native_chat_completion(
    State(state): State<AppState>,
    ctx: Option<Extension<RequestContext>>,
    access: Access,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = ctx_of(ctx);
    let mut req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return native_error(e),
    };
    // Llama Stack sampling parameters → OpenAI fields.
    if let Some(Value::Object(sp)) = req.remove("sampling_params") {
        if let Some(m) = sp
            .get("max_tokens")
            .filter(|v| v.as_u64().is_some_and(|m| m > 0))
        {
            req.insert("max_tokens".into(), m.clone());
        }
        if let Some(Value::Object(strategy)) = sp.get("strategy") {
            match strategy.get("type").and_then(Value::as_str) {
                Some("greedy") => {
                    req.insert("temperature".into(), json!(0.0));
                }
                Some("top_p") | Some("top_k") => {
                    for k in ["temperature", "top_p"] {
                        if let Some(v) = strategy.get(k) {
                            req.insert(k.into(), v.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for k in [
        "tool_config",
        "tool_choice",
        "tool_prompt_format",
        "response_format",
        "logprobs",
        "tools",
    ] {
        req.remove(k);
    }
    let Prepared {
        mut call,
        provider,
        mut req,
        stream,
    } = match prepare(
        &state,
        (ctx, &access, &headers),
        Operation::Chat,
        req,
        "model_id",
    ) {
        Ok(p) => p,
        Err(e) => return native_error(e),
    };
    if stream {
        req.insert("stream_options".into(), json!({"include_usage": true}));
    }
    match provider.send(Operation::Chat, req, stream).await {
        Err(e) => {
            call.finish(Outcome::Error(&e.error_type, &e.message));
            native_error(OpenAiError::from_provider(&e))
        }
        Ok(Upstream::Json(v)) => {
            call.observe_response(&v);
            let content = v
                .pointer("/choices/0/message/content")
                .map(tokens::content_text)
                .unwrap_or_default();
            let stop = stream::stop_reason(call.finish_reason());
            let metrics = stream::metrics_json(call.usage());
            call.finish(Outcome::Ok);
            Json(json!({
                "completion_message": {"role": "assistant", "content": content, "stop_reason": stop, "tool_calls": []},
                "logprobs": null,
                "metrics": metrics,
            }))
            .into_response()
        }
        Ok(Upstream::Stream(s)) => sse_response(TrackedStream::new(
            s,
            call,
            Output::Native { started: false },
        )),
    }
}

/// Native routes answer errors as `{"detail": "..."}`, like the rest of the Llama Stack API.
fn native_error(e: OpenAiError) -> Response {
    let message = e
        .body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("inference failed")
        .to_string();
    crate::ApiError::new(e.status, message).into_response()
}

/// `GET /v1/models` (and the OpenAI prefix): each model in both Llama Stack's and OpenAI's shape.
async fn list_models(State(state): State<AppState>, access: Access) -> Json<Value> {
    let data: Vec<Value> = state
        .inference
        .models
        .iter()
        .filter(|m| access.may(Action::Read, &format!("model::{}", m.model_id)))
        .map(|m| {
            json!({
                "identifier": m.model_id,
                "provider_resource_id": m.provider_model_id,
                "provider_id": m.provider_id,
                "type": "model",
                "model_type": m.model_type.as_str(),
                "metadata": m.metadata,
                "id": m.model_id,
                "object": "model",
                "created": 0,
                "owned_by": m.provider_id,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
