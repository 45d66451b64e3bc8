//! LLM calls described by applications: each finished span that an instrumentation made of a
//! call is understood ([`super::understand`]), priced, and counted once — unless the gateway
//! already counted the same call. The counts are added up per series and minute and become
//! metric points when the pipeline flushes (a point per series, not per span: the span's
//! attributes already hold its own usage), so ingesting many LLM spans adds a few rows, not
//! several per span.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokentrace_config::PriceTable;

use tokentrace_model::{
    AttrValue, Attributes, MetricPoint, RecentKeys, SpanId, SpanRecord, Timestamp,
};

use super::{
    COST_METRIC, COST_UNIT, COST_USD, COUNTED_BY, GATEWAY, ORIGIN, REQUEST_MODEL, RESPONSE_ID,
    RESPONSE_MODEL, USAGE_CACHE_READ_INPUT_TOKENS, USAGE_INPUT_TOKENS, USAGE_OUTPUT_TOKENS,
    USAGE_REASONING_OUTPUT_TOKENS, call_labels, understand,
};

/// Calls remembered: response ids of the gateway's calls, spans already counted.
const REMEMBERED: usize = 65_536;

/// What the call memory keeps of a response id or a span's ids: a 64-bit hash (SipHash with a
/// key drawn at start), 8 bytes instead of the id itself (a response id is a string of ~40).
/// Two of the 65,536 remembered ids sharing one is a chance of about 2^-48 per span; the cost
/// would be one call not counted, never a span changed.
type Fingerprint = u64;
/// Longest response id remembered.
const MAX_ID: usize = 256;

/// Series × minutes added up before the pipeline flushes at most; past it they are handed over.
const MAX_PENDING: usize = 4_096;

/// A metric, its labels and its minute: what counts are added up by.
type SeriesKey = (&'static str, [String; 4], i64);

/// The counts of one series in one minute.
struct Pending {
    value: f64,
    unit: &'static str,
    labels: Attributes,
    latest: Timestamp,
    expires_at: Option<Timestamp>,
}

/// The assembler's view of LLM calls.
pub(crate) struct Calls {
    /// Counts not yet handed over as points.
    pending: std::collections::BTreeMap<SeriesKey, Pending>,
    pricing: Arc<PriceTable>,
    /// Response id → the gateway's span of that call.
    gateway: RecentKeys<Fingerprint, SpanId>,
    /// Spans already counted (a retried export sends them again).
    counted: RecentKeys<Fingerprint, ()>,
    /// The hasher of the fingerprints.
    hasher: std::hash::RandomState,
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
            pending: std::collections::BTreeMap::new(),
            pricing,
            gateway: RecentKeys::new(REMEMBERED, u64::MAX, |_| 0),
            counted: RecentKeys::new(REMEMBERED, u64::MAX, |_| 0),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Looks at a finished span before the sinks do: the gateway's call spans are remembered;
    /// an application's LLM span gets the canonical attributes and, unless it was counted
    /// before (a re-sent span, a span a tokentrace already looked at, or a call the gateway
    /// made and counted), its cost, and its counts are added up. Returns points only when too
    /// many series are pending; [`Calls::take_points`] hands over the rest.
    pub(crate) fn span_ended(
        &mut self,
        span: &mut SpanRecord,
        expires_at: Option<Timestamp>,
    ) -> Vec<MetricPoint> {
        self.count(span, expires_at);
        if self.pending.len() >= MAX_PENDING {
            self.take_points()
        } else {
            Vec::new()
        }
    }

    /// The pending counts as metric points, one per series and minute (at the latest call's
    /// end).
    pub(crate) fn take_points(&mut self) -> Vec<MetricPoint> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|((name, _, _), p)| MetricPoint {
                name: name.to_string(),
                timestamp: p.latest,
                value: p.value,
                unit: p.unit.to_string(),
                labels: p.labels,
                trace_id: None,
                span_id: None,
                expires_at: p.expires_at,
            })
            .collect()
    }

    fn count(&mut self, span: &mut SpanRecord, expires_at: Option<Timestamp>) {
        let key = self.hasher.hash_one((span.trace_id, span.span_id));
        let a = &mut span.attributes;
        if text(a, ORIGIN) == Some(GATEWAY) {
            if let Some(id) = text(a, RESPONSE_ID).filter(|id| id.len() <= MAX_ID) {
                self.gateway.insert(self.hasher.hash_one(id), span.span_id);
            }
            return;
        }
        // Already looked at by a tokentrace (an export imported here): counted there.
        if a.contains_key(ORIGIN) {
            return;
        }
        let Some(origin) = understand(a) else {
            return;
        };
        a.insert(ORIGIN.into(), origin.as_str().into());
        let input = int(a, USAGE_INPUT_TOKENS);
        let output = int(a, USAGE_OUTPUT_TOKENS);
        if input.is_none() && output.is_none() || a.contains_key(COUNTED_BY) {
            return;
        }
        if let Some(gateway_span) =
            text(a, RESPONSE_ID).and_then(|id| self.gateway.get(&self.hasher.hash_one(id)))
        {
            a.insert(COUNTED_BY.into(), gateway_span.to_string().into());
            return;
        }
        if !self.counted.insert(key, ()) {
            return;
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
        let series = call_labels(span);
        let mut labels: Attributes = [
            ("model_id", &series[0]),
            ("provider_id", &series[1]),
            ("origin", &series[2]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), AttrValue::from(v.as_str())))
        .collect();
        if !series[3].is_empty() {
            labels.insert(
                tokentrace_model::PROJECT_ATTRIBUTE.into(),
                AttrValue::from(series[3].as_str()),
            );
        }
        let at = span.end_time.unwrap_or(span.start_time);
        let minute = at.unix_nanos().div_euclid(60_000_000_000);
        let tokens = |n: u64| (n as f64, "tokens");
        for (name, v) in [
            ("prompt_tokens", Some(tokens(input))),
            ("completion_tokens", Some(tokens(output))),
            ("total_tokens", Some(tokens(input + output))),
            ("cached_tokens", cached.map(tokens)),
            ("reasoning_tokens", reasoning.map(tokens)),
            (COST_METRIC, cost.map(|c| (c, COST_UNIT))),
        ] {
            let Some((value, unit)) = v else {
                continue;
            };
            let p = self
                .pending
                .entry((name, series.clone(), minute))
                .or_insert_with(|| Pending {
                    value: 0.0,
                    unit,
                    labels: labels.clone(),
                    latest: at,
                    expires_at,
                });
            p.value += value;
            p.latest = p.latest.max(at);
            p.expires_at = p.expires_at.max(expires_at);
        }
    }
}
