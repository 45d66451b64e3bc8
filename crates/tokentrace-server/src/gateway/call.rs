//! The provider-call span: OpenTelemetry GenAI attributes, usage (reported or counted), and the
//! token metric events, recorded once when the call ends, fails or is cancelled.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use tokentrace_config::{Model, Price, PriceTable};
use tokentrace_model::{
    AttrValue, Attributes, MetricEvent, MetricValue, SpanId, SpanKind, SpanRecord, SpanStatus,
    Timestamp,
};
use tokentrace_pipeline::genai;
use tokentrace_pipeline::{Batch, Telemetry, metric_records};

use super::content::{self, ToolCall};
use super::provider::{Operation, Provider};
use super::tokens;
use super::who::Who;
use crate::RequestContext;

/// Longest content recorded in an attribute.
const MAX_CONTENT: usize = 64 * 1024;

/// How a call ended.
pub enum Outcome<'a> {
    /// It completed.
    Ok,
    /// It failed: `error.type` and a message.
    Error(&'a str, &'a str),
    /// The client went away first.
    Cancelled,
}

/// Token counts of a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// Of the prompt tokens, those read from the provider's cache (as reported).
    pub cached: Option<u64>,
    /// Of the completion tokens, those spent on reasoning (as reported).
    pub reasoning: Option<u64>,
    /// Whether any count came from the tokenizer rather than the provider.
    pub estimated: bool,
}

/// What a provider call needs to report itself.
#[derive(Clone)]
pub struct Recorder {
    /// Where its span and token metrics go.
    pub telemetry: Telemetry,
    /// Record request and response content on the span.
    pub capture_content: bool,
    /// In which attributes.
    pub content_format: tokentrace_config::ContentFormat,
    /// What tokens cost.
    pub pricing: Arc<PriceTable>,
}

/// One call to a provider, from request to end.
pub struct ProviderCall {
    telemetry: Telemetry,
    ctx: RequestContext,
    span: Option<SpanRecord>,
    op: Operation,
    started: Instant,
    model_id: String,
    provider_id: String,
    capture: Option<tokentrace_config::ContentFormat>,
    prompt_text: String,
    output: String,
    tool_calls: Vec<ToolCall>,
    reported_prompt: Option<u64>,
    reported_completion: Option<u64>,
    reported_cached: Option<u64>,
    reported_reasoning: Option<u64>,
    pricing: Arc<PriceTable>,
    model_price: Option<Price>,
    provider_model_id: String,
    self_hosted: bool,
    first_chunk: Option<f64>,
    finish_reasons: Vec<String>,
    response_id: Option<String>,
    response_model: Option<String>,
}

fn put(attrs: &mut Attributes, key: &str, v: impl Into<AttrValue>) {
    attrs.insert(key.to_string(), v.into());
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_CONTENT {
        let mut end = MAX_CONTENT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl ProviderCall {
    /// Starts the span for a call of `op` on `model` through `provider`, for `who`.
    pub fn start(
        recorder: &Recorder,
        ctx: RequestContext,
        op: Operation,
        model: &Model,
        provider: &Provider,
        (req, who): (&Map<String, Value>, Who),
        stream: bool,
    ) -> Self {
        let model_id = model.model_id.as_str();
        let capture = recorder.capture_content.then_some(recorder.content_format);
        let mut a = Attributes::new();
        put(&mut a, genai::OPERATION_NAME, op.genai_name());
        let system = provider
            .config
            .provider_type
            .rsplit("::")
            .next()
            .unwrap_or(&provider.config.provider_type)
            .to_string();
        put(&mut a, genai::PROVIDER_NAME, system);
        put(&mut a, genai::REQUEST_MODEL, model_id);
        put(&mut a, "model_id", model_id);
        put(&mut a, "provider_id", provider.config.provider_id.as_str());
        put(&mut a, genai::REQUEST_STREAM, stream);
        put(&mut a, genai::ORIGIN, genai::GATEWAY);
        for (key, v) in [
            ("user.id", who.user),
            ("session.id", who.session),
            (genai::CONVERSATION_ID, who.conversation),
        ] {
            if let Some(v) = v {
                put(&mut a, key, v);
            }
        }
        if let Some(m) = req
            .get("max_completion_tokens")
            .or_else(|| req.get("max_tokens"))
            .and_then(Value::as_i64)
        {
            put(&mut a, genai::REQUEST_MAX_TOKENS, m);
        }
        for (field, key) in [
            ("temperature", genai::REQUEST_TEMPERATURE),
            ("top_p", genai::REQUEST_TOP_P),
        ] {
            if let Some(v) = req.get(field).and_then(Value::as_f64) {
                put(&mut a, key, v);
            }
        }
        if let Some(addr) = &provider.server_address {
            put(&mut a, "server.address", addr.as_str());
        }
        if let Some(format) = capture {
            if format.messages() {
                let messages = content::input_messages(req);
                put(
                    &mut a,
                    genai::INPUT_MESSAGES,
                    content::fit(messages, MAX_CONTENT),
                );
            }
            if format.legacy() {
                let content = req
                    .get("messages")
                    .or_else(|| req.get("prompt"))
                    .or_else(|| req.get("input"))
                    .map(Value::to_string)
                    .unwrap_or_default();
                put(&mut a, genai::PROMPT, cut(content));
            }
        }
        tokentrace_model::stamp_project(&mut a, &ctx.project);
        let span = SpanRecord {
            trace_id: ctx.trace_id,
            span_id: SpanId::random(),
            parent_span_id: Some(ctx.span_id),
            name: format!("{} {model_id}", op.genai_name()),
            kind: SpanKind::Client,
            start_time: Timestamp::now(),
            end_time: None,
            status: None,
            status_message: None,
            attributes: a,
            events: Vec::new(),
            links: Vec::new(),
            service_name: None,
            expires_at: None,
        };
        Self {
            telemetry: recorder.telemetry.clone(),
            ctx,
            span: Some(span),
            op,
            started: Instant::now(),
            model_id: model_id.to_string(),
            provider_id: provider.config.provider_id.clone(),
            capture,
            prompt_text: tokens::prompt_text(req),
            output: String::new(),
            tool_calls: Vec::new(),
            reported_prompt: None,
            reported_completion: None,
            reported_cached: None,
            reported_reasoning: None,
            pricing: recorder.pricing.clone(),
            model_price: model.pricing,
            provider_model_id: model.provider_model_id.clone(),
            self_hosted: provider.config.self_hosted(),
            first_chunk: None,
            finish_reasons: Vec::new(),
            response_id: None,
            response_model: None,
        }
    }

    fn observe_common(&mut self, v: &Value) {
        if self.response_id.is_none() {
            self.response_id = v.get("id").and_then(Value::as_str).map(str::to_string);
        }
        if self.response_model.is_none() {
            self.response_model = v.get("model").and_then(Value::as_str).map(str::to_string);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(p) = u.get("prompt_tokens").and_then(Value::as_u64) {
                self.reported_prompt = Some(p);
            }
            if let Some(c) = u.get("completion_tokens").and_then(Value::as_u64) {
                self.reported_completion = Some(c);
            } else if self.op == Operation::Embeddings {
                self.reported_completion = Some(0);
            }
            if let Some(c) = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64)
            {
                self.reported_cached = Some(c);
            }
            if let Some(r) = u
                .pointer("/completion_tokens_details/reasoning_tokens")
                .and_then(Value::as_u64)
            {
                self.reported_reasoning = Some(r);
            }
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reasons.push(r.to_string());
            }
        }
    }

    /// Reads a whole (non-streaming) response.
    pub fn observe_response(&mut self, v: &Value) {
        self.observe_common(v);
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = choice
                .pointer("/message/content")
                .or_else(|| choice.get("text"))
                .map(tokens::content_text)
                .unwrap_or_default();
            self.output.push_str(&text);
            if self.capture.is_some() {
                let calls = choice.pointer("/message/tool_calls");
                content::add_tool_calls(&mut self.tool_calls, calls, false);
            }
        }
    }

    /// Reads one streamed chunk; returns the text it adds.
    pub fn observe_chunk(&mut self, v: &Value) -> String {
        self.observe_common(v);
        let mut added = String::new();
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = choice
                .pointer("/delta/content")
                .or_else(|| choice.get("text"))
                .and_then(Value::as_str)
            {
                added.push_str(t);
            }
            let first_choice = choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0;
            if self.capture.is_some() && first_choice {
                let calls = choice.pointer("/delta/tool_calls");
                content::add_tool_calls(&mut self.tool_calls, calls, true);
            }
        }
        if !added.is_empty() && self.first_chunk.is_none() {
            self.first_chunk = Some(self.started.elapsed().as_secs_f64());
        }
        self.output.push_str(&added);
        added
    }

    /// The finish reason of the first choice, if any.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reasons.first().map(String::as_str)
    }

    /// Usage as reported, or counted with the tokenizer where not reported.
    pub fn usage(&self) -> Usage {
        let (prompt, p_est) = match self.reported_prompt {
            Some(p) => (p, false),
            None => (tokens::count(&self.prompt_text), true),
        };
        let (completion, c_est) = match (self.reported_completion, self.op) {
            (Some(c), _) => (c, false),
            (None, Operation::Embeddings) => (0, false),
            (None, _) => (tokens::count(&self.output), true),
        };
        Usage {
            prompt,
            completion,
            cached: self.reported_cached,
            reasoning: self.reported_reasoning,
            estimated: p_est || c_est,
        }
    }

    /// What the call cost in USD, when its model has a price.
    fn cost(&self, usage: &Usage) -> Option<f64> {
        let (price, _) = self.pricing.for_gateway_call(
            self.model_price,
            &self.provider_model_id,
            self.response_model.as_deref(),
            self.self_hosted,
        )?;
        Some(price.cost(usage.prompt, usage.cached.unwrap_or(0), usage.completion))
    }

    /// Ends the span and records the token metrics.
    pub fn finish(&mut self, outcome: Outcome<'_>) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        let now = Timestamp::now();
        span.end_time = Some(now);
        let counted = matches!(outcome, Outcome::Ok)
            || !self.output.is_empty()
            || self.reported_prompt.is_some();
        let usage = self.usage();
        let cost = counted.then(|| self.cost(&usage)).flatten();
        let a = &mut span.attributes;
        if let Some(id) = &self.response_id {
            put(a, genai::RESPONSE_ID, id.as_str());
        }
        if let Some(m) = &self.response_model {
            put(a, genai::RESPONSE_MODEL, m.as_str());
        }
        if !self.finish_reasons.is_empty() {
            let reasons = self
                .finish_reasons
                .iter()
                .map(|r| AttrValue::from(r.as_str()))
                .collect();
            a.insert(
                genai::RESPONSE_FINISH_REASONS.into(),
                AttrValue::Array(reasons),
            );
        }
        if let Some(t) = self.first_chunk {
            put(a, genai::RESPONSE_TIME_TO_FIRST_CHUNK, t);
        }
        if counted {
            put(a, genai::USAGE_INPUT_TOKENS, usage.prompt as i64);
            put(a, genai::USAGE_OUTPUT_TOKENS, usage.completion as i64);
            if let Some(c) = usage.cached {
                put(a, genai::USAGE_CACHE_READ_INPUT_TOKENS, c as i64);
            }
            if let Some(r) = usage.reasoning {
                put(a, genai::USAGE_REASONING_OUTPUT_TOKENS, r as i64);
            }
            if usage.estimated {
                put(a, "tokentrace.tokens_estimated", true);
            }
            if let Some(c) = cost {
                put(a, genai::COST_USD, c);
            }
        }
        if let Some(format) = self.capture
            && (!self.output.is_empty() || !self.tool_calls.is_empty())
        {
            if format.messages() {
                let messages = content::output_messages(
                    &self.output,
                    &self.tool_calls,
                    self.finish_reasons.first().map(String::as_str),
                );
                put(
                    a,
                    genai::OUTPUT_MESSAGES,
                    content::fit(messages, MAX_CONTENT),
                );
            }
            if format.legacy() {
                put(a, genai::COMPLETION, cut(std::mem::take(&mut self.output)));
            }
        }
        match outcome {
            Outcome::Ok => span.status = Some(SpanStatus::Ok),
            Outcome::Error(kind, message) => {
                put(&mut span.attributes, "error.type", kind);
                span.status = Some(SpanStatus::Error);
                span.status_message = Some(message.to_string());
            }
            Outcome::Cancelled => {
                put(&mut span.attributes, "error.type", "cancelled");
                span.status = Some(SpanStatus::Error);
                span.status_message =
                    Some("the client disconnected before the response was complete".into());
            }
        }
        if self.telemetry.record_span(span).is_err() {
            tracing::debug!("provider span dropped: telemetry pipeline full or stopped");
        }
        if counted {
            self.record_metrics(usage, cost, now);
        }
    }

    /// Token counts as metric points (metrics table, Prometheus, OTLP) and as metric events of
    /// the request's span (span_events, exported inside the span).
    fn record_metrics(&self, usage: Usage, cost: Option<f64>, at: Timestamp) {
        let mut labels: Attributes = [
            (
                "model_id".to_string(),
                AttrValue::from(self.model_id.as_str()),
            ),
            (
                "provider_id".to_string(),
                AttrValue::from(self.provider_id.as_str()),
            ),
        ]
        .into_iter()
        .collect();
        tokentrace_model::stamp_project(&mut labels, &self.ctx.project);
        let tokens = |n: u64| (MetricValue::Int(n as i64), "tokens");
        let measured = [
            ("prompt_tokens", Some(tokens(usage.prompt))),
            ("completion_tokens", Some(tokens(usage.completion))),
            (
                "total_tokens",
                Some(tokens(usage.prompt + usage.completion)),
            ),
            ("cached_tokens", usage.cached.map(tokens)),
            ("reasoning_tokens", usage.reasoning.map(tokens)),
            (
                genai::COST_METRIC,
                cost.map(|c| (MetricValue::Float(c), genai::COST_UNIT)),
            ),
        ];
        for (name, (value, unit)) in measured.into_iter().filter_map(|(n, v)| Some((n, v?))) {
            let (point, event) = metric_records(
                MetricEvent {
                    trace_id: self.ctx.trace_id,
                    span_id: self.ctx.span_id,
                    timestamp: at,
                    attributes: labels.clone(),
                    metric: name.to_string(),
                    value,
                    unit: unit.to_string(),
                },
                None,
            );
            // The event rides in the request span when there is one; else both go together.
            let submitted = match self.ctx.add_event(event) {
                None => self.telemetry.record_metric(point),
                Some(event) => self.telemetry.record_batch(Batch {
                    events: vec![event],
                    metrics: vec![point],
                    ..Batch::default()
                }),
            };
            if submitted.is_err() {
                tracing::debug!("token metric dropped: telemetry pipeline full or stopped");
            }
        }
    }
}

impl Drop for ProviderCall {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}
