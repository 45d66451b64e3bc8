//! The attribute index: for a configured set of keys (attributes, and the span fields `name`
//! and `status`), which traces have a span with a given value. `query_traces`, `query_spans` and
//! `save_spans_to_dataset` answer `eq`, `gt` and `lt` on an indexed key from it (one index range
//! instead of the JSON of every span), then check every filter on the candidates' spans, so the
//! answers are those of the scan. A key configured after spans were stored is filled from them
//! when the store opens, in batches; only complete keys answer queries.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params};
use tokentrace_model::query::{Filter, FilterTarget, QueryConditionOp, SpanField};
use tokentrace_model::{AttrValue, SpanRecord};

use crate::StoreError;

/// Spans indexed per backfill transaction.
const BACKFILL_BATCH: i64 = 50_000;

/// The indexed keys of an open store, by key, with their ids.
#[derive(Clone, Debug, Default)]
pub(crate) struct IndexedKeys(HashMap<String, i64>);

/// An attribute value as SQLite compares it, the way `json_extract` returns it.
pub(crate) fn sql_value(v: &AttrValue) -> SqlValue {
    match v {
        AttrValue::Null => SqlValue::Null,
        AttrValue::Bool(b) => SqlValue::Integer(*b as i64),
        AttrValue::Int(i) => SqlValue::Integer(*i),
        AttrValue::Float(f) => SqlValue::Real(*f),
        AttrValue::String(s) => SqlValue::Text(s.clone()),
        AttrValue::Array(_) => SqlValue::Text(v.to_json().to_string()),
    }
}

/// What a key reads from a stored span: a column for the span fields, else the attribute.
fn extract_sql(key: &str) -> &'static str {
    match key {
        "name" => "s.name",
        "status" => "s.status",
        _ => "json_extract(s.attributes, ?3)",
    }
}

impl IndexedKeys {
    /// Registers `keys` in the file, fills the index for those not complete yet, and marks keys
    /// no longer configured incomplete (their entries stay until retention removes them; if the
    /// key comes back it is filled again).
    pub(crate) fn prepare(conn: &mut Connection, keys: &[String]) -> Result<Self, StoreError> {
        let tx = conn.transaction()?;
        let known: Vec<String> = tx
            .prepare("SELECT key FROM attribute_keys")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for k in known.iter().filter(|k| !keys.contains(k)) {
            tx.execute("UPDATE attribute_keys SET complete = 0 WHERE key = ?1", [k])?;
        }
        for k in keys {
            tx.execute(
                "INSERT OR IGNORE INTO attribute_keys (key) VALUES (?1)",
                [k],
            )?;
        }
        tx.commit()?;
        let mut ids = HashMap::new();
        for k in keys {
            let (id, complete): (i64, bool) = conn.query_row(
                "SELECT id, complete FROM attribute_keys WHERE key = ?1",
                [k],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if !complete {
                backfill(conn, id, k)?;
            }
            ids.insert(k.clone(), id);
        }
        Ok(Self(ids))
    }

    /// The index entries of a span: (key id, value) of each indexed key it has.
    pub(crate) fn entries(&self, s: &SpanRecord) -> Vec<(i64, SqlValue)> {
        let mut out = Vec::new();
        for (key, id) in &self.0 {
            let value = match key.as_str() {
                "name" => SqlValue::Text(s.name.clone()),
                "status" => match s.status {
                    Some(st) => SqlValue::Text(st.as_str().to_string()),
                    None => continue,
                },
                _ => match s.attributes.get(key) {
                    Some(v) => sql_value(v),
                    None => continue,
                },
            };
            if value != SqlValue::Null {
                out.push((*id, value));
            }
        }
        out
    }

    /// SQL selecting the trace ids that an indexed filter admits (its parameters appended), for
    /// the first filter the index can answer exactly: `eq` with a value, `gt`, `lt`.
    pub(crate) fn candidates(
        &self,
        filters: &[Filter],
        params: &mut Vec<SqlValue>,
    ) -> Option<String> {
        filters.iter().find_map(|f| {
            let key = match &f.target {
                FilterTarget::Attribute(k) => k.as_str(),
                FilterTarget::Field(SpanField::Name) => "name",
                FilterTarget::Field(SpanField::Status) => "status",
                FilterTarget::Field(_) => return None,
            };
            let id = *self.0.get(key)?;
            let op = match f.op {
                QueryConditionOp::Eq if f.value != AttrValue::Null => "=",
                QueryConditionOp::Gt => ">",
                QueryConditionOp::Lt => "<",
                _ => return None,
            };
            params.push(SqlValue::Integer(id));
            params.push(sql_value(&f.value));
            Some(format!(
                "SELECT trace_id FROM attribute_index WHERE key = ? AND value {op} ?"
            ))
        })
    }
}

/// Indexes the spans already stored for key `id`, in batches, then marks it complete.
fn backfill(conn: &mut Connection, id: i64, key: &str) -> Result<(), StoreError> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM spans", [], |r| {
        r.get(0)
    })?;
    if last > 0 {
        tracing::info!("trace store: indexing attribute {key:?} of the spans already stored");
    }
    let sql = format!(
        "INSERT INTO attribute_index (key, value, start_ns, trace_id, expires_at)
         SELECT ?4, v, MIN(start_ns), trace_id,
                CASE WHEN COUNT(expires_at) < COUNT(*) THEN NULL ELSE MAX(expires_at) END
         FROM (
             SELECT {} AS v, s.trace_id, s.expires_at,
                    CAST(strftime('%s', substr(s.start_time, 1, 19)) AS INTEGER) * 1000000000
                        + CAST(substr(s.start_time, 21, 9) AS INTEGER) AS start_ns
             FROM spans s WHERE s.rowid > ?1 AND s.rowid <= ?2
         ) WHERE v IS NOT NULL GROUP BY v, trace_id
         ON CONFLICT (key, value, start_ns, trace_id) DO UPDATE SET expires_at = CASE
             WHEN expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
             ELSE MAX(expires_at, excluded.expires_at) END",
        extract_sql(key)
    );
    let path = format!("$.\"{key}\"");
    let mut done = 0;
    while done < last {
        let upto = done.saturating_add(BACKFILL_BATCH).min(last);
        let tx = conn.transaction()?;
        tx.prepare_cached(&sql)?
            .execute(params![done, upto, path, id])?;
        tx.commit()?;
        done = upto;
    }
    conn.execute("UPDATE attribute_keys SET complete = 1 WHERE id = ?1", [id])?;
    Ok(())
}
