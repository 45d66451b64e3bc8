//! Sorted runs: the store's index of random keys (span ids, trace ids, attribute values).
//!
//! A B-tree keyed by random values takes each insertion on a random page; once the tree is
//! larger than a transaction, every insertion dirties a page of its own, so the cost of a write
//! grows with the store. Here the entries of one transaction are sorted and written as a *run*:
//! `lookup` is keyed by (run, kind, key, target) and a new run has the highest number, so its
//! entries are appended at the right edge of the tree, a few pages whatever the store's size.
//! Runs are merged, `FANOUT` runs of one level into one run of the next, in bounded steps on the
//! writer thread between writes (each entry is rewritten once per level: a logarithmic, not a
//! linear, cost); each level has its merge, the lowest level's goes first, so a merge of
//! millions of entries never holds back those of the runs each transaction adds. A lookup
//! probes every live run: one index seek each, a few dozen at most.
//!
//! A run is *live* (probed), *building* (a merge's output, not yet probed) or *dead* (merged
//! into another or expired, being deleted). A merge's last step makes its output live and its
//! sources dead in one transaction, so readers see each entry exactly once in either state.
//! Entries whose target row is gone (retention), or whose attribute key is no longer
//! registered, are dropped when their run is merged; a run whose targets are all gone is
//! dropped whole.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

mod bloom;
mod merge;

use bloom::{Bloom, hashes, run_bloom};
use merge::Merge;

/// Span id → `span_rows.id`, keyed by [`span_key`].
pub(crate) const KIND_SPAN: i64 = 0;
/// Trace id (16-byte blob) → `trace_rows.id`.
pub(crate) const KIND_TRACE: i64 = 1;

/// Attribute value of the indexed key `key_id` → `trace_rows.id`.
pub(crate) fn attribute_kind(key_id: i64) -> i64 {
    16 + key_id
}

const LIVE: i64 = 0;
const BUILDING: i64 = 1;
const DEAD: i64 = 2;

/// Live runs of one level that start a merge into one run of the next level.
const FANOUT: i64 = 10;
/// Runs merged at once at most (a level that fell behind is merged whole, up to this).
const MAX_MERGE: i64 = 64;
/// Live runs beyond which the writer merges before it writes again: this bounds the seeks of
/// a lookup, whatever the load.
pub(crate) const MAX_LIVE_RUNS: usize = 64;

/// SQL selecting, from every live run, the targets of a kind (first parameter) whose key
/// compares with `op` (`=`, `>`, `<`) to the second parameter.
pub(crate) fn targets_sql(op: &str) -> String {
    format!(
        "SELECT target FROM lookup WHERE run IN (SELECT run FROM lookup_runs WHERE state = {LIVE}) AND kind = ? AND key {op} ?"
    )
}

/// SQL selecting, from every live run, the targets of `kind` (a constant of this crate) whose
/// key is the parameter `param` (e.g. `?1`).
pub(crate) fn targets_of(kind: i64, param: &str) -> String {
    format!(
        "SELECT target FROM lookup WHERE run IN (SELECT run FROM lookup_runs WHERE state = {LIVE}) AND kind = {kind} AND key = {param}"
    )
}

/// The key of a span id's entry: its first 4 bytes, a blob (5 bytes an entry, not 9). The
/// span rows an entry points at are checked for the whole id, so a span whose id starts with
/// the same bytes is a candidate dropped there. (Runs written before schema version 10 held
/// whole ids; migration 10 converts them.)
pub(crate) fn span_key(span_id: &[u8; 8]) -> SqlValue {
    SqlValue::Blob(span_id[..4].to_vec())
}

/// SQL selecting, from every live run, the targets (span row ids, to be checked against the
/// whole id) of a span id whose [`span_key`] is the parameter `key`: one seek a run.
pub(crate) fn span_targets_sql(key: &str) -> String {
    format!(
        "SELECT target FROM lookup WHERE run IN (SELECT run FROM lookup_runs WHERE state = {LIVE}) AND kind = {KIND_SPAN} AND key = {key}"
    )
}

/// One index entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub(crate) kind: i64,
    pub(crate) key: SqlValue,
    pub(crate) target: i64,
}

/// SQLite's order of values: NULL, then numbers (integers and reals by value), then text
/// (bytewise, the BINARY collation), then blobs.
fn cmp_value(a: &SqlValue, b: &SqlValue) -> Ordering {
    use SqlValue::*;
    fn class(v: &SqlValue) -> u8 {
        match v {
            Null => 0,
            Integer(_) | Real(_) => 1,
            Text(_) => 2,
            Blob(_) => 3,
        }
    }
    match (a, b) {
        (Integer(x), Integer(y)) => x.cmp(y),
        (Integer(x), Real(y)) => (*x as f64).total_cmp(y),
        (Real(x), Integer(y)) => x.total_cmp(&(*y as f64)),
        (Real(x), Real(y)) => x.total_cmp(y),
        (Text(x), Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Blob(x), Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

fn cmp_entry(a: &Entry, b: &Entry) -> Ordering {
    a.kind
        .cmp(&b.kind)
        .then_with(|| cmp_value(&a.key, &b.key))
        .then_with(|| a.target.cmp(&b.target))
}

/// Largest target among span entries and among the others (trace keys).
fn maxima(entries: &[Entry]) -> (Option<i64>, Option<i64>) {
    let mut span = None;
    let mut trace = None;
    for e in entries {
        let m = if e.kind == KIND_SPAN {
            &mut span
        } else {
            &mut trace
        };
        *m = Some(m.map_or(e.target, |v: i64| v.max(e.target)));
    }
    (span, trace)
}

/// The smallest id a row of `table` can still have: its smallest id, or past the largest ever
/// given when it is empty (ids are never reused: the tables are `AUTOINCREMENT`).
pub(crate) fn min_live(conn: &Connection, table: &str) -> Result<i64, StoreError> {
    let sql = match table {
        "span_rows" => {
            "SELECT COALESCE((SELECT MIN(id) FROM span_rows), (SELECT seq + 1 FROM sqlite_sequence WHERE name = 'span_rows'), 0)"
        }
        _ => {
            "SELECT COALESCE((SELECT MIN(id) FROM trace_rows), (SELECT seq + 1 FROM sqlite_sequence WHERE name = 'trace_rows'), 0)"
        }
    };
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// The writer's side of the runs: the next run number, the merges in progress (one a level at
/// most), the dead runs still to delete, and a Bloom filter of each live run's trace ids.
pub(crate) struct Lookup {
    next_run: i64,
    merges: Vec<Merge>,
    dead: Vec<i64>,
    blooms: Vec<(i64, Bloom)>,
    /// Whose turn it is, while both wait: deleting dead runs, or merging.
    turn: bool,
}

fn read_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        kind: r.get(0)?,
        key: r.get(1)?,
        target: r.get(2)?,
    })
}

impl Lookup {
    /// The state of the runs in the file. A merge that a restart interrupted is abandoned: its
    /// output is deleted, its sources are still live.
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        conn.execute(
            &format!("UPDATE lookup_runs SET state = {DEAD} WHERE state = {BUILDING}"),
            [],
        )?;
        let next_run: i64 = conn.query_row(
            "SELECT COALESCE(MAX(run), 0) + 1 FROM lookup_runs",
            [],
            |r| r.get(0),
        )?;
        let dead = conn
            .prepare(&format!(
                "SELECT run FROM lookup_runs WHERE state = {DEAD} ORDER BY run"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let live: Vec<(i64, i64)> = conn
            .prepare(&format!(
                "SELECT run, traces FROM lookup_runs WHERE state = {LIVE} ORDER BY run"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut blooms = Vec::with_capacity(live.len());
        for (run, traces) in live {
            blooms.push((run, run_bloom(conn, run, traces)?));
        }
        Ok(Self {
            next_run,
            merges: Vec::new(),
            dead,
            blooms,
            turn: false,
        })
    }

    /// The key of a trace id in `project`, if a live run holds it and its row is still there
    /// with that id; only runs whose Bloom filter may hold the id are read.
    pub(crate) fn trace_key(
        &self,
        conn: &Connection,
        trace_id: &[u8; 16],
        project: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = SqlValue::Blob(trace_id.to_vec());
        let h = hashes(trace_id);
        for (run, bloom) in self.blooms.iter().rev() {
            if !bloom.may_hold(h) {
                continue;
            }
            let found: Option<i64> = conn
                .prepare_cached(&format!(
                    "SELECT t.id FROM lookup l JOIN trace_rows t ON t.id = l.target AND t.trace_id = ?2
                     WHERE l.run = ?1 AND l.kind = {KIND_TRACE} AND l.key = ?2 AND t.project = ?3"
                ))?
                .query_row(params![run, key, project], |r| r.get(0))
                .optional()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Writes entries as a new live run, sorted and without duplicates, in the caller's
    /// transaction; returns how many. The caller must call [`Lookup::rolled_back`] if that
    /// transaction does not commit.
    pub(crate) fn add_run(
        &mut self,
        conn: &Connection,
        mut entries: Vec<Entry>,
    ) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        entries.sort_by(cmp_entry);
        entries.dedup();
        let run = self.next_run;
        self.next_run += 1;
        {
            let mut st = conn.prepare_cached(
                "INSERT INTO lookup (run, kind, key, target) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &entries {
                st.execute(params![run, e.kind, e.key, e.target])?;
            }
        }
        let traces = entries.iter().filter(|e| e.kind == KIND_TRACE).count() as u64;
        let mut bloom = Bloom::with_capacity(traces);
        for e in entries.iter().filter(|e| e.kind == KIND_TRACE) {
            if let SqlValue::Blob(b) = &e.key {
                bloom.insert(b);
            }
        }
        let (span_max, trace_max) = maxima(&entries);
        conn.prepare_cached(
            "INSERT INTO lookup_runs (run, level, state, entries, traces, span_max, trace_max) VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![run, LIVE, entries.len() as i64, traces as i64, span_max, trace_max])?;
        self.blooms.push((run, bloom));
        Ok(entries.len() as u64)
    }

    /// Forgets what the writer believes about the file after a failed transaction.
    pub(crate) fn rolled_back(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let keep = self.next_run;
        *self = Self::load(conn)?;
        self.next_run = self.next_run.max(keep);
        Ok(())
    }

    /// Live runs now.
    pub(crate) fn live_runs(&self) -> usize {
        self.blooms.len()
    }

    /// The level and runs of the next merge, if a level that no merge is merging has enough
    /// live runs: every live run of the lowest such level (up to `MAX_MERGE`).
    fn plan(&self, conn: &Connection) -> Result<Option<(i64, Vec<i64>)>, StoreError> {
        let merging =
            serde_json::Value::from(self.merges.iter().map(|m| m.level).collect::<Vec<i64>>())
                .to_string();
        let level: Option<i64> = conn
            .prepare_cached(&format!(
                "SELECT level FROM lookup_runs WHERE state = {LIVE}
                   AND level NOT IN (SELECT value FROM json_each(?1))
                 GROUP BY level HAVING COUNT(*) >= {FANOUT} ORDER BY level LIMIT 1"
            ))?
            .query_row([merging], |r| r.get(0))
            .optional()?;
        let Some(level) = level else {
            return Ok(None);
        };
        let runs = conn
            .prepare_cached(&format!(
                "SELECT run FROM lookup_runs WHERE state = {LIVE} AND level = ?1 ORDER BY run LIMIT {MAX_MERGE}"
            ))?
            .query_map([level], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Some((level, runs)))
    }

    /// Marks dead the live runs whose every entry points at a row retention deleted (not while
    /// a merge reads them).
    pub(crate) fn drop_expired(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if !self.merges.is_empty() {
            return Ok(());
        }
        let min_span = min_live(conn, "span_rows")?;
        let min_trace = min_live(conn, "trace_rows")?;
        let runs: Vec<i64> = conn
            .prepare_cached(&format!(
                "UPDATE lookup_runs SET state = {DEAD}
                 WHERE state = {LIVE} AND COALESCE(span_max, -1) < ?1 AND COALESCE(trace_max, -1) < ?2
                 RETURNING run"
            ))?
            .query_map(params![min_span, min_trace], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        self.blooms.retain(|(r, _)| !runs.contains(r));
        self.dead.extend(runs);
        self.dead.sort_unstable();
        self.dead.dedup();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_ordered_as_sqlite_orders_them() {
        let conn = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        let values = [
            SqlValue::Blob(vec![0, 1]),
            SqlValue::Text("b".into()),
            SqlValue::Real(2.5),
            SqlValue::Integer(2),
            SqlValue::Text("a".into()),
            SqlValue::Integer(-7),
            SqlValue::Blob(vec![0]),
            SqlValue::Real(-7.5),
        ];
        conn.execute_batch("CREATE TABLE t (v)")
            .unwrap_or_else(|e| panic!("{e}"));
        for v in &values {
            conn.execute("INSERT INTO t VALUES (?1)", [v])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let by_sqlite: Vec<SqlValue> = conn
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap_or_else(|e| panic!("{e}"))
            .query_map([], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut ours = values.to_vec();
        ours.sort_by(cmp_value);
        assert_eq!(ours, by_sqlite);
    }
}
