//! Metric queries: the validated request (time window, bucket size, compiled label matchers)
//! and its evaluation over the `metrics` table.

use std::collections::BTreeMap;

use regex::Regex;
use rusqlite::params;
use tokentrace_model::Timestamp;
use tokentrace_model::query::{
    InvalidQuery, MetricDataPoint, MetricLabel, MetricLabelOperator, MetricQueryType, MetricSeries,
    QueryMetricsRequest, parse_granularity, validate_attribute_key,
};

use crate::reader::attributes;
use crate::{StoreError, StoreReader};

/// A metric series' labels, sorted by name.
type LabelSet = Vec<(String, String)>;
/// Bucket start (unix seconds) → summed value.
type Buckets = BTreeMap<i64, f64>;

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

impl StoreReader {
    /// Metric series of `name` per distinct label set.
    pub fn query_metrics(
        &self,
        name: &str,
        q: &MetricQuery,
    ) -> Result<Vec<MetricSeries>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT ts_nanos, value, unit, labels FROM metrics WHERE name = ?1 AND ts_nanos >= ?2 AND ts_nanos <= ?3 ORDER BY ts_nanos",
        )?;
        let rows = st.query_map(params![name, q.start_nanos(), q.end_nanos()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, f64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        // label set → (unit, bucket → sum)
        let mut series: BTreeMap<LabelSet, (String, Buckets)> = BTreeMap::new();
        for row in rows {
            let (ts_nanos, value, unit, labels) = row?;
            let labels: Vec<(String, String)> = attributes(&labels)?
                .into_iter()
                .map(|(k, v)| (k, v.to_label()))
                .collect();
            if !q.matches(&labels) {
                continue;
            }
            let entry = series
                .entry(labels)
                .or_insert_with(|| (unit, BTreeMap::new()));
            *entry.1.entry(q.bucket(ts_nanos)).or_insert(0.0) += value;
        }
        Ok(series
            .into_iter()
            .map(|(labels, (unit, buckets))| MetricSeries {
                metric: name.to_string(),
                labels: labels
                    .into_iter()
                    .map(|(name, value)| MetricLabel { name, value })
                    .collect(),
                values: buckets
                    .into_iter()
                    .map(|(timestamp, value)| MetricDataPoint {
                        timestamp,
                        value,
                        unit: unit.clone(),
                    })
                    .collect(),
            })
            .collect())
    }
}
