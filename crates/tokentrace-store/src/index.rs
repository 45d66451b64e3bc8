//! The attribute index: for a configured set of keys (attributes, and the span fields `name`
//! and `status`), which traces have a span with a given value. An entry is (kind
//! [`attribute_kind`] of the key's id, the value, the trace key). A key with few values (a
//! model, a status, a span name) keeps its entries in `attribute_values`, a B-tree in which
//! each value's entries grow at the end of their range (trace keys grow), so a batch touches
//! a page per value; a key seen with more than [`LOW_CARDINALITY`] values (users, sessions)
//! puts its entries in the sorted runs of `crate::lookup`, where random values cost no random
//! page. Queries read both.
//! A text is kept under a 4-byte key of it ([`index_value`]).
//! `query_traces`, `query_spans` and `save_spans_to_dataset` answer `eq` (and `gt`, `lt` on
//! numbers) on an indexed key from it (an index range per run instead of the JSON of every span), then check
//! every filter on the candidates' spans, so the answers are those of the scan. A key
//! configured after spans were stored is filled from them when the store opens, in batches;
//! only complete keys answer queries.

use std::collections::HashMap;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use tokentrace_model::query::{Filter, FilterTarget, QueryConditionOp, SpanField};
use tokentrace_model::{AttrValue, SpanRecord};

use crate::StoreError;
use crate::lookup::{Entry, Lookup, Op, attribute_kind, find_json, found_sql};

/// Values a key may show (per writer run) and still keep its entries in `attribute_values`.
pub(crate) const LOW_CARDINALITY: usize = 64;

/// Which keys have shown many values, as the writer sees them: their entries go to the sorted
/// runs. Bounded: at most `LOW_CARDINALITY` value hashes per key.
#[derive(Default)]
pub(crate) struct Cardinality {
    values: HashMap<i64, std::collections::HashSet<u64>>,
    high: std::collections::HashSet<i64>,
}

impl Cardinality {
    /// Whether the entry (of this kind and value) belongs in the sorted runs.
    pub(crate) fn is_high(&mut self, kind: i64, value: &SqlValue) -> bool {
        if self.high.contains(&kind) {
            return true;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        match value {
            SqlValue::Null => 0u8.hash(&mut h),
            SqlValue::Integer(i) => i.hash(&mut h),
            SqlValue::Real(f) => f.to_bits().hash(&mut h),
            SqlValue::Text(t) => t.hash(&mut h),
            SqlValue::Blob(b) => b.hash(&mut h),
        }
        let seen = self.values.entry(kind).or_default();
        seen.insert(h.finish());
        if seen.len() > LOW_CARDINALITY {
            self.values.remove(&kind);
            self.high.insert(kind);
            return true;
        }
        false
    }
}

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

/// The value an entry of the attribute index keeps for `v` (an attribute value as SQLite
/// compares it, [`sql_value`]): a number as itself; a text (a string, a span name or status, an
/// array's JSON) as the 4-byte blob [`text_key`]. An entry then costs a few bytes whatever the
/// length of the text (a session id of 36 characters: 5 bytes), and a text `eq` reads the
/// entries of its key: another text with the same key is a candidate that the query's check of
/// the spans drops, as it drops any candidate the filter does not admit. Blobs sort after every
/// number (SQLite's order), as texts do, so a `gt` or `lt` on a number finds the same entries
/// it found among texts; a `gt` or `lt` on a text is not answered from the index.
pub(crate) fn index_value(v: SqlValue) -> SqlValue {
    match v {
        SqlValue::Text(t) => SqlValue::Blob(text_key(&t).to_vec()),
        other => other,
    }
}

/// The index key of a text: the first 4 bytes (big-endian) of its 64-bit FNV-1a hash, a
/// function fixed by this file format (entries written by one build are read by the next).
pub fn text_key(text: &str) -> [u8; 4] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let bytes = h.to_be_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

/// What a key reads from a stored span: a column for the span fields, else the attribute.
fn extract_sql(key: &str) -> &'static str {
    match key {
        "name" => "name",
        "status" => "status",
        _ => "json_extract(attributes, ?3)",
    }
}

impl IndexedKeys {
    /// Registers `keys` in the file, fills the index for those not complete yet, and marks keys
    /// no longer configured incomplete. A key that is filled gets a new id first (ids only
    /// grow), so entries left from an earlier filling, complete or interrupted, belong to no key
    /// and are dropped when their runs are merged.
    pub(crate) fn prepare(
        conn: &mut Connection,
        keys: &[String],
        lookup: &mut Lookup,
    ) -> Result<Self, StoreError> {
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
            tx.execute(
                "UPDATE attribute_keys SET id = (SELECT MAX(id) + 1 FROM attribute_keys)
                 WHERE key = ?1 AND complete = 0",
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
                backfill(conn, id, k, lookup)?;
            }
            ids.insert(k.clone(), id);
        }
        Ok(Self(ids))
    }

    /// The keys whose index is complete, as a file's last writer left them (read-only
    /// handles: nothing is registered or filled).
    pub(crate) fn complete(conn: &Connection) -> Result<Self, StoreError> {
        let ids = conn
            .prepare("SELECT key, id FROM attribute_keys WHERE complete = 1")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
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
                out.push((*id, index_value(value)));
            }
        }
        out
    }

    /// SQL selecting the trace keys (`trace_rows.id`) that an indexed filter admits (its
    /// parameters appended), for the first filter the index can answer exactly: `eq` with a
    /// value, `gt`, `lt`. The sorted runs are read here, on `conn` (their answer becomes a
    /// parameter); `attribute_values` by the SQL.
    pub(crate) fn candidates(
        &self,
        conn: &Connection,
        filters: &[Filter],
        params: &mut Vec<SqlValue>,
    ) -> Result<Option<String>, StoreError> {
        let Some((id, op, value)) = filters.iter().find_map(|f| {
            let key = match &f.target {
                FilterTarget::Attribute(k) => k.as_str(),
                FilterTarget::Field(SpanField::Name) => "name",
                FilterTarget::Field(SpanField::Status) => "status",
                FilterTarget::Field(_) => return None,
            };
            let id = *self.0.get(key)?;
            let numeric = matches!(
                f.value,
                AttrValue::Int(_) | AttrValue::Float(_) | AttrValue::Bool(_)
            );
            let op = match f.op {
                QueryConditionOp::Eq if f.value != AttrValue::Null => Op::Eq,
                QueryConditionOp::Gt if numeric => Op::Gt,
                QueryConditionOp::Lt if numeric => Op::Lt,
                _ => return None,
            };
            Some((id, op, index_value(sql_value(&f.value))))
        }) else {
            return Ok(None);
        };
        let kind = attribute_kind(id);
        params.push(SqlValue::Text(find_json(conn, kind, op, &value)?));
        params.push(SqlValue::Integer(kind));
        params.push(value);
        let op = match op {
            Op::Gt => ">",
            Op::Lt => "<",
            _ => "=",
        };
        Ok(Some(format!(
            "{} UNION ALL SELECT trace FROM attribute_values WHERE kind = ? AND value {op} ?",
            found_sql("?")
        )))
    }
}

/// Indexes the spans already stored for key `id`, in batches (each its own run), then marks
/// it complete.
fn backfill(
    conn: &mut Connection,
    id: i64,
    key: &str,
    lookup: &mut Lookup,
) -> Result<(), StoreError> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM span_rows", [], |r| {
        r.get(0)
    })?;
    if last > 0 {
        tracing::info!("trace store: indexing attribute {key:?} of the spans already stored");
    }
    let sql = format!(
        "SELECT DISTINCT {} AS v, trace FROM span_rows WHERE id > ?1 AND id <= ?2 AND v IS NOT NULL",
        extract_sql(key)
    );
    let path = crate::names::path(conn, key)?;
    let kind = attribute_kind(id);
    let mut done = 0;
    while done < last {
        let upto = done.saturating_add(BACKFILL_BATCH).min(last);
        let tx = conn.transaction()?;
        let entries: Vec<Entry> = {
            let mut st = tx.prepare_cached(&sql)?;
            let entry = |r: &rusqlite::Row<'_>| {
                Ok(Entry {
                    kind,
                    key: index_value(r.get(0)?),
                    target: r.get(1)?,
                })
            };
            if extract_sql(key).contains("?3") {
                st.query_map(params![done, upto, path], entry)?
                    .collect::<Result<_, _>>()?
            } else {
                st.query_map(params![done, upto], entry)?
                    .collect::<Result<_, _>>()?
            }
        };
        if let Err(e) = lookup.add_run(&tx, entries).and_then(|_| Ok(tx.commit()?)) {
            lookup.rolled_back(conn)?;
            return Err(e);
        }
        done = upto;
    }
    conn.execute("UPDATE attribute_keys SET complete = 1 WHERE id = ?1", [id])?;
    Ok(())
}

/// One step of retention in `attribute_values`: deletes up to `chunk` entries of the (kind,
/// value) range at `at` (the first range when `None`) that point at deleted traces, and moves
/// `at` to the next range once this one has none left; returns the entries deleted and whether
/// every range has been visited.
pub(crate) fn expire_values(
    conn: &Connection,
    at: &mut Option<(i64, SqlValue)>,
    chunk: i64,
) -> Result<(u64, bool), StoreError> {
    let pair: Option<(i64, SqlValue)> = match &*at {
        None => conn
            .prepare_cached("SELECT kind, value FROM attribute_values ORDER BY kind, value LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
        Some((kind, value)) => conn
            .prepare_cached(
                "SELECT kind, value FROM attribute_values WHERE (kind, value) >= (?1, ?2) ORDER BY kind, value LIMIT 1",
            )?
            .query_row(params![kind, value], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    let Some((kind, value)) = pair else {
        return Ok((0, true));
    };
    let min_trace = crate::lookup::min_live(conn, "trace_rows")?;
    // A range's oldest entries come first (trace keys grow): delete from its front.
    let n = conn
        .prepare_cached(
            "DELETE FROM attribute_values WHERE kind = ?1 AND value = ?2 AND trace < MIN(?3,
                COALESCE((SELECT trace FROM attribute_values WHERE kind = ?1 AND value = ?2 ORDER BY trace LIMIT 1 OFFSET ?4), ?3))",
        )?
        .execute(params![kind, value, min_trace, chunk])? as i64;
    if n < chunk {
        // Done with this range: the next one is strictly after it.
        let next: Option<(i64, SqlValue)> = conn
            .prepare_cached(
                "SELECT kind, value FROM attribute_values WHERE (kind, value) > (?1, ?2) ORDER BY kind, value LIMIT 1",
            )?
            .query_row(params![kind, value], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let done = next.is_none();
        *at = next;
        return Ok((n as u64, done));
    }
    *at = Some((kind, value));
    Ok((n as u64, false))
}
