//! Validated metric queries: time window, bucket size, compiled label matchers.

use regex::Regex;
use tokentrace_model::Timestamp;
use tokentrace_model::query::{
    InvalidQuery, MetricLabelOperator, MetricQueryType, QueryMetricsRequest, parse_granularity,
    validate_attribute_key,
};

/// Most buckets one range query may produce.
pub const MAX_BUCKETS: i64 = 10_000;

enum Matcher {
    Eq(String, String),
    Ne(String, String),
    Re(String, Regex),
    NotRe(String, Regex),
}

/// A checked `query_metrics` request.
pub struct MetricQuery {
    start: i64,
    end: i64,
    /// Bucket size in seconds for range queries; `None` for instant queries.
    step: Option<i64>,
    matchers: Vec<Matcher>,
}

impl MetricQuery {
    /// Validates a request; `now` is the default end.
    pub fn from_request(
        req: &QueryMetricsRequest,
        now: Timestamp,
    ) -> Result<MetricQuery, InvalidQuery> {
        let start = req.start_time;
        let end = req.end_time.unwrap_or_else(|| now.unix_seconds());
        const MAX_SECS: i64 = i64::MAX / 1_000_000_000 - 1;
        if !(0..=MAX_SECS).contains(&start) || !(0..=MAX_SECS).contains(&end) {
            return Err(InvalidQuery(format!(
                "start_time and end_time must be unix seconds between 0 and {MAX_SECS}"
            )));
        }
        if end < start {
            return Err(InvalidQuery(format!(
                "end_time ({end}) must not be before start_time ({start})"
            )));
        }
        let step = match req.query_type {
            MetricQueryType::Instant => None,
            MetricQueryType::Range => {
                let step = match &req.granularity {
                    Some(g) => parse_granularity(g)?,
                    None => 60,
                };
                let buckets = (end / step) - (start / step) + 1;
                if buckets > MAX_BUCKETS {
                    return Err(InvalidQuery(format!(
                        "granularity {} over this time range gives {buckets} buckets; at most {MAX_BUCKETS} are allowed",
                        req.granularity.as_deref().unwrap_or("1m")
                    )));
                }
                Some(step)
            }
        };
        let mut matchers = Vec::new();
        for m in req.label_matchers.as_deref().unwrap_or_default() {
            validate_attribute_key(&m.name)
                .map_err(|e| InvalidQuery(format!("label matcher name: {}", e.0)))?;
            let regex = || {
                Regex::new(&format!("^(?:{})$", m.value)).map_err(|e| {
                    InvalidQuery(format!(
                        "label matcher {:?}: invalid regex {:?}: {e}",
                        m.name, m.value
                    ))
                })
            };
            matchers.push(match m.operator {
                MetricLabelOperator::Equals => Matcher::Eq(m.name.clone(), m.value.clone()),
                MetricLabelOperator::NotEquals => Matcher::Ne(m.name.clone(), m.value.clone()),
                MetricLabelOperator::RegexMatch => Matcher::Re(m.name.clone(), regex()?),
                MetricLabelOperator::RegexNotMatch => Matcher::NotRe(m.name.clone(), regex()?),
            });
        }
        Ok(MetricQuery {
            start,
            end,
            step,
            matchers,
        })
    }

    pub(crate) fn start_nanos(&self) -> i64 {
        self.start * 1_000_000_000
    }

    /// The end of the window, inclusive of its whole last second.
    pub(crate) fn end_nanos(&self) -> i64 {
        self.end * 1_000_000_000 + 999_999_999
    }

    /// The timestamp (unix seconds) a point at `ts_nanos` is reported under.
    pub(crate) fn bucket(&self, ts_nanos: i64) -> i64 {
        match self.step {
            Some(step) => ts_nanos.div_euclid(1_000_000_000).div_euclid(step) * step,
            None => self.end,
        }
    }

    /// Whether a label set passes every matcher; a missing label reads as "" (as in Prometheus).
    pub(crate) fn matches(&self, labels: &[(String, String)]) -> bool {
        let get = |name: &str| {
            labels
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        self.matchers.iter().all(|m| match m {
            Matcher::Eq(n, v) => get(n) == v,
            Matcher::Ne(n, v) => get(n) != v,
            Matcher::Re(n, re) => re.is_match(get(n)),
            Matcher::NotRe(n, re) => !re.is_match(get(n)),
        })
    }
}
