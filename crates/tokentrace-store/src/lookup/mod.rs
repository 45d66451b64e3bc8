//! Sorted runs: the store's index of random keys (span ids, trace ids, attribute values).
//!
//! A B-tree keyed by random values takes each insertion on a random page; once the tree is
//! larger than a transaction, every insertion dirties a page of its own, so the cost of a write
//! grows with the store. Here the entries of one transaction are sorted and written as a *run*:
//! its entries packed in order into blocks of about 3.8 KB (`lookup_blocks`, one row a block,
//! found by its run and first entry; the bytes: `block`), appended at the right edge of the
//! table, a few pages whatever the store's size. Runs are merged, `FANOUT` runs of one level
//! into one run of the next, in bounded steps on the writer thread between writes (each entry
//! is rewritten once per level: a logarithmic, not a linear, cost); a merge reads its sources'
//! blocks in order, merges their entries in memory and writes the output's blocks, so an entry
//! costs a few comparisons and bytes copied, not a B-tree insertion of its own. Each level has
//! its merge, the lowest level's goes first, so a merge of millions of entries never holds back
//! those of the runs each transaction adds. A lookup reads, in every live run, the block its
//! key starts in (two seeks), a few dozen runs at most.
//!
//! A run is *live* (probed), *building* (a merge's output, not yet probed) or *dead* (merged
//! into another or expired, being deleted). A merge's last step makes its output live and its
//! sources dead in one transaction, and a lookup reads every run in one statement, so readers
//! see each entry exactly once in either state. Entries whose target row is gone (retention),
//! or whose attribute key is no longer registered, are dropped when their run is merged; a run
//! whose targets are all gone is dropped whole.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

mod block;
mod bloom;
mod merge;

pub(crate) use block::Op;
use block::{BLOCK_BYTES, encode};
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

/// The key of a span id's entry: its first 4 bytes, a blob (5 bytes an entry, not 9). The
/// span rows an entry points at are checked for the whole id, so a span whose id starts with
/// the same bytes is a candidate dropped there. (Runs written before schema version 10 held
/// whole ids; migration 10 converts them.)
pub(crate) fn span_key(span_id: &[u8; 8]) -> SqlValue {
    SqlValue::Blob(span_id[..4].to_vec())
}

/// SQL reading the blocks that may hold the entries of kind `?1` whose key compares with `op`
/// to `?2`: in each run, the last block that starts before them (its end may hold some) and
/// every block that starts among them. Of every live run in one statement, so one snapshot
/// (a merge finishing meanwhile is seen whole or not at all); of run `?3` when `one_run`. The
/// runs are the outer loop (`CROSS JOIN`): planned without statistics, SQLite would scan the
/// blocks instead.
fn blocks_sql(op: Op, one_run: bool) -> String {
    let (floor, range) = match op {
        Op::Eq => ("(b.kind, b.key) < (?1, ?2)", "b.kind = ?1 AND b.key = ?2"),
        Op::Gt => ("(b.kind, b.key) <= (?1, ?2)", "b.kind = ?1 AND b.key > ?2"),
        Op::Lt => ("b.kind < ?1 AND ?2 IS ?2", "b.kind = ?1 AND b.key < ?2"),
        Op::Any => ("b.kind < ?1 AND ?2 IS ?2", "b.kind = ?1 AND ?2 IS ?2"),
    };
    let runs = if one_run {
        "r.run = ?3".to_string()
    } else {
        format!("r.state = {LIVE}")
    };
    format!(
        "SELECT (SELECT b.entries FROM lookup_blocks b WHERE b.run = r.run AND {floor}
                 ORDER BY b.kind DESC, b.key DESC, b.id DESC LIMIT 1)
         FROM lookup_runs r WHERE {runs}
         UNION ALL
         SELECT b.entries FROM lookup_runs r CROSS JOIN lookup_blocks b ON b.run = r.run
         WHERE {runs} AND {range}"
    )
}

/// Appends the targets of the blocks a [`blocks_sql`] statement reads.
fn read_targets(
    st: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    kind: i64,
    op: Op,
    key: &SqlValue,
    out: &mut Vec<i64>,
) -> Result<(), StoreError> {
    let mut rows = st.query(params)?;
    while let Some(r) = rows.next()? {
        if let rusqlite::types::ValueRef::Blob(b) = r.get_ref(0)? {
            block::targets(b, kind, op, key, out)?;
        }
    }
    Ok(())
}

/// The targets of every live run's entries of `kind` whose key compares with `op` to `key`,
/// sorted, without repeats (an entry may be in two runs). A few seeks and a block read a run.
pub(crate) fn find(
    conn: &Connection,
    kind: i64,
    op: Op,
    key: &SqlValue,
) -> Result<Vec<i64>, StoreError> {
    let mut out = Vec::new();
    let mut st = conn.prepare_cached(&blocks_sql(op, false))?;
    read_targets(&mut st, params![kind, key], kind, op, key, &mut out)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// [`find`] as a JSON array, for SQL that reads it with `json_each`.
pub(crate) fn find_json(
    conn: &Connection,
    kind: i64,
    op: Op,
    key: &SqlValue,
) -> Result<String, StoreError> {
    Ok(serde_json::Value::from(find(conn, kind, op, key)?).to_string())
}

/// The target ids of a lookup, in SQL: `value` of `json_each` over the
/// parameter `param`, which holds [`find_json`]'s answer.
pub(crate) fn found_sql(param: &str) -> String {
    format!("SELECT value FROM json_each({param})")
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

/// A run's blocks being written: entries in order go in, a block is written each time
/// [`BLOCK_BYTES`] of them have come.
pub(super) struct Blocks {
    run: i64,
    bytes: Vec<u8>,
    /// The kind and key of the block's first entry.
    first: Option<(i64, SqlValue)>,
}

impl Blocks {
    pub(super) fn new(run: i64) -> Self {
        Self {
            run,
            bytes: Vec::with_capacity(BLOCK_BYTES + 64),
            first: None,
        }
    }

    pub(super) fn push(&mut self, conn: &Connection, e: &Entry) -> Result<(), StoreError> {
        if self.first.is_none() {
            self.first = Some((e.kind, e.key.clone()));
        }
        encode(&mut self.bytes, e);
        if self.bytes.len() >= BLOCK_BYTES {
            self.finish(conn)?;
        }
        Ok(())
    }

    /// Writes the block begun, if any.
    pub(super) fn finish(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let Some((kind, key)) = self.first.take() else {
            return Ok(());
        };
        conn.prepare_cached(
            "INSERT INTO lookup_blocks (run, kind, key, entries) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![self.run, kind, key, self.bytes])?;
        self.bytes.clear();
        Ok(())
    }
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
        let mut targets = Vec::new();
        for (run, bloom) in self.blooms.iter().rev() {
            if !bloom.may_hold(h) {
                continue;
            }
            targets.clear();
            let mut st = conn.prepare_cached(&blocks_sql(Op::Eq, true))?;
            read_targets(
                &mut st,
                params![KIND_TRACE, key, run],
                KIND_TRACE,
                Op::Eq,
                &key,
                &mut targets,
            )?;
            for &t in &targets {
                let found: Option<i64> = conn
                    .prepare_cached(
                        "SELECT id FROM trace_rows WHERE id = ?1 AND trace_id = ?2 AND project = ?3",
                    )?
                    .query_row(params![t, key, project], |r| r.get(0))
                    .optional()?;
                if found.is_some() {
                    return Ok(found);
                }
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
        entries.sort_unstable_by(cmp_entry);
        entries.dedup();
        let run = self.next_run;
        self.next_run += 1;
        let mut out = Blocks::new(run);
        for e in &entries {
            out.push(conn, e)?;
        }
        out.finish(conn)?;
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

/// The targets of a key in the sorted runs of a file, for reading a file directly (a
/// benchmark's floor, a test): the entries of `kind` (0: span ids by their first 4 bytes, 1:
/// trace ids, 16 + an `attribute_keys` id: that key's values) whose key is `key`, in every live
/// run. The runs' entries are in blocks, which SQL does not read.
pub fn find_targets(conn: &Connection, kind: i64, key: &SqlValue) -> Result<Vec<i64>, StoreError> {
    find(conn, kind, Op::Eq, key)
}

/// Every entry of the live runs of a file, as (kind, key, target), run by run, each in its
/// order: what `lookup` held as rows up to schema version 11, for inspection and tests.
pub fn live_entries(conn: &Connection) -> Result<Vec<(i64, SqlValue, i64)>, StoreError> {
    let mut st = conn.prepare(&format!(
        "SELECT b.entries FROM lookup_runs r CROSS JOIN lookup_blocks b ON b.run = r.run
         WHERE r.state = {LIVE} ORDER BY b.run, b.kind, b.key, b.id"
    ))?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if let rusqlite::types::ValueRef::Blob(b) = r.get_ref(0)? {
            out.extend(
                block::decode(b)?
                    .into_iter()
                    .map(|e| (e.kind, e.key, e.target)),
            );
        }
    }
    Ok(out)
}

/// Entries of the row runs of schema versions 4 to 11 converted per migration transaction.
const ROWS_BATCH: i64 = 100_000;

/// Migration 12: the live runs of `lookup` (an entry a row, keyed by run, kind, key, target)
/// become blocks of `lookup_blocks`, run by run in order, in transactions of [`ROWS_BATCH`]
/// entries; a run is recorded done (`migration_steps`) with its last batch, and one that an
/// interruption left half-written is written again from its start. Then the runs that were not
/// live are forgotten and `lookup` is dropped. A file without `lookup` (created with blocks,
/// or through migration 4 by this build) has nothing to convert.
pub(crate) fn blocks_from_rows(conn: &mut Connection) -> Result<(), StoreError> {
    const STEP: &str = "12 lookup_blocks";
    if !crate::upgrade::table_exists(conn, "lookup")? {
        return Ok(());
    }
    let done = crate::schema::step_done(conn, STEP)?;
    let runs: Vec<(i64, i64)> = conn
        .prepare(&format!(
            "SELECT run, entries FROM lookup_runs WHERE state = {LIVE} AND run > ?1 ORDER BY run"
        ))?
        .query_map([done], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let total: i64 = runs.iter().map(|r| r.1).sum();
    if total > 0 {
        tracing::info!(
            "trace store: migrating to schema version 12: {total} index entries into blocks"
        );
    }
    let mut converted = 0i64;
    for (run, _) in runs {
        let mut out = Blocks::new(run);
        let mut after: Option<Entry> = None;
        let mut first = true;
        loop {
            let tx = conn.transaction()?;
            if first {
                tx.execute("DELETE FROM lookup_blocks WHERE run = ?1", [run])?;
                first = false;
            }
            let none = Entry {
                kind: i64::MIN,
                key: SqlValue::Null,
                target: i64::MIN,
            };
            let from = after.as_ref().unwrap_or(&none);
            let rows: Vec<Entry> = tx
                .prepare_cached(
                    "SELECT kind, key, target FROM lookup WHERE run = ?1 AND (kind, key, target) > (?2, ?3, ?4)
                     ORDER BY kind, key, target LIMIT ?5",
                )?
                .query_map(
                    params![run, from.kind, from.key, from.target, ROWS_BATCH],
                    |r| {
                        Ok(Entry {
                            kind: r.get(0)?,
                            key: r.get(1)?,
                            target: r.get(2)?,
                        })
                    },
                )?
                .collect::<Result<_, _>>()?;
            for e in &rows {
                out.push(&tx, e)?;
            }
            converted += rows.len() as i64;
            let last = (rows.len() as i64) < ROWS_BATCH;
            if last {
                out.finish(&tx)?;
                crate::schema::record_step(&tx, STEP, run)?;
            }
            tx.commit()?;
            if last {
                break;
            }
            after = rows.into_iter().last();
        }
        tracing::info!("trace store: schema version 12: {converted} of {total} entries");
    }
    let tx = conn.transaction()?;
    tx.execute(
        &format!("DELETE FROM lookup_runs WHERE state <> {LIVE}"),
        [],
    )?;
    tx.execute_batch("DROP TABLE lookup")?;
    tx.commit()?;
    Ok(())
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
