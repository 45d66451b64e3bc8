//! Usage totals: the LLM calls (spans with token usage) that started in a window, read from
//! `span_rows_start`, added up per model, provider, user, session or service, with latency
//! percentiles over a bounded, deterministic sample of each group's calls.

use std::collections::{HashMap, HashSet};

use rusqlite::params;
use rusqlite::types::Value as SqlValue;
use tokentrace_model::Timestamp;
use tokentrace_model::query::{PERCENTILE_SAMPLE, UsageAnswer, UsageGroup, UsageQuery, UsageRow};

use crate::{StoreError, StoreReader};

const USER_KEYS: &str = r#"coalesce(json_extract({a}, '$."user.id"'), json_extract({a}, '$."user_id"'), json_extract({a}, '$."enduser.id"'))"#;
const SESSION_KEYS: &str = r#"coalesce(json_extract({a}, '$."session.id"'), json_extract({a}, '$."session_id"'), json_extract({a}, '$."gen_ai.conversation.id"'))"#;

/// The SQL of a group's value for a call (`calls`): literals only (the grouping is a closed
/// set). A user or session the call itself does not name is its trace's (instrumentations
/// often put them on the agent's or the request's span, not on the model call).
fn group_sql(by: UsageGroup) -> String {
    let of_trace = |keys: &str| {
        format!(
            "coalesce({}, (SELECT max({}) FROM span_rows s2 WHERE s2.trace = calls.trace))",
            keys.replace("{a}", "calls.attributes"),
            keys.replace("{a}", "s2.attributes")
        )
    };
    match by {
        UsageGroup::Model => r#"coalesce(json_extract(calls.attributes, '$."gen_ai.response.model"'), json_extract(calls.attributes, '$."gen_ai.request.model"'), json_extract(calls.attributes, '$."model_id"'))"#.to_string(),
        UsageGroup::Provider => r#"coalesce(json_extract(calls.attributes, '$."gen_ai.provider.name"'), json_extract(calls.attributes, '$."provider_id"'))"#.to_string(),
        UsageGroup::User => of_trace(USER_KEYS),
        UsageGroup::Session => of_trace(SESSION_KEYS),
        UsageGroup::Service => "calls.service_name".to_string(),
    }
}

/// A uniform sample of at most [`PERCENTILE_SAMPLE`] values (reservoir sampling with a fixed
/// seed, so the same calls give the same percentiles).
struct Sample {
    values: Vec<f64>,
    seen: u64,
    rng: u64,
}

impl Sample {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            seen: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn add(&mut self, v: f64) {
        self.seen += 1;
        if self.values.len() < PERCENTILE_SAMPLE {
            self.values.push(v);
            return;
        }
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.seen;
        if (r as usize) < PERCENTILE_SAMPLE {
            self.values[r as usize] = v;
        }
    }

    /// The nearest-rank percentile `p` (0–100).
    fn percentile(&mut self, p: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        self.values.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        Some(self.values[rank.clamp(1, self.values.len()) - 1])
    }
}

struct Group {
    calls: u64,
    traces: HashSet<i64>,
    errors: u64,
    input: i64,
    output: i64,
    duration_sum: f64,
    durations: Sample,
    ttft: Sample,
    first: i64,
    last: i64,
}

fn number(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        _ => None,
    }
}

impl StoreReader {
    /// Calls and tokens per group over the window, most tokens first.
    pub fn usage(&self, q: &UsageQuery) -> Result<UsageAnswer, StoreError> {
        let sql = format!(
            r#"SELECT {} AS k, calls.trace, calls.status = 'error', i, o,
                 (calls.end_ns - calls.start_ns) / 1e6, calls.start_ns,
                 json_extract(calls.attributes, '$."gen_ai.response.time_to_first_chunk"')
               FROM (SELECT *, json_extract(attributes, '$."gen_ai.usage.input_tokens"') AS i,
                            json_extract(attributes, '$."gen_ai.usage.output_tokens"') AS o
                     FROM span_rows WHERE start_ns >= ?1 AND start_ns < ?2) AS calls
               WHERE i IS NOT NULL OR o IS NOT NULL"#,
            group_sql(q.by)
        );
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query(params![q.since.unix_nanos(), q.until.unix_nanos()])?;
        let mut groups: HashMap<Option<String>, Group> = HashMap::new();
        while let Some(r) = rows.next()? {
            let key = match r.get::<_, SqlValue>(0)? {
                SqlValue::Text(s) => Some(s),
                SqlValue::Integer(i) => Some(i.to_string()),
                SqlValue::Real(f) => Some(f.to_string()),
                _ => None,
            };
            let start: i64 = r.get(6)?;
            let g = groups.entry(key).or_insert_with(|| Group {
                calls: 0,
                traces: HashSet::new(),
                errors: 0,
                input: 0,
                output: 0,
                duration_sum: 0.0,
                durations: Sample::new(),
                ttft: Sample::new(),
                first: start,
                last: start,
            });
            g.calls += 1;
            g.traces.insert(r.get(1)?);
            g.errors += u64::from(r.get::<_, Option<bool>>(2)?.unwrap_or(false));
            g.input += number(&r.get(3)?).map_or(0, |v| v.round() as i64);
            g.output += number(&r.get(4)?).map_or(0, |v| v.round() as i64);
            if let Some(d) = r.get::<_, Option<f64>>(5)? {
                g.duration_sum += d;
                g.durations.add(d);
            }
            if let Some(t) = number(&r.get(7)?) {
                g.ttft.add(t * 1000.0);
            }
            g.first = g.first.min(start);
            g.last = g.last.max(start);
        }
        let mut data: Vec<UsageRow> = groups
            .into_iter()
            .map(|(key, mut g)| UsageRow {
                key,
                calls: g.calls,
                traces: g.traces.len() as u64,
                errors: g.errors,
                input_tokens: g.input,
                output_tokens: g.output,
                mean_duration_ms: (g.durations.seen > 0)
                    .then(|| g.duration_sum / g.durations.seen as f64),
                p50_duration_ms: g.durations.percentile(50.0),
                p95_duration_ms: g.durations.percentile(95.0),
                p99_duration_ms: g.durations.percentile(99.0),
                p50_time_to_first_token_ms: g.ttft.percentile(50.0),
                first: Timestamp::from_unix_nanos(g.first),
                last: Timestamp::from_unix_nanos(g.last),
            })
            .collect();
        data.sort_by(|a, b| {
            (b.input_tokens + b.output_tokens)
                .cmp(&(a.input_tokens + a.output_tokens))
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(UsageAnswer {
            since: q.since,
            until: q.until,
            by: q.by,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Sample;

    #[test]
    fn percentiles_are_nearest_rank_and_the_sample_stays_bounded() {
        let mut s = Sample::new();
        for v in 1..=100 {
            s.add(v as f64);
        }
        assert_eq!(s.percentile(50.0), Some(50.0));
        assert_eq!(s.percentile(99.0), Some(99.0));
        let mut big = Sample::new();
        for v in 0..50_000 {
            big.add(v as f64);
        }
        assert_eq!(big.values.len(), super::PERCENTILE_SAMPLE);
        let p50 = big.percentile(50.0).unwrap_or_default();
        assert!((20_000.0..30_000.0).contains(&p50), "{p50}");
    }
}
