//! Merging runs: one level's live runs into one run of the next, a round per transaction, and
//! deleting the runs merged.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use super::bloom::Bloom;
use super::{
    BUILDING, DEAD, Entry, KIND_SPAN, KIND_TRACE, LIVE, Lookup, cmp_entry, min_live, read_entry,
};
use crate::StoreError;

/// A merge in progress: everything up to `cursor` has been copied into `into`, whose entry
/// count, trace ids (in `bloom`) and largest targets are kept as the rounds copy them, so that
/// the last round of a merge of millions of entries costs what the others do.
pub(super) struct Merge {
    /// The level of the sources (`into` is of the next).
    pub(super) level: i64,
    pub(super) sources: Vec<i64>,
    pub(super) into: i64,
    pub(super) cursor: Option<Entry>,
    /// Entries pointing below these ids point at deleted rows and are dropped.
    pub(super) min_span: i64,
    pub(super) min_trace: i64,
    entries: i64,
    traces: i64,
    span_max: Option<i64>,
    trace_max: Option<i64>,
    bloom: Bloom,
}

/// SQL moving a merge's entries after the cursor (`?4` to `?6`, when `after`) up to the bound
/// (`?7` to `?9`, when `upto`) from its sources (the runs listed in `?2`, as a JSON array)
/// into run `?1`, in order, without duplicates, and without entries that point at deleted
/// rows (below `?3` for span entries, `?10` for the others) or belong to no registered key.
/// Each variant keeps its range conditions plain, so that SQLite reads each source as one
/// index range. What it copied is read back by [`round_copied_sql`] (a `RETURNING` would
/// gather every entry of the round in a temporary table first).
fn merge_move_sql(after: bool, upto: bool) -> String {
    format!(
        "INSERT OR IGNORE INTO lookup (run, kind, key, target)
         SELECT ?1, kind, key, target FROM lookup
         WHERE run IN (SELECT value FROM json_each(?2)) {} {}
           AND target >= CASE WHEN kind = {KIND_SPAN} THEN ?3 ELSE ?10 END
           AND (kind < 16 OR kind - 16 IN (SELECT id FROM attribute_keys))
         ORDER BY kind, key, target",
        if after {
            "AND (kind, key, target) > (?4, ?5, ?6)"
        } else {
            "AND ?4 IS ?4 AND ?5 IS ?5 AND ?6 IS ?6"
        },
        if upto {
            "AND (kind, key, target) <= (?7, ?8, ?9)"
        } else {
            "AND ?7 IS ?7 AND ?8 IS ?8 AND ?9 IS ?9"
        },
    )
}

/// SQL reading what a round just copied into its merge's output: the entries of run `?1`
/// after the cursor (`?2` to `?4`), since the output holds nothing past the cursor before the
/// round; the whole run in the first round (`first`: one statement for both would not read an
/// index range). Each as its kind, its key when it is a trace id, its target.
fn round_copied_sql(first: bool) -> String {
    format!(
        "SELECT kind, CASE WHEN kind = {KIND_TRACE} THEN key END, target FROM lookup WHERE run = ?1{}",
        if first {
            ""
        } else {
            " AND (kind, key, target) > (?2, ?3, ?4)"
        }
    )
}

/// What one round of a merge copied: entries, trace ids, largest targets.
#[derive(Default)]
struct Round {
    entries: i64,
    trace_keys: Vec<Vec<u8>>,
    span_max: Option<i64>,
    trace_max: Option<i64>,
}

impl Round {
    fn add(&mut self, kind: i64, trace_key: Option<Vec<u8>>, target: i64) {
        self.entries += 1;
        let max = if kind == KIND_SPAN {
            &mut self.span_max
        } else {
            &mut self.trace_max
        };
        *max = Some(max.map_or(target, |m| m.max(target)));
        if let Some(k) = trace_key {
            self.trace_keys.push(k);
        }
    }
}

impl Merge {
    /// Counts a committed round in.
    fn add(&mut self, round: Round) {
        self.entries += round.entries;
        self.traces += round.trace_keys.len() as i64;
        for k in &round.trace_keys {
            self.bloom.insert(k);
        }
        // `None` orders before every `Some`.
        self.span_max = self.span_max.max(round.span_max);
        self.trace_max = self.trace_max.max(round.trace_max);
    }
}

impl Lookup {
    /// One transaction of upkeep, about `budget` entries of work: takes a merge one round
    /// further (starting one for each full level that none is merging), or deletes part of a
    /// dead run, in turns while both wait. Of the merges, the one of the lowest level goes
    /// first: a merge of millions of entries high up never holds back the merges of the
    /// small runs each transaction adds, so the live runs stay few while it runs. Returns the
    /// entries handled (0 when nothing is left to do).
    pub(crate) fn step(&mut self, conn: &mut Connection, budget: u64) -> Result<u64, StoreError> {
        let budget = budget.max(1) as i64;
        self.start_merges(conn)?;
        self.turn = !self.turn;
        if !self.dead.is_empty() && (self.merges.is_empty() || self.turn) {
            return self.delete_dead(conn, budget);
        }
        let Some(at) = (0..self.merges.len()).min_by_key(|&i| self.merges[i].level) else {
            return Ok(0);
        };
        self.merge_round(conn, at, budget)
    }

    /// Starts a merge of each level that has enough live runs and none merging.
    fn start_merges(&mut self, conn: &Connection) -> Result<(), StoreError> {
        while let Some((level, sources)) = self.plan(conn)? {
            let into = self.next_run;
            conn.execute(
                "INSERT INTO lookup_runs (run, level, state, entries, traces) VALUES (?1, ?2, ?3, 0, 0)",
                params![into, level + 1, BUILDING],
            )?;
            self.next_run += 1;
            let traces: i64 = conn.query_row(
                "SELECT COALESCE(SUM(traces), 0) FROM lookup_runs WHERE run IN (SELECT value FROM json_each(?1))",
                [serde_json::Value::from(sources.clone()).to_string()],
                |r| r.get(0),
            )?;
            self.merges.push(Merge {
                level,
                sources,
                into,
                cursor: None,
                min_span: min_live(conn, "span_rows")?,
                min_trace: min_live(conn, "trace_rows")?,
                entries: 0,
                traces: 0,
                span_max: None,
                trace_max: None,
                bloom: Bloom::with_capacity(traces.max(0) as u64),
            });
        }
        Ok(())
    }

    /// Deletes up to `budget` entries of the first dead run (all that is left of it: the run).
    fn delete_dead(&mut self, conn: &mut Connection, budget: i64) -> Result<u64, StoreError> {
        let Some(&run) = self.dead.first() else {
            return Ok(0);
        };
        // Everything up to the budget-th entry, as one range.
        let bound: Option<Entry> = conn
            .prepare_cached(
                "SELECT kind, key, target FROM lookup WHERE run = ?1 ORDER BY kind, key, target LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![run, budget - 1], read_entry)
            .optional()?;
        let tx = conn.transaction()?;
        let n = match &bound {
            Some(b) => tx
                .prepare_cached(
                    "DELETE FROM lookup WHERE run = ?1 AND (kind, key, target) <= (?2, ?3, ?4)",
                )?
                .execute(params![run, b.kind, b.key, b.target])?,
            None => {
                let n = tx
                    .prepare_cached("DELETE FROM lookup WHERE run = ?1")?
                    .execute([run])?;
                tx.execute("DELETE FROM lookup_runs WHERE run = ?1", [run])?;
                n
            }
        };
        tx.commit()?;
        if bound.is_none() {
            self.dead.remove(0);
        }
        Ok(n.max(1) as u64)
    }

    /// One round of the merge `at` of `self.merges`: the entries from the cursor to a bound
    /// about `budget` entries further, copied in one transaction; the last round makes the
    /// output live and the sources dead in the same transaction.
    fn merge_round(
        &mut self,
        conn: &mut Connection,
        at: usize,
        budget: i64,
    ) -> Result<u64, StoreError> {
        let merge = &self.merges[at];
        // The round ends at the smallest of the sources' entries that lie a share of the budget
        // after the cursor; a source with fewer entries left does not bound it.
        let share = (budget / merge.sources.len().max(1) as i64).max(1);
        let mut bound: Option<Entry> = None;
        for &src in &merge.sources {
            let e: Option<Entry> = match &merge.cursor {
                None => conn
                    .prepare_cached(
                        "SELECT kind, key, target FROM lookup WHERE run = ?1 ORDER BY kind, key, target LIMIT 1 OFFSET ?2",
                    )?
                    .query_row(params![src, share - 1], read_entry)
                    .optional()?,
                Some(c) => conn
                    .prepare_cached(
                        "SELECT kind, key, target FROM lookup WHERE run = ?1 AND (kind, key, target) > (?2, ?3, ?4)
                         ORDER BY kind, key, target LIMIT 1 OFFSET ?5",
                    )?
                    .query_row(params![src, c.kind, c.key, c.target, share - 1], read_entry)
                    .optional()?,
            };
            if let Some(e) = e
                && bound
                    .as_ref()
                    .is_none_or(|b| cmp_entry(&e, b) == Ordering::Less)
            {
                bound = Some(e);
            }
        }
        let sources = serde_json::Value::from(merge.sources.clone()).to_string();
        let none = Entry {
            kind: 0,
            key: SqlValue::Null,
            target: 0,
        };
        let (from, to) = (
            merge.cursor.as_ref().unwrap_or(&none),
            bound.as_ref().unwrap_or(&none),
        );
        let tx = conn.transaction()?;
        let sql = merge_move_sql(merge.cursor.is_some(), bound.is_some());
        let mut round = Round::default();
        {
            tx.prepare_cached(&sql)?.execute(params![
                merge.into,
                sources,
                merge.min_span,
                from.kind,
                from.key,
                from.target,
                to.kind,
                to.key,
                to.target,
                merge.min_trace,
            ])?;
            let mut st;
            let mut rows = match &merge.cursor {
                Some(c) => {
                    st = tx.prepare_cached(&round_copied_sql(false))?;
                    st.query(params![merge.into, c.kind, c.key, c.target])?
                }
                None => {
                    st = tx.prepare_cached(&round_copied_sql(true))?;
                    st.query([merge.into])?
                }
            };
            while let Some(r) = rows.next()? {
                round.add(r.get(0)?, r.get(1)?, r.get(2)?);
            }
        }
        let moved = round.entries.max(1) as u64;
        let finished = bound.is_none();
        if finished {
            let (entries, traces) = (merge.entries + round.entries, merge.traces);
            let traces = traces + round.trace_keys.len() as i64;
            let span_max = merge.span_max.max(round.span_max);
            let trace_max = merge.trace_max.max(round.trace_max);
            tx.execute(
                &format!(
                    "UPDATE lookup_runs SET state = {LIVE}, entries = ?2, traces = ?3, span_max = ?4,
                        trace_max = ?5
                     WHERE run = ?1"
                ),
                params![merge.into, entries, traces, span_max, trace_max],
            )?;
            let mut st = tx.prepare_cached(&format!(
                "UPDATE lookup_runs SET state = {DEAD} WHERE run = ?1"
            ))?;
            for &src in &merge.sources {
                st.execute([src])?;
            }
        }
        tx.commit()?;
        let mut merge = if finished {
            self.merges.remove(at)
        } else {
            let m = &mut self.merges[at];
            m.cursor = bound;
            m.add(round);
            return Ok(moved);
        };
        merge.add(round);
        self.blooms.retain(|(r, _)| !merge.sources.contains(r));
        self.blooms.push((merge.into, merge.bloom));
        self.blooms.sort_by_key(|(r, _)| *r);
        self.dead.extend(merge.sources);
        self.dead.sort_unstable();
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::MAX_LIVE_RUNS;
    use super::*;

    /// The live entries of a kind, as (key, target), in order.
    fn live(conn: &Connection, kind: i64) -> Vec<(Vec<u8>, i64)> {
        conn.prepare(&format!(
            "SELECT l.key, l.target FROM lookup l JOIN lookup_runs r ON r.run = l.run
             WHERE r.state = {LIVE} AND l.kind = ?1 ORDER BY 1, 2"
        ))
        .unwrap()
        .query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn small_merges_go_on_while_a_large_one_runs_and_every_entry_stays_live_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace_store.db");
        crate::Store::open(&path, crate::StoreOptions::default())
            .unwrap()
            .close()
            .unwrap();
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let mut lookup = Lookup::load(&conn).unwrap();
        let (mut spans, mut traces) = (0i64, 0i64);
        let mut most_merges = 0;
        let mut most_live = 0;
        for _ in 0..1_500 {
            // A transaction's run: a trace and its 4 spans.
            traces += 1;
            let mut entries = vec![Entry {
                kind: KIND_TRACE,
                key: SqlValue::Blob(traces.to_be_bytes().repeat(2)),
                target: traces,
            }];
            for _ in 0..4 {
                spans += 1;
                entries.push(Entry {
                    kind: KIND_SPAN,
                    key: SqlValue::Blob((spans * 7_919 % 100_003).to_be_bytes().to_vec()),
                    target: spans,
                });
            }
            let tx = conn.transaction().unwrap();
            lookup.add_run(&tx, entries).unwrap();
            tx.commit().unwrap();
            // Upkeep of 4 entries per entry written, as the writer gives it, in rounds of 8
            // at most.
            let mut budget = 4 * 5;
            while budget > 0 {
                match lookup.step(&mut conn, budget.min(8)).unwrap() {
                    0 => break,
                    n => budget = budget.saturating_sub(n),
                }
            }
            most_merges = most_merges.max(lookup.merges.len());
            most_live = most_live.max(lookup.live_runs());
        }
        assert!(
            most_merges >= 2,
            "merges of two levels at once ({most_merges})"
        );
        // One merge at a time let 175 runs pile up here, past the bound at which the writer
        // stops writing to merge (`MAX_LIVE_RUNS`).
        assert!(
            most_live <= MAX_LIVE_RUNS,
            "the small runs were merged meanwhile ({most_live} live)"
        );
        while lookup.step(&mut conn, 1_000).unwrap() > 0 {}
        let levels: i64 = conn
            .query_row("SELECT MAX(level) FROM lookup_runs", [], |r| r.get(0))
            .unwrap();
        assert!(levels >= 2, "runs of merged runs ({levels})");
        // Every entry live exactly once.
        let span_entries = live(&conn, KIND_SPAN);
        assert_eq!(span_entries.len() as i64, spans);
        let mut targets: Vec<i64> = span_entries.iter().map(|e| e.1).collect();
        targets.sort_unstable();
        targets.dedup();
        assert_eq!(targets.len() as i64, spans);
        assert_eq!(live(&conn, KIND_TRACE).len() as i64, traces);
        // The figures kept round by round are those of the runs' entries.
        let wrong: i64 = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM lookup_runs r WHERE r.state = {LIVE} AND (
                        r.entries IS NOT (SELECT count(*) FROM lookup WHERE run = r.run)
                     OR r.traces IS NOT (SELECT count(*) FROM lookup WHERE run = r.run AND kind = {KIND_TRACE})
                     OR r.span_max IS NOT (SELECT max(target) FROM lookup WHERE run = r.run AND kind = {KIND_SPAN})
                     OR r.trace_max IS NOT (SELECT max(target) FROM lookup WHERE run = r.run AND kind <> {KIND_SPAN}))"
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(wrong, 0);
        // Each run's Bloom filter holds its trace ids.
        let held = (1..=traces).all(|t| {
            let h = super::super::bloom::hashes(&t.to_be_bytes().repeat(2));
            lookup.blooms.iter().any(|(_, b)| b.may_hold(h))
        });
        assert!(held);
    }
}
