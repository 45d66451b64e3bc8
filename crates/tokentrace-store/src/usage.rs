//! Usage totals: the LLM calls (spans with token usage) that started in a window, read from
//! the spans of the traces of that window (`reader::window_traces`), added up per model, provider, user, session or service, with latency
//! percentiles over a bounded, deterministic sample of each group's calls.

use std::collections::{BTreeSet, HashMap, HashSet};

use rusqlite::params_from_iter;
use rusqlite::types::Value as SqlValue;
use tokentrace_model::Timestamp;
use tokentrace_model::query::{
    MAX_LISTED, PERCENTILE_SAMPLE, SessionRow, SessionsAnswer, SessionsQuery, UsageAnswer,
    UsageGroup, UsageQuery, UsageRow,
};

use crate::reader::{span_service_sql, window_traces};
use crate::summaries::text;
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
        UsageGroup::Service => span_service_sql(
            "calls.service_name",
            "(SELECT ts.service_name FROM trace_rows ts WHERE ts.id = calls.trace)",
        ),
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

#[derive(Default)]
struct Group {
    calls: u64,
    traces: HashSet<i64>,
    errors: u64,
    input: i64,
    output: i64,
    cached: i64,
    reasoning: i64,
    cost: Option<f64>,
    unpriced: u64,
    duration_sum: f64,
    durations: Sample,
    ttft: Sample,
    users: BTreeSet<String>,
    models: BTreeSet<String>,
    /// A call of the user and of the model asked for (`sessions`), whether or not they are
    /// among the first [`MAX_LISTED`] listed.
    has_user: bool,
    has_model: bool,
    first: i64,
    last: i64,
}

impl Default for Sample {
    fn default() -> Self {
        Self::new()
    }
}

impl Group {
    fn row(mut self, key: Option<String>) -> UsageRow {
        UsageRow {
            key,
            calls: self.calls,
            traces: self.traces.len() as u64,
            errors: self.errors,
            input_tokens: self.input,
            output_tokens: self.output,
            cached_input_tokens: self.cached,
            reasoning_tokens: self.reasoning,
            cost_usd: self.cost,
            unpriced_calls: self.unpriced,
            mean_duration_ms: (self.durations.seen > 0)
                .then(|| self.duration_sum / self.durations.seen as f64),
            p50_duration_ms: self.durations.percentile(50.0),
            p95_duration_ms: self.durations.percentile(95.0),
            p99_duration_ms: self.durations.percentile(99.0),
            p50_time_to_first_token_ms: self.ttft.percentile(50.0),
            users: self.users.into_iter().collect(),
            models: self.models.into_iter().collect(),
            first: Timestamp::from_unix_nanos(self.first),
            last: Timestamp::from_unix_nanos(self.last),
        }
    }
}

fn number(v: &SqlValue) -> Option<f64> {
    match v {
        SqlValue::Integer(i) => Some(*i as f64),
        SqlValue::Real(f) => Some(*f),
        _ => None,
    }
}

fn tokens(v: &SqlValue) -> i64 {
    number(v).map_or(0, |v| v.round() as i64)
}

fn add_listed(set: &mut BTreeSet<String>, v: Option<String>) {
    if let Some(v) = v
        && set.len() < MAX_LISTED
    {
        set.insert(v);
    }
}

impl StoreReader {
    /// Adds up the calls that started in the window per group; with `who`, also the users
    /// and models of each group.
    fn usage_groups(
        &self,
        since: Timestamp,
        until: Timestamp,
        by: UsageGroup,
        who: Option<(Option<&str>, Option<&str>)>,
    ) -> Result<HashMap<Option<String>, Group>, StoreError> {
        let wanted = who.unwrap_or_default();
        let who = who.is_some();
        let (user, model) = if who {
            (group_sql(UsageGroup::User), group_sql(UsageGroup::Model))
        } else {
            ("NULL".to_string(), "NULL".to_string())
        };
        let sql = format!(
            r#"SELECT {} AS k, calls.trace, calls.status = 'error', i, o,
                 (calls.end_ns - calls.start_ns) / 1e6, calls.start_ns,
                 json_extract(calls.attributes, '$."{ttft}"'),
                 json_extract(calls.attributes, '$."{cached}"'),
                 json_extract(calls.attributes, '$."{reasoning}"'),
                 json_extract(calls.attributes, '$."{cost}"'),
                 {user}, {model}
               FROM (SELECT *, json_extract(attributes, '$."{input}"') AS i,
                            json_extract(attributes, '$."{output}"') AS o
                     FROM span_rows WHERE trace IN ({window})
                                      AND start_ns >= ?1 AND start_ns < ?2{scope}) AS calls
               WHERE (i IS NOT NULL OR o IS NOT NULL)
                 AND json_extract(calls.attributes, '$."{counted_by}"') IS NULL"#,
            group_sql(by),
            ttft = "gen_ai.response.time_to_first_chunk",
            cached = "gen_ai.usage.cache_read.input_tokens",
            reasoning = "gen_ai.usage.reasoning.output_tokens",
            cost = "tokentrace.cost.usd",
            input = "gen_ai.usage.input_tokens",
            output = "gen_ai.usage.output_tokens",
            counted_by = "tokentrace.genai.counted_by",
            window = window_traces(
                &format!("?1 - {}", crate::schema::LONG_TRACE_NS),
                "?1",
                "(?2 - 1)"
            ),
            scope = self.scope_sql(
                "(SELECT tp.project FROM trace_rows tp WHERE tp.id = span_rows.trace)",
                "?3"
            ),
        );
        let sql = self.names.resolve(&sql)?;
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(&sql)?;
        let mut params = vec![
            SqlValue::Integer(since.unix_nanos()),
            SqlValue::Integer(until.unix_nanos()),
        ];
        params.extend(self.scope_param());
        let mut rows = st.query(params_from_iter(params))?;
        let mut groups: HashMap<Option<String>, Group> = HashMap::new();
        while let Some(r) = rows.next()? {
            let start: i64 = r.get(6)?;
            let g = groups.entry(text(r.get(0)?)).or_insert_with(|| Group {
                first: start,
                last: start,
                ..Group::default()
            });
            g.calls += 1;
            g.traces.insert(r.get(1)?);
            g.errors += u64::from(r.get::<_, Option<bool>>(2)?.unwrap_or(false));
            g.input += tokens(&r.get(3)?);
            g.output += tokens(&r.get(4)?);
            if let Some(d) = r.get::<_, Option<f64>>(5)? {
                g.duration_sum += d;
                g.durations.add(d);
            }
            if let Some(t) = number(&r.get(7)?) {
                g.ttft.add(t * 1000.0);
            }
            g.cached += tokens(&r.get(8)?);
            g.reasoning += tokens(&r.get(9)?);
            match number(&r.get(10)?) {
                Some(c) => *g.cost.get_or_insert(0.0) += c,
                None => g.unpriced += 1,
            }
            let (user, model) = (text(r.get(11)?), text(r.get(12)?));
            g.has_user |= wanted.0.is_some() && user.as_deref() == wanted.0;
            g.has_model |= wanted.1.is_some() && model.as_deref() == wanted.1;
            add_listed(&mut g.users, user);
            add_listed(&mut g.models, model);
            g.first = g.first.min(start);
            g.last = g.last.max(start);
        }
        Ok(groups)
    }

    /// Calls and tokens per group over the window, most tokens first.
    pub fn usage(&self, q: &UsageQuery) -> Result<UsageAnswer, StoreError> {
        let groups = self.usage_groups(q.since, q.until, q.by, None)?;
        let mut data: Vec<UsageRow> = groups.into_iter().map(|(k, g)| g.row(k)).collect();
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

    /// The sessions with calls in the window, latest activity first, with their users, models
    /// and totals.
    pub fn sessions(&self, q: &SessionsQuery) -> Result<SessionsAnswer, StoreError> {
        let w = &q.window;
        let wanted = (q.user.as_deref(), q.model.as_deref());
        let groups = self.usage_groups(w.since, w.until, UsageGroup::Session, Some(wanted))?;
        let mut data: Vec<SessionRow> = groups
            .into_iter()
            .filter_map(|(k, g)| {
                let session_id = k.clone()?;
                let keep = (q.user.is_none() || g.has_user) && (q.model.is_none() || g.has_model);
                keep.then(|| SessionRow {
                    session_id,
                    usage: g.row(k),
                })
            })
            .collect();
        data.sort_by(|a, b| {
            b.usage
                .last
                .cmp(&a.usage.last)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        let more = data.len().saturating_sub(q.limit) as u64;
        data.truncate(q.limit);
        Ok(SessionsAnswer {
            since: w.since,
            until: w.until,
            data,
            more,
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
