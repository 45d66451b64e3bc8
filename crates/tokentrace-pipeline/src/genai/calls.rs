//! LLM calls described by applications: each finished span that an instrumentation made of a
//! call is understood ([`super::understand`]), priced, and counted once — in the token and
//! cost metric events of its own span — unless the gateway already counted the same call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokentrace_config::PriceTable;
use tokentrace_model::{
    AttrValue, Attributes, MetricEvent, MetricValue, SpanEventBody, SpanId, SpanRecord, TraceId,
};

use super::{
    COST_METRIC, COST_UNIT, COST_USD, COUNTED_BY, GATEWAY, ORIGIN, REQUEST_MODEL, RESPONSE_ID,
    RESPONSE_MODEL, USAGE_CACHE_READ_INPUT_TOKENS, USAGE_INPUT_TOKENS, USAGE_OUTPUT_TOKENS,
    USAGE_REASONING_OUTPUT_TOKENS, call_labels, understand,
};

/// Calls remembered: response ids of the gateway's calls, spans already counted.
const REMEMBERED: usize = 65_536;
/// Longest response id remembered.
const MAX_ID: usize = 256;

/// A bounded first-in first-out memory.
struct Recent<K> {
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Clone> Recent<K> {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `k`; returns the key that fell out, if one did.
    fn push(&mut self, k: K) -> Option<K> {
        self.order.push_back(k);
        if self.order.len() > self.capacity {
            self.order.pop_front()
        } else {
            None
        }
    }
}

/// The assembler's view of LLM calls.
pub(crate) struct Calls {
    pricing: Arc<PriceTable>,
    /// Response id → the gateway's span of that call.
    gateway: HashMap<String, SpanId>,
    gateway_order: Recent<String>,
    counted: HashSet<(TraceId, SpanId)>,
    counted_order: Recent<(TraceId, SpanId)>,
}

fn int(a: &Attributes, key: &str) -> Option<u64> {
    match a.get(key)? {
        AttrValue::Int(i) => u64::try_from(*i).ok(),
        AttrValue::Float(f) if *f >= 0.0 => Some(f.round() as u64),
        AttrValue::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text<'a>(a: &'a Attributes, key: &str) -> Option<&'a str> {
    a.get(key).and_then(AttrValue::as_str)
}

impl Calls {
    pub(crate) fn new(pricing: Arc<PriceTable>) -> Self {
        Self {
            pricing,
            gateway: HashMap::new(),
            gateway_order: Recent::new(REMEMBERED),
            counted: HashSet::new(),
            counted_order: Recent::new(REMEMBERED),
        }
    }

    /// Looks at a finished span before the sinks do: the gateway's call spans are remembered;
    /// an application's LLM span gets the canonical attributes and, unless it was counted
    /// before (a re-sent span, or a call the gateway made and counted), its cost and the metric
    /// events to record for it.
    pub(crate) fn span_ended(&mut self, span: &mut SpanRecord) -> Vec<MetricEvent> {
        // A span that carries its token events was counted where they were made.
        let has_counts = span
            .events
            .iter()
            .any(|e| e.name == "prompt_tokens" && matches!(e.body, SpanEventBody::Metric { .. }));
        let key = (span.trace_id, span.span_id);
        let a = &mut span.attributes;
        if text(a, ORIGIN) == Some(GATEWAY) {
            if let Some(id) = text(a, RESPONSE_ID).filter(|id| id.len() <= MAX_ID) {
                let id = id.to_string();
                if self.gateway.insert(id.clone(), span.span_id).is_none()
                    && let Some(old) = self.gateway_order.push(id)
                {
                    self.gateway.remove(&old);
                }
            }
            return Vec::new();
        }
        let Some(origin) = understand(a) else {
            return Vec::new();
        };
        a.insert(ORIGIN.into(), origin.as_str().into());
        let input = int(a, USAGE_INPUT_TOKENS);
        let output = int(a, USAGE_OUTPUT_TOKENS);
        if input.is_none() && output.is_none() || a.contains_key(COUNTED_BY) {
            return Vec::new();
        }
        if let Some(gateway_span) = text(a, RESPONSE_ID).and_then(|id| self.gateway.get(id)) {
            a.insert(COUNTED_BY.into(), gateway_span.to_string().into());
            return Vec::new();
        }
        if has_counts || !self.counted.insert(key) {
            return Vec::new();
        }
        if let Some(old) = self.counted_order.push(key) {
            self.counted.remove(&old);
        }
        let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
        let cached = int(a, USAGE_CACHE_READ_INPUT_TOKENS);
        let reasoning = int(a, USAGE_REASONING_OUTPUT_TOKENS);
        let price = [RESPONSE_MODEL, REQUEST_MODEL]
            .iter()
            .filter_map(|k| text(a, k))
            .find_map(|m| self.pricing.lookup(m));
        let cost = price.map(|(p, _)| p.cost(input, cached.unwrap_or(0), output));
        if let Some(c) = cost {
            a.insert(COST_USD.into(), c.into());
        }
        let [model, provider, origin] = call_labels(span);
        let labels: Attributes = [("model_id", model), ("provider_id", provider)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), AttrValue::from(v)))
            .chain([("origin".to_string(), AttrValue::from(origin))])
            .collect();
        let at = span.end_time.unwrap_or(span.start_time);
        let tokens = |n: u64| (MetricValue::Int(n as i64), "tokens");
        [
            ("prompt_tokens", Some(tokens(input))),
            ("completion_tokens", Some(tokens(output))),
            ("total_tokens", Some(tokens(input + output))),
            ("cached_tokens", cached.map(tokens)),
            ("reasoning_tokens", reasoning.map(tokens)),
            (
                COST_METRIC,
                cost.map(|c| (MetricValue::Float(c), COST_UNIT)),
            ),
        ]
        .into_iter()
        .filter_map(|(name, v)| {
            let (value, unit) = v?;
            Some(MetricEvent {
                trace_id: span.trace_id,
                span_id: span.span_id,
                timestamp: at,
                attributes: labels.clone(),
                metric: name.to_string(),
                value,
                unit: unit.to_string(),
            })
        })
        .collect()
    }
}
