//! `tokentrace metrics NAME`: a metric's totals per series over a window, with a small chart
//! of each series over time.

use std::collections::BTreeMap;

use tokentrace_model::Timestamp;
use tokentrace_model::query::{
    MetricLabelMatcher, MetricLabelOperator, MetricQueryType, MetricSeries, QueryMetricsRequest,
    parse_granularity,
};

use super::out::{self, Cell, DIM, Table};
use super::source::Source;
use super::{CliError, CliResult, FormatArgs, SourceArgs, parse_time};

/// Arguments of `tokentrace metrics`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  tokentrace metrics total_tokens --since 24h --by model_id
  tokentrace metrics prompt_tokens --since 7d --granularity 1d --label provider_id=openai
  tokentrace metrics completion_tokens --since 1h --json")]
pub struct MetricsArgs {
    /// The metric, e.g. total_tokens, prompt_tokens, completion_tokens.
    pub name: String,
    /// Window start: an age (1h, 24h, 7d), an ISO time or unix seconds.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Window end (default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Bucket size of the chart: 5m, 1h, 1d… (default: about 24 buckets over the window).
    #[arg(long)]
    pub granularity: Option<String>,
    /// Add up the series by this label (e.g. model_id, provider_id).
    #[arg(long)]
    pub by: Option<String>,
    /// Only series with this label value: name=value, name!=value, name=~regex, name!~regex.
    #[arg(long = "label", value_name = "MATCHER")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn matcher(s: &str) -> Result<MetricLabelMatcher, CliError> {
    use MetricLabelOperator as Op;
    [
        ("=~", Op::RegexMatch),
        ("!~", Op::RegexNotMatch),
        ("!=", Op::NotEquals),
        ("=", Op::Equals),
    ]
    .iter()
    .find_map(|(sym, op)| {
        s.split_once(sym).map(|(n, v)| MetricLabelMatcher {
            name: n.trim().to_string(),
            value: v.to_string(),
            operator: *op,
        })
    })
    .ok_or_else(|| {
        CliError(format!(
            "--label {s:?}: expected name=value (or !=, =~, !~)"
        ))
    })
}

/// A granularity of about 24 buckets over `secs`, in a round unit.
fn default_granularity(secs: i64) -> &'static str {
    [
        (7_200, "5m"),
        (21_600, "15m"),
        (172_800, "1h"),
        (1_209_600, "6h"),
    ]
    .iter()
    .find(|(upto, _)| secs <= *upto)
    .map_or("1d", |(_, g)| g)
}

const TICKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values`, `width` characters at most (neighbouring buckets added up).
fn sparkline(values: &[f64], width: usize) -> String {
    if values.is_empty() {
        return String::new();
    }
    let per = values.len().div_ceil(width.max(1));
    let sums: Vec<f64> = values.chunks(per).map(|c| c.iter().sum()).collect();
    let max = sums.iter().cloned().fold(0.0, f64::max);
    sums.iter()
        .map(|&v| {
            if v <= 0.0 || max <= 0.0 {
                ' '
            } else {
                TICKS[((v / max) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

/// Runs `tokentrace metrics`.
pub fn run(args: MetricsArgs) -> CliResult {
    let now = Timestamp::now();
    let start = parse_time(&args.since, now)?.unix_seconds();
    let end = match &args.until {
        Some(u) => parse_time(u, now)?.unix_seconds(),
        None => now.unix_seconds(),
    };
    let granularity = args
        .granularity
        .clone()
        .unwrap_or_else(|| default_granularity(end - start).to_string());
    let step = parse_granularity(&granularity)?;
    let req = QueryMetricsRequest {
        start_time: start,
        end_time: Some(end),
        granularity: Some(granularity),
        query_type: MetricQueryType::Range,
        label_matchers: Some(
            args.labels
                .iter()
                .map(|l| matcher(l))
                .collect::<Result<_, _>>()?,
        ),
    };
    let series = Source::open(&args.source)?.query_metrics(&args.name, &req)?;
    let series = match &args.by {
        Some(label) => group_by(series, label),
        None => series,
    };
    if args.format.json {
        return out::print_json(&series);
    }
    if series.is_empty() {
        eprintln!("no points of {} in this window", args.name);
        return Ok(());
    }
    // Buckets of the window, for charts on one time axis.
    let first = start.div_euclid(step) * step;
    let buckets = ((end - first) / step + 1).max(1) as usize;
    let rows = series
        .iter()
        .map(|s| {
            let mut values = vec![0.0; buckets];
            for p in &s.values {
                let i = ((p.timestamp - first) / step).clamp(0, buckets as i64 - 1) as usize;
                values[i] += p.value;
            }
            let total: f64 = s.values.iter().map(|p| p.value).sum();
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect();
            let unit = s.values.first().map(|p| p.unit.clone()).unwrap_or_default();
            let mut row = vec![
                Cell::new(if labels.is_empty() {
                    "(all)".into()
                } else {
                    labels.join(" ")
                }),
                Cell::num(number(total)),
                Cell::new(unit),
            ];
            if !args.format.csv {
                row.push(Cell::new(sparkline(&values, 48)).paint(DIM));
            }
            row
        })
        .collect();
    let mut headers: Vec<String> = ["SERIES", "TOTAL", "UNIT"].map(String::from).to_vec();
    if !args.format.csv {
        headers.push("CHART".into());
    }
    let table = Table {
        headers,
        rows,
        flexible: vec![(0, 8)],
    };
    table.print(args.format.csv);
    Ok(())
}

/// Series added up by the value of one label (series without it under an empty value).
fn group_by(series: Vec<MetricSeries>, label: &str) -> Vec<MetricSeries> {
    let mut groups: BTreeMap<String, MetricSeries> = BTreeMap::new();
    for s in series {
        let value = s
            .labels
            .iter()
            .find(|l| l.name == label)
            .map(|l| l.value.clone())
            .unwrap_or_default();
        let g = groups.entry(value.clone()).or_insert_with(|| MetricSeries {
            metric: s.metric.clone(),
            labels: vec![tokentrace_model::query::MetricLabel {
                name: label.to_string(),
                value,
            }],
            values: Vec::new(),
        });
        for p in s.values {
            match g.values.iter_mut().find(|q| q.timestamp == p.timestamp) {
                Some(q) => q.value += p.value,
                None => g.values.push(p),
            }
        }
    }
    let mut out: Vec<MetricSeries> = groups.into_values().collect();
    for s in &mut out {
        s.values.sort_by_key(|p| p.timestamp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_largest_bucket_and_fit_the_width() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0], 10), " ▃▅█");
        assert_eq!(sparkline(&[1.0; 100], 10).chars().count(), 10);
    }
}
