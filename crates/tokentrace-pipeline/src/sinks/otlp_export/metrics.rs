//! `otel_metric`: token counters, the GenAI histograms, and every metric event as an instrument,
//! aggregated with cumulative temporality and exported every `OTEL_METRIC_EXPORT_INTERVAL`.
//!
//! Names are chosen so that an OpenTelemetry Collector's Prometheus exporter, with no extra
//! configuration, yields `llama_stack_prompt_tokens_total`, `llama_stack_completion_tokens_total`
//! and `llama_stack_tokens_total` (a monotonic sum gets `_total`; the unit `tokens` adds nothing
//! to a name that already ends in it).

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokentrace_model::{AttrValue, MetricPoint, SpanEvent, SpanRecord, Timestamp};
use tokentrace_otlp::from_model;
use tokentrace_otlp::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tokentrace_otlp::proto::common::v1::{InstrumentationScope, KeyValue};
use tokentrace_otlp::proto::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};

use super::export::{ExportConfig, ExportStats, ExportThread, Exporter};
use crate::genai::{self, DURATION_BUCKETS, TOKENS_PER_SECOND_BUCKETS, TTFT_BUCKETS};
use crate::sinks::prometheus::{MAX_SERIES, OVERFLOW};
use crate::{Sink, SinkError};

/// Whether a metric event is a count (a monotonic sum) rather than a level (a gauge): decided by
/// its name and unit, never by whether this value happens to be an integer.
pub fn is_counter(name: &str, unit: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with("_total")
        || name.ends_with("_count")
        || name.ends_with("tokens")
        || matches!(
            unit.trim(),
            "tokens"
                | "{token}"
                | "{tokens}"
                | "requests"
                | "{request}"
                | "{requests}"
                | "errors"
                | "{error}"
        )
}

type Labels = Vec<(String, String)>;

struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct State {
    /// (name, labels) → (unit, running total).
    sums: BTreeMap<(String, Labels), (String, f64)>,
    /// (name, labels) → (unit, last value, when).
    gauges: BTreeMap<(String, Labels), (String, f64, Timestamp)>,
    /// (name, labels) → (unit, histogram).
    histograms: BTreeMap<(String, Labels), (&'static str, Hist)>,
    /// Label sets per instrument, to keep each under [`MAX_SERIES`].
    series: BTreeMap<String, usize>,
}

impl State {
    /// The key to record `labels` of `name` under: as given while the instrument has room (or
    /// already has them), else its overflow series, whose every label value is [`OVERFLOW`]
    /// (label values come from clients: model names, OTLP attributes).
    fn key(&mut self, name: &str, labels: Labels, known: bool) -> (String, Labels) {
        if known {
            return (name.to_string(), labels);
        }
        let n = self.series.entry(name.to_string()).or_insert(0);
        if *n < MAX_SERIES {
            *n += 1;
            return (name.to_string(), labels);
        }
        if *n == MAX_SERIES {
            *n += 1;
            tracing::warn!(
                "otel_metric: {name} has {MAX_SERIES} label sets; further ones are added up in its {OVERFLOW} series"
            );
        }
        let overflow = labels
            .into_iter()
            .map(|(k, _)| (k, OVERFLOW.to_string()))
            .collect();
        (name.to_string(), overflow)
    }
}

enum Msg {
    Flush(SyncSender<()>),
}

/// The `otel_metric` sink.
pub struct OtlpMetricSink {
    state: Arc<Mutex<State>>,
    thread: ExportThread<Msg>,
    stats: Arc<ExportStats>,
}

fn labels_of(attrs: &tokentrace_model::Attributes) -> Labels {
    attrs
        .iter()
        .map(|(k, v)| (k.clone(), v.to_label()))
        .collect()
}

impl OtlpMetricSink {
    /// Starts the exporter thread, exporting every `interval`.
    pub fn start(
        config: ExportConfig,
        service_name: &str,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(ExportStats::default());
        let state = Arc::new(Mutex::new(State::default()));
        let service = service_name.to_string();
        let shared = state.clone();
        let started = Timestamp::now();
        let thread_stats = stats.clone();
        // The blocking HTTP client lives and dies on this thread, never on the async runtime.
        let nice = config.thread_nice;
        let thread = ExportThread::start(
            "otel_metric",
            "tokentrace-otlp-metrics",
            nice,
            4,
            move |rx| {
                let exporter = Exporter::new(config.clone(), thread_stats, "metric points");
                run(rx, exporter, config, shared, service, started, interval)
            },
        )?;
        Ok(Self {
            state,
            thread,
            stats,
        })
    }

    /// The exporter's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(
        &self,
        name: &str,
        unit: &'static str,
        bounds: &'static [f64],
        labels: Labels,
        v: f64,
    ) {
        let mut s = self.lock();
        let known = s
            .histograms
            .contains_key(&(name.to_string(), labels.clone()));
        let key = s.key(name, labels, known);
        let (_, h) = s.histograms.entry(key).or_insert_with(|| {
            (
                unit,
                Hist {
                    bounds,
                    counts: vec![0; bounds.len() + 1],
                    sum: 0.0,
                    count: 0,
                },
            )
        });
        let i = h
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(h.bounds.len());
        h.counts[i] += 1;
        h.sum += v;
        h.count += 1;
    }
}

fn run(
    rx: Receiver<Msg>,
    mut exporter: Exporter,
    config: ExportConfig,
    state: Arc<Mutex<State>>,
    service: String,
    started: Timestamp,
    interval: Duration,
) {
    loop {
        // At shutdown, a last export with a short budget so stopping never hangs.
        let (reply, last) = match rx.recv_timeout(interval) {
            Ok(Msg::Flush(reply)) => (Some(reply), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        let budget = Duration::from_secs(if last { 5 } else { 30 });
        export(&mut exporter, &config, &state, &service, started, budget);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        if last {
            return;
        }
    }
}

fn attrs(labels: &Labels) -> Vec<KeyValue> {
    let a: tokentrace_model::Attributes = labels
        .iter()
        .map(|(k, v)| (k.clone(), AttrValue::from(v.as_str())))
        .collect();
    from_model::key_values(&a)
}

fn nanos(t: Timestamp) -> u64 {
    u64::try_from(t.unix_nanos()).unwrap_or(0)
}

/// One OTLP `Metric` per instrument name of `series` (keyed by name, then labels, so each name's
/// series are adjacent), its unit taken from the first series; returns the data points added.
fn instruments<V>(
    series: &BTreeMap<(String, Labels), V>,
    out: &mut Vec<Metric>,
    unit: impl Fn(&V) -> String,
    data: impl Fn(&[(&Labels, &V)]) -> metric::Data,
) -> u64 {
    let mut points = 0;
    let mut all = series.iter().peekable();
    while let Some(((name, labels), v)) = all.next() {
        let mut same = vec![(labels, v)];
        while let Some(((_, labels), v)) = all.next_if(|((n, _), _)| n == name) {
            same.push((labels, v));
        }
        points += same.len() as u64;
        out.push(Metric {
            name: name.clone(),
            unit: unit(v),
            data: Some(data(&same)),
            ..Default::default()
        });
    }
    points
}

fn export(
    exporter: &mut Exporter,
    config: &ExportConfig,
    state: &Mutex<State>,
    service: &str,
    started: Timestamp,
    budget: Duration,
) {
    let now = nanos(Timestamp::now());
    let start = nanos(started);
    let (metrics, points) = {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        let number = |labels: &Labels, start: u64, at: u64, v: f64| NumberDataPoint {
            attributes: attrs(labels),
            start_time_unix_nano: start,
            time_unix_nano: at,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let mut metrics = Vec::new();
        let mut points = 0;
        points += instruments(
            &s.sums,
            &mut metrics,
            |(unit, _)| unit.clone(),
            |series| {
                metric::Data::Sum(Sum {
                    data_points: series
                        .iter()
                        .map(|(labels, (_, v))| number(labels, start, now, *v))
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            },
        );
        points += instruments(
            &s.gauges,
            &mut metrics,
            |(unit, ..)| unit.clone(),
            |series| {
                metric::Data::Gauge(Gauge {
                    data_points: series
                        .iter()
                        .map(|(labels, (_, v, t))| number(labels, 0, nanos(*t), *v))
                        .collect(),
                })
            },
        );
        points += instruments(
            &s.histograms,
            &mut metrics,
            |(unit, _)| unit.to_string(),
            |series| {
                metric::Data::Histogram(Histogram {
                    data_points: series
                        .iter()
                        .map(|(labels, (_, h))| HistogramDataPoint {
                            attributes: attrs(labels),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.count,
                            sum: Some(h.sum),
                            bucket_counts: h.counts.clone(),
                            explicit_bounds: h.bounds.to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })
            },
        );
        (metrics, points)
    };
    if metrics.is_empty() {
        return;
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(from_model::resource(service, &config.resource_attributes)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tokentrace".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    exporter.send(request.encode_to_vec(), points, budget);
}

impl Sink for OtlpMetricSink {
    fn name(&self) -> &'static str {
        "otel_metric"
    }

    fn span_ended(&mut self, span: &SpanRecord) {
        let Some(o) = genai::observe(span) else {
            return;
        };
        let labels: Labels = crate::genai::CALL_LABELS
            .iter()
            .zip(&o.labels)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.observe(
            "llama_stack_request_duration",
            "s",
            DURATION_BUCKETS,
            labels.clone(),
            o.duration,
        );
        if let Some(t) = o.time_to_first_token {
            self.observe(
                "llama_stack_time_to_first_token",
                "s",
                TTFT_BUCKETS,
                labels.clone(),
                t,
            );
        }
        if let Some(tps) = o.output_tokens_per_second {
            self.observe(
                "llama_stack_output_tokens_per_second",
                "{token}/s",
                TOKENS_PER_SECOND_BUCKETS,
                labels,
                tps,
            );
        }
        // The GenAI conventions' client metrics, with their attributes.
        let mut attrs: Labels = [
            genai::OPERATION_NAME,
            genai::PROVIDER_NAME,
            genai::REQUEST_MODEL,
            genai::RESPONSE_MODEL,
        ]
        .iter()
        .filter_map(|k| Some((k.to_string(), span.attributes.get(*k)?.to_label())))
        .collect();
        if span.status == Some(tokentrace_model::SpanStatus::Error) {
            let kind = span
                .attributes
                .get("error.type")
                .map_or_else(|| "_OTHER".to_string(), |v| v.to_label());
            attrs.push(("error.type".into(), kind));
        }
        attrs.sort();
        self.observe(
            "gen_ai.client.operation.duration",
            "s",
            DURATION_BUCKETS,
            attrs.clone(),
            o.duration,
        );
        if let Some(t) = o.time_to_first_token {
            self.observe(
                "gen_ai.client.operation.time_to_first_chunk",
                "s",
                DURATION_BUCKETS,
                attrs.clone(),
                t,
            );
        }
        attrs.retain(|(k, _)| k != "error.type");
        for (kind, key) in [
            ("input", genai::USAGE_INPUT_TOKENS),
            ("output", genai::USAGE_OUTPUT_TOKENS),
        ] {
            let n = match span.attributes.get(key) {
                Some(AttrValue::Int(i)) => *i as f64,
                Some(AttrValue::Float(f)) => *f,
                _ => continue,
            };
            let mut a = attrs.clone();
            a.push(("gen_ai.token.type".into(), kind.into()));
            a.sort();
            self.observe(
                "gen_ai.client.token.usage",
                "{token}",
                genai::TOKEN_USAGE_BUCKETS,
                a,
                n,
            );
        }
    }

    fn event(&mut self, _event: &SpanEvent) {}

    fn metric(&mut self, point: &MetricPoint) {
        let labels = labels_of(&point.labels);
        let mut s = self.lock();
        if let Some(c) = crate::genai::call_counter(&point.name) {
            let known = s.sums.contains_key(&(c.otlp.to_string(), labels.clone()));
            let key = s.key(c.otlp, labels, known);
            let e = s.sums.entry(key).or_insert_with(|| (c.unit.into(), 0.0));
            e.1 += point.value;
        } else if is_counter(&point.name, &point.unit) {
            let known = s.sums.contains_key(&(point.name.clone(), labels.clone()));
            let key = s.key(&point.name, labels, known);
            let e = s
                .sums
                .entry(key)
                .or_insert_with(|| (point.unit.clone(), 0.0));
            e.1 += point.value;
        } else {
            let known = s.gauges.contains_key(&(point.name.clone(), labels.clone()));
            let key = s.key(&point.name, labels, known);
            s.gauges
                .insert(key, (point.unit.clone(), point.value, point.timestamp));
        }
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        self.thread.flush(Msg::Flush)
    }

    fn shutdown(&mut self) -> Result<(), SinkError> {
        self.thread.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_SERIES, OVERFLOW, State, is_counter};

    #[test]
    fn each_instrument_keeps_at_most_max_series_label_sets() {
        let mut s = State::default();
        let labels = |i: usize| vec![("model_id".to_string(), format!("m{i}"))];
        for i in 0..MAX_SERIES + 10 {
            let key = s.key("x", labels(i), false);
            s.sums.entry(key).or_insert_with(|| ("1".into(), 0.0)).1 += 1.0;
        }
        assert_eq!(s.sums.len(), MAX_SERIES + 1);
        let overflow = (
            "x".to_string(),
            vec![("model_id".to_string(), OVERFLOW.to_string())],
        );
        assert_eq!(s.sums[&overflow].1, 10.0);
        // A known label set keeps being recorded as itself.
        assert_eq!(s.key("x", labels(3), true), ("x".to_string(), labels(3)));
    }

    #[test]
    fn instruments_are_chosen_by_name_and_unit() {
        assert!(is_counter("requests_total", ""));
        assert!(is_counter("cache_hits", "{request}"));
        assert!(is_counter("output_tokens", "1"));
        assert!(!is_counter("queue_depth", "1"));
        assert!(!is_counter("temperature", "Cel"));
    }
}
