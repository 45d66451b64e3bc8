//! Metric queries: the validated request (time window, bucket size, compiled label matchers)
//! and its evaluation over the stored series (`metric_series`), their per-hour and per-minute
//! rollups and points.

use std::collections::BTreeMap;

use regex::Regex;
use rusqlite::params;
use tokentrace_model::Timestamp;
use tokentrace_model::query::{
    InvalidQuery, MetricDataPoint, MetricLabel, MetricLabelOperator, MetricName, MetricQueryType,
    MetricSeries, QueryMetricsRequest, parse_granularity, validate_attribute_key,
};

use crate::reader::attributes;
use crate::{StoreError, StoreReader};
use tokentrace_model::{DEFAULT_PROJECT, PROJECT_ATTRIBUTE};

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

impl MetricQuery {
    /// The whole minutes `[from, to)` (unix minutes) inside the window, which the per-minute
    /// rollups answer; `None` when buckets are not whole minutes or no whole minute fits.
    fn rollup_minutes(&self) -> Option<(i64, i64)> {
        if self.step.is_some_and(|s| s % 60 != 0) {
            return None;
        }
        let from = (self.start + 59).div_euclid(60);
        let to = (self.end + 1).div_euclid(60);
        (from < to).then_some((from, to))
    }

    /// The whole hours `[from, to)` (unix hours) inside the whole minutes `[from, to)`, which
    /// the hourly rollups answer when every bucket is whole hours (or the window is one
    /// bucket); `None` otherwise, or when no whole hour fits.
    fn rollup_hours(&self, from_minute: i64, to_minute: i64) -> Option<(i64, i64)> {
        if self.step.is_some_and(|s| s % 3600 != 0) {
            return None;
        }
        let from = (from_minute + 59).div_euclid(60);
        let to = to_minute.div_euclid(60);
        (from < to).then_some((from, to))
    }
}

/// A stored label set (JSON) as sorted (name, value) pairs, values as labels.
fn label_set(labels: &str) -> Result<LabelSet, StoreError> {
    Ok(attributes(labels)?
        .into_iter()
        .map(|(k, v)| (k, v.to_label()))
        .collect())
}

const MINUTE_NANOS: i64 = 60_000_000_000;

impl StoreReader {
    /// Whether a series of these labels is of a project this reader sees (its project is the
    /// label [`PROJECT_ATTRIBUTE`], absent for `default`).
    fn sees_series(&self, labels: &LabelSet) -> bool {
        let project = labels
            .iter()
            .find(|(k, _)| k == PROJECT_ATTRIBUTE)
            .map_or(DEFAULT_PROJECT, |(_, v)| v.as_str());
        self.sees(project)
    }
}

impl StoreReader {
    /// Metric series of `name` per distinct label set. The series whose labels match are
    /// found in `metric_series` (one row per label set, whatever the number of points); of
    /// each, whole hours of the window are read from its per-hour rollups when the buckets
    /// are whole hours or the query is instant (a row per hour), the other whole minutes from
    /// its per-minute rollups (a row per minute), the partial minutes at the window's edges,
    /// or a window with buckets that are not whole minutes, from its points (`metric_points`
    /// by series and time).
    pub fn query_metrics(
        &self,
        name: &str,
        q: &MetricQuery,
    ) -> Result<Vec<MetricSeries>, StoreError> {
        let conn = self.conn()?;
        let mut matching = Vec::new();
        let mut st =
            conn.prepare_cached("SELECT id, unit, labels FROM metric_series WHERE name = ?1")?;
        for row in st.query_map([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (id, unit, labels) = row?;
            let labels = label_set(&labels)?;
            if q.matches(&labels) && self.sees_series(&labels) {
                matching.push((id, unit, labels));
            }
        }
        let rollup = q.rollup_minutes();
        let from_points = match rollup {
            Some((from, to)) => vec![
                (q.start_nanos(), from * MINUTE_NANOS - 1),
                (to * MINUTE_NANOS, q.end_nanos()),
            ],
            None => vec![(q.start_nanos(), q.end_nanos())],
        };
        // Whole hours inside the whole minutes come from the hourly rollups when buckets are
        // whole hours (or the window is one bucket); the minutes before and after them from
        // the minute rollups.
        let (minute_ranges, hours) = match rollup {
            Some((from, to)) => match q.rollup_hours(from, to) {
                Some((h_from, h_to)) => (
                    vec![(from, h_from * 60), (h_to * 60, to)],
                    Some((h_from, h_to)),
                ),
                None => (vec![(from, to)], None),
            },
            None => (Vec::new(), None),
        };
        // Summed per bucket by SQLite: a row per bucket comes back, not one per minute.
        let minutes_per_bucket = q.step.map_or(i64::MAX, |s| s / 60);
        let hours_per_bucket = q.step.map_or(i64::MAX, |s| (s / 3600).max(1));
        let mut rollups = conn.prepare_cached(
            "SELECT MIN(minute), SUM(sum) FROM metric_rollups
             WHERE series = ?1 AND minute >= ?2 AND minute < ?3 GROUP BY minute / ?4",
        )?;
        let mut hourly = conn.prepare_cached(
            "SELECT MIN(hour), SUM(sum) FROM metric_rollups_hourly
             WHERE series = ?1 AND hour >= ?2 AND hour < ?3 GROUP BY hour / ?4",
        )?;
        let mut points = conn.prepare_cached(
            "SELECT ts_ns, value FROM metric_points WHERE series = ?1 AND ts_ns >= ?2 AND ts_ns <= ?3",
        )?;
        // label set → (unit, bucket → sum); two stored label sets that read the same (their
        // keys in another order) add up as one.
        let mut series: BTreeMap<LabelSet, (String, Buckets)> = BTreeMap::new();
        for (id, unit, labels) in matching {
            let mut buckets = Buckets::new();
            if let Some((from, to)) = hours {
                for row in hourly.query_map(params![id, from, to, hours_per_bucket], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                })? {
                    let (hour, sum) = row?;
                    *buckets
                        .entry(q.bucket(hour * 60 * MINUTE_NANOS))
                        .or_insert(0.0) += sum;
                }
            }
            for &(from, to) in &minute_ranges {
                if from >= to {
                    continue;
                }
                for row in rollups.query_map(params![id, from, to, minutes_per_bucket], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                })? {
                    let (minute, sum) = row?;
                    *buckets
                        .entry(q.bucket(minute * MINUTE_NANOS))
                        .or_insert(0.0) += sum;
                }
            }
            for &(first, last) in &from_points {
                if first > last {
                    continue;
                }
                for row in points.query_map(params![id, first, last], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                })? {
                    let (ts_nanos, value) = row?;
                    *buckets.entry(q.bucket(ts_nanos)).or_insert(0.0) += value;
                }
            }
            if buckets.is_empty() {
                continue;
            }
            let entry = series
                .entry(labels)
                .or_insert_with(|| (unit, Buckets::new()));
            for (bucket, value) in buckets {
                *entry.1.entry(bucket).or_insert(0.0) += value;
            }
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

impl StoreReader {
    /// The metrics the store holds, by name and unit, with their number of series.
    pub fn metric_names(&self) -> Result<Vec<MetricName>, StoreError> {
        let conn = self.conn()?;
        let scope = match self.scope_param() {
            Some(_) => format!(
                " WHERE COALESCE(json_extract(labels, '$.\"{PROJECT_ATTRIBUTE}\"'), '{DEFAULT_PROJECT}') IN (SELECT value FROM json_each(?1))"
            ),
            None => String::new(),
        };
        let names = conn
            .prepare_cached(&format!(
                "SELECT name, unit, count(*) FROM metric_series{scope} GROUP BY name, unit ORDER BY name, unit"
            ))?
            .query_map(rusqlite::params_from_iter(self.scope_param()), |r| {
                Ok(MetricName {
                    name: r.get(0)?,
                    unit: r.get(1)?,
                    series: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }
}
