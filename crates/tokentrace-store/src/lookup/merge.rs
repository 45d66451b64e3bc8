//! Merging runs: one level's live runs into one run of the next, a round per transaction, and
//! deleting the runs merged.

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use super::bloom::run_bloom;
use super::{
    BUILDING, DEAD, Entry, KIND_SPAN, KIND_TRACE, LIVE, Lookup, cmp_entry, min_live, read_entry,
};
use crate::StoreError;

/// A merge in progress: everything up to `cursor` has been copied into `into`.
pub(super) struct Merge {
    pub(super) sources: Vec<i64>,
    pub(super) into: i64,
    pub(super) cursor: Option<Entry>,
    /// Entries pointing below these ids point at deleted rows and are dropped.
    pub(super) min_span: i64,
    pub(super) min_trace: i64,
}

/// SQL moving a merge's entries after the cursor (`?4` to `?6`, when `after`) up to the bound
/// (`?7` to `?9`, when `upto`) from its sources (the runs listed in `?2`, as a JSON array)
/// into run `?1`, in order, without duplicates, and without entries that point at deleted
/// rows (below `?3` for span entries, `?10` for the others) or belong to no registered key.
/// Each variant keeps its range conditions plain, so that SQLite reads each source as one
/// index range.
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

impl Lookup {
    /// One transaction of upkeep, about `budget` entries of work: deletes part of a dead run,
    /// or takes a merge one round further (starting one if a level is full). Returns the
    /// entries handled (0 when nothing is left to do).
    pub(crate) fn step(&mut self, conn: &mut Connection, budget: u64) -> Result<u64, StoreError> {
        let budget = budget.max(1) as i64;
        if let Some(&run) = self.dead.first() {
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
            return Ok(n.max(1) as u64);
        }
        if self.merge.is_none() {
            let Some((level, sources)) = self.plan(conn)? else {
                return Ok(0);
            };
            let into = self.next_run;
            conn.execute(
                "INSERT INTO lookup_runs (run, level, state, entries, traces) VALUES (?1, ?2, ?3, 0, 0)",
                params![into, level + 1, BUILDING],
            )?;
            self.next_run += 1;
            self.merge = Some(Merge {
                sources,
                into,
                cursor: None,
                min_span: min_live(conn, "span_rows")?,
                min_trace: min_live(conn, "trace_rows")?,
            });
        }
        let Some(merge) = &self.merge else {
            return Ok(0);
        };
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
        let moved = tx.prepare_cached(&sql)?.execute(params![
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
        ])? as u64;
        let finished = bound.is_none();
        if finished {
            tx.execute(
                &format!(
                    "UPDATE lookup_runs SET state = {LIVE},
                        entries = (SELECT COUNT(*) FROM lookup WHERE run = ?1),
                        traces = (SELECT COUNT(*) FROM lookup WHERE run = ?1 AND kind = {KIND_TRACE}),
                        span_max = (SELECT MAX(target) FROM lookup WHERE run = ?1 AND kind = {KIND_SPAN}),
                        trace_max = (SELECT MAX(target) FROM lookup WHERE run = ?1 AND kind <> {KIND_SPAN})
                     WHERE run = ?1"
                ),
                [merge.into],
            )?;
            let mut st = tx.prepare_cached(&format!(
                "UPDATE lookup_runs SET state = {DEAD} WHERE run = ?1"
            ))?;
            for &src in &merge.sources {
                st.execute([src])?;
            }
        }
        tx.commit()?;
        if finished {
            if let Some(done) = self.merge.take() {
                let traces: i64 = conn.query_row(
                    "SELECT traces FROM lookup_runs WHERE run = ?1",
                    [done.into],
                    |r| r.get(0),
                )?;
                let bloom = run_bloom(conn, done.into, traces)?;
                self.blooms.retain(|(r, _)| !done.sources.contains(r));
                self.blooms.push((done.into, bloom));
                self.blooms.sort_by_key(|(r, _)| *r);
                self.dead.extend(done.sources);
            }
        } else if let Some(m) = &mut self.merge {
            m.cursor = bound;
        }
        Ok(moved.max(1))
    }
}
