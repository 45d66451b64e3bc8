//! A small metrics registry rendered in the Prometheus text format 0.0.4 or OpenMetrics 1.0.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format a scraper's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A value read at scrape time (queue depth, writer statistics, ...).
pub struct Sample {
    /// Metric name (counters end in `_total`).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter (monotonic) or gauge.
    pub counter: bool,
    /// Labels.
    pub labels: Vec<(&'static str, String)>,
    /// Value.
    pub value: f64,
}

struct CounterFamily {
    help: &'static str,
    label_names: &'static [&'static str],
    values: BTreeMap<Vec<String>, f64>,
}

#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

struct HistogramFamily {
    help: &'static str,
    label_names: &'static [&'static str],
    bounds: &'static [f64],
    values: BTreeMap<Vec<String>, Histogram>,
}

#[derive(Default)]
struct State {
    counters: BTreeMap<&'static str, CounterFamily>,
    histograms: BTreeMap<&'static str, HistogramFamily>,
}

/// Counters and histograms, shared between the pipeline (writes) and `/metrics` (reads).
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels_text(names: &[&str], values: &[String], extra: Option<(&str, String)>) -> String {
    // An empty value is the same as no label (Prometheus), so it is left out.
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Label sets one metric may have; past it, new ones are added up in one overflow series
/// whose every label is [`OVERFLOW`] (label values come from clients: model names, OTLP
/// attributes), and `tokentrace_metric_series_overflow_total{metric}` counts them.
pub const MAX_SERIES: usize = 2_000;

/// The label value of the overflow series.
pub const OVERFLOW: &str = "_overflow";

/// The labels to record under: `labels` if known or there is room, else the overflow series.
fn bounded(
    values_len: usize,
    known: bool,
    label_names: &[&str],
    labels: Vec<String>,
) -> (Vec<String>, bool) {
    if known || values_len < MAX_SERIES {
        (labels, false)
    } else {
        (vec![OVERFLOW.to_string(); label_names.len()], true)
    }
}

impl Registry {
    /// A registry with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds to a counter (created on first use; the name ends in `_total`).
    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        labels: Vec<String>,
        v: f64,
    ) {
        let mut s = self.lock();
        let family = s.counters.entry(name).or_insert_with(|| CounterFamily {
            help,
            label_names,
            values: BTreeMap::new(),
        });
        let known = family.values.contains_key(&labels);
        let (labels, over) = bounded(family.values.len(), known, label_names, labels);
        *family.values.entry(labels).or_insert(0.0) += v;
        if over {
            Self::overflowed(&mut s, name);
        }
    }

    fn overflowed(s: &mut State, metric: &'static str) {
        let family = s
            .counters
            .entry("tokentrace_metric_series_overflow_total")
            .or_insert_with(|| CounterFamily {
                help: "Observations recorded in a metric's overflow series (it had MAX_SERIES label sets).",
                label_names: &["metric"],
                values: BTreeMap::new(),
            });
        *family.values.entry(vec![metric.to_string()]).or_insert(0.0) += 1.0;
    }

    /// Records an observation in a histogram with these bucket bounds.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        bounds: &'static [f64],
        labels: Vec<String>,
        v: f64,
    ) {
        let mut s = self.lock();
        let family = s.histograms.entry(name).or_insert_with(|| HistogramFamily {
            help,
            label_names,
            bounds,
            values: BTreeMap::new(),
        });
        let known = family.values.contains_key(&labels);
        let (labels, over) = bounded(family.values.len(), known, label_names, labels);
        let h = family.values.entry(labels).or_insert_with(|| Histogram {
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
        if over {
            Self::overflowed(&mut s, name);
        }
    }

    /// The value of a counter, for tests and summaries.
    pub fn counter_value(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let s = self.lock();
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        s.counters.get(name)?.values.get(&key).copied()
    }

    /// Renders everything, plus `live` samples read at scrape time. With `projects`, only
    /// the series of those projects: of the metrics with a `project` label (empty for
    /// `default`), the series whose project is one of them; server-wide metrics not at all.
    pub fn render(&self, format: Format, live: &[Sample], projects: Option<&[String]>) -> String {
        let mut out = String::new();
        let s = self.lock();
        let om = format == Format::OpenMetrics;
        // The index of the `project` label, if the family has one and the scrape is limited.
        let limited = |names: &[&str]| -> Option<Option<usize>> {
            match projects {
                None => Some(None),
                Some(_) => names.iter().position(|n| *n == "project").map(Some),
            }
        };
        let visible = |at: Option<usize>, labels: &[String]| -> bool {
            match (at, projects) {
                (Some(i), Some(p)) => {
                    let v = labels.get(i).map_or("", String::as_str);
                    let v = if v.is_empty() {
                        tokentrace_model::DEFAULT_PROJECT
                    } else {
                        v
                    };
                    p.iter().any(|x| x == v)
                }
                _ => true,
            }
        };
        for (name, f) in &s.counters {
            let Some(at) = limited(f.label_names) else {
                continue;
            };
            let base = if om {
                name.strip_suffix("_total").unwrap_or(name)
            } else {
                name
            };
            let _ = writeln!(out, "# HELP {base} {}", f.help);
            let _ = writeln!(out, "# TYPE {base} counter");
            for (labels, v) in f.values.iter().filter(|(l, _)| visible(at, l)) {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels_text(f.label_names, labels, None),
                    number(*v)
                );
            }
        }
        for (name, f) in &s.histograms {
            let Some(at) = limited(f.label_names) else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, h) in f.values.iter().filter(|(l, _)| visible(at, l)) {
                for (b, c) in f.bounds.iter().zip(&h.counts) {
                    let l = labels_text(f.label_names, labels, Some(("le", number(*b))));
                    let _ = writeln!(out, "{name}_bucket{l} {c}");
                }
                let l = labels_text(f.label_names, labels, Some(("le", "+Inf".into())));
                let _ = writeln!(out, "{name}_bucket{l} {}", h.count);
                let l = labels_text(f.label_names, labels, None);
                let _ = writeln!(out, "{name}_sum{l} {}", number(h.sum));
                let _ = writeln!(out, "{name}_count{l} {}", h.count);
            }
        }
        drop(s);
        // Samples of one family must be contiguous. They are server-wide.
        let mut live: Vec<&Sample> = live.iter().filter(|_| projects.is_none()).collect();
        live.sort_by_key(|s| s.name);
        let mut seen: Vec<&str> = Vec::new();
        for sample in live {
            let base = if om && sample.counter {
                sample.name.strip_suffix("_total").unwrap_or(sample.name)
            } else {
                sample.name
            };
            if !seen.contains(&sample.name) {
                seen.push(sample.name);
                let _ = writeln!(out, "# HELP {base} {}", sample.help);
                let kind = if sample.counter { "counter" } else { "gauge" };
                let _ = writeln!(out, "# TYPE {base} {kind}");
            }
            let names: Vec<&str> = sample.labels.iter().map(|(n, _)| *n).collect();
            let values: Vec<String> = sample.labels.iter().map(|(_, v)| v.clone()).collect();
            let _ = writeln!(
                out,
                "{}{} {}",
                sample.name,
                labels_text(&names, &values, None),
                number(sample.value)
            );
        }
        if om {
            out.push_str("# EOF\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_label_values_cannot_grow_a_metric_without_bound() {
        let r = Registry::new();
        for i in 0..MAX_SERIES + 500 {
            r.add("t_total", "h", &["model_id"], vec![format!("m{i}")], 1.0);
            r.observe(
                "t_seconds",
                "h",
                &["model_id"],
                &[1.0],
                vec![format!("m{i}")],
                0.5,
            );
        }
        // Known series still count; new ones go to the overflow series.
        r.add("t_total", "h", &["model_id"], vec!["m0".into()], 1.0);
        assert_eq!(r.counter_value("t_total", &["m0"]), Some(2.0));
        assert_eq!(r.counter_value("t_total", &[OVERFLOW]), Some(500.0));
        assert_eq!(
            r.counter_value("tokentrace_metric_series_overflow_total", &["t_total"]),
            Some(500.0)
        );
        let text = r.render(Format::Prometheus, &[], None);
        assert_eq!(text.matches("t_total{").count(), MAX_SERIES + 1);
        assert_eq!(text.matches("t_seconds_count{").count(), MAX_SERIES + 1);
    }

    #[test]
    fn text_and_openmetrics() {
        let r = Registry::new();
        r.add(
            "x_tokens_total",
            "Tokens.",
            &["model_id"],
            vec!["m\"1".into()],
            3.0,
        );
        r.add(
            "x_tokens_total",
            "Tokens.",
            &["model_id"],
            vec!["m\"1".into()],
            2.0,
        );
        r.observe("x_seconds", "Time.", &[], &[0.1, 1.0], vec![], 0.5);
        let text = r.render(Format::Prometheus, &[], None);
        assert!(
            text.contains("# TYPE x_tokens_total counter\nx_tokens_total{model_id=\"m\\\"1\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 0\nx_seconds_bucket{le=\"1\"} 1\nx_seconds_bucket{le=\"+Inf\"} 1\nx_seconds_sum 0.5\nx_seconds_count 1\n"), "{text}");
        let om = r.render(Format::OpenMetrics, &[], None);
        assert!(
            om.contains("# TYPE x_tokens counter\nx_tokens_total{"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }
}
