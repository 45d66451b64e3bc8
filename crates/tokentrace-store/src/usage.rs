//! Usage totals: the LLM calls (spans with token usage) that started in a window, read from
//! `span_rows_start`, added up per model, provider, user, session or service.

use rusqlite::params;
use rusqlite::types::Value as SqlValue;
use tokentrace_model::query::{UsageAnswer, UsageGroup, UsageQuery, UsageRow};

use crate::{StoreError, StoreReader};

/// The SQL of a group's value: literals only (the grouping is a closed set).
fn group_sql(by: UsageGroup) -> &'static str {
    match by {
        UsageGroup::Model => {
            r#"coalesce(json_extract(attributes, '$."gen_ai.response.model"'), json_extract(attributes, '$."gen_ai.request.model"'), json_extract(attributes, '$."model_id"'))"#
        }
        UsageGroup::Provider => {
            r#"coalesce(json_extract(attributes, '$."gen_ai.provider.name"'), json_extract(attributes, '$."provider_id"'))"#
        }
        UsageGroup::User => {
            r#"coalesce(json_extract(attributes, '$."user.id"'), json_extract(attributes, '$."user_id"'), json_extract(attributes, '$."enduser.id"'))"#
        }
        UsageGroup::Session => {
            r#"coalesce(json_extract(attributes, '$."session.id"'), json_extract(attributes, '$."session_id"'), json_extract(attributes, '$."gen_ai.conversation.id"'))"#
        }
        UsageGroup::Service => "service_name",
    }
}

impl StoreReader {
    /// Calls and tokens per group over the window, most tokens first.
    pub fn usage(&self, q: &UsageQuery) -> Result<UsageAnswer, StoreError> {
        let sql = format!(
            r#"SELECT {} AS k, count(*), count(DISTINCT trace), coalesce(sum(status = 'error'), 0),
                 coalesce(sum(i), 0), coalesce(sum(o), 0), avg((end_ns - start_ns) / 1e6)
               FROM (SELECT *, json_extract(attributes, '$."gen_ai.usage.input_tokens"') AS i,
                            json_extract(attributes, '$."gen_ai.usage.output_tokens"') AS o
                     FROM span_rows WHERE start_ns >= ?1 AND start_ns < ?2)
               WHERE i IS NOT NULL OR o IS NOT NULL
               GROUP BY k ORDER BY coalesce(sum(i), 0) + coalesce(sum(o), 0) DESC, k"#,
            group_sql(q.by)
        );
        let conn = self.conn()?;
        let data = conn
            .prepare_cached(&sql)?
            .query_map(params![q.since.unix_nanos(), q.until.unix_nanos()], |r| {
                let key = match r.get::<_, SqlValue>(0)? {
                    SqlValue::Text(s) => Some(s),
                    SqlValue::Integer(i) => Some(i.to_string()),
                    SqlValue::Real(f) => Some(f.to_string()),
                    _ => None,
                };
                let number = |i: usize| -> rusqlite::Result<i64> {
                    Ok(match r.get::<_, SqlValue>(i)? {
                        SqlValue::Integer(n) => n,
                        SqlValue::Real(f) => f.round() as i64,
                        _ => 0,
                    })
                };
                Ok(UsageRow {
                    key,
                    calls: r.get::<_, i64>(1)?.max(0) as u64,
                    traces: r.get::<_, i64>(2)?.max(0) as u64,
                    errors: r.get::<_, i64>(3)?.max(0) as u64,
                    input_tokens: number(4)?,
                    output_tokens: number(5)?,
                    mean_duration_ms: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(UsageAnswer {
            since: q.since,
            until: q.until,
            by: q.by,
            data,
        })
    }
}
