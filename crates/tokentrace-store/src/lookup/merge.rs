//! Merging runs: one level's live runs into one run of the next, a round per transaction, and
//! deleting the runs merged.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet, VecDeque};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params};

use super::bloom::Bloom;
use super::{
    BUILDING, Blocks, DEAD, Entry, KIND_SPAN, KIND_TRACE, LIVE, Lookup, block, cmp_entry, min_live,
};
use crate::StoreError;

/// Blocks a source reads at once.
const READ_BLOCKS: i64 = 4;

/// One source of a merge: its blocks are read in order, a few at a time, and their entries
/// wait here to be merged.
struct Source {
    run: i64,
    /// The last block read: (kind, key, id), its place in the run's order.
    after: Option<(i64, SqlValue, i64)>,
    waiting: VecDeque<Entry>,
    /// Every block has been read.
    read: bool,
}

impl Source {
    /// The next entry, reading blocks when none waits; `None` at the end of the run.
    fn next(&mut self, conn: &Connection) -> Result<Option<Entry>, StoreError> {
        if self.waiting.is_empty() && !self.read {
            let mut st = conn.prepare_cached(
                "SELECT id, kind, key, entries FROM lookup_blocks
                 WHERE run = ?1 AND (kind, key, id) > (?2, ?3, ?4)
                 ORDER BY kind, key, id LIMIT ?5",
            )?;
            let (kind, key, id) =
                self.after
                    .clone()
                    .unwrap_or((i64::MIN, SqlValue::Null, i64::MIN));
            let mut rows = st.query(params![self.run, kind, key, id, READ_BLOCKS])?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                n += 1;
                if let rusqlite::types::ValueRef::Blob(b) = r.get_ref(3)? {
                    self.waiting.extend(block::decode(b)?);
                }
                self.after = Some((r.get(1)?, r.get(2)?, r.get(0)?));
            }
            self.read = n < READ_BLOCKS;
        }
        Ok(self.waiting.pop_front())
    }
}

/// A source's next entry, ordered for the heap (then by source, for a total order).
struct Head(Entry, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_entry(&self.0, &other.0).then(self.1.cmp(&other.1))
    }
}

/// A merge in progress: its sources' next entries, the output's block being written, and the
/// output's entry count, trace ids (in `bloom`) and largest targets as the rounds write them.
/// It lives in the writer's memory only: a merge that a restart or a failed round interrupts
/// is abandoned (`Lookup::load`).
pub(super) struct Merge {
    /// The level of the sources (`into` is of the next).
    pub(super) level: i64,
    pub(super) into: i64,
    readers: Vec<Source>,
    heads: BinaryHeap<Reverse<Head>>,
    started: bool,
    out: Blocks,
    last: Option<Entry>,
    /// Entries pointing below these ids point at deleted rows and are dropped.
    min_span: i64,
    min_trace: i64,
    /// The attribute keys registered when the merge started; entries of others are dropped.
    keys: HashSet<i64>,
    entries: i64,
    traces: i64,
    span_max: Option<i64>,
    trace_max: Option<i64>,
    bloom: Bloom,
}

impl Merge {
    /// Whether an entry is kept: its row is still there, its key still registered.
    fn keeps(&self, e: &Entry) -> bool {
        let min = if e.kind == KIND_SPAN {
            self.min_span
        } else {
            self.min_trace
        };
        e.target >= min && (e.kind < 16 || self.keys.contains(&(e.kind - 16)))
    }

    /// Writes an entry into the output (once, however many sources hold it).
    fn write(&mut self, conn: &Connection, e: Entry) -> Result<(), StoreError> {
        if self.last.as_ref() == Some(&e) || !self.keeps(&e) {
            return Ok(());
        }
        self.out.push(conn, &e)?;
        self.entries += 1;
        let max = if e.kind == KIND_SPAN {
            &mut self.span_max
        } else {
            &mut self.trace_max
        };
        *max = Some(max.map_or(e.target, |m| m.max(e.target)));
        if e.kind == KIND_TRACE {
            self.traces += 1;
            if let SqlValue::Blob(b) = &e.key {
                self.bloom.insert(b);
            }
        }
        self.last = Some(e);
        Ok(())
    }

    /// Moves up to `budget` entries from the sources into the output; whether the sources
    /// are exhausted.
    fn advance(&mut self, conn: &Connection, budget: i64) -> Result<(i64, bool), StoreError> {
        if !self.started {
            for i in 0..self.readers.len() {
                if let Some(e) = self.readers[i].next(conn)? {
                    self.heads.push(Reverse(Head(e, i)));
                }
            }
            self.started = true;
        }
        let mut moved = 0;
        while moved < budget {
            let Some(Reverse(Head(e, i))) = self.heads.pop() else {
                self.out.finish(conn)?;
                return Ok((moved, true));
            };
            if let Some(next) = self.readers[i].next(conn)? {
                self.heads.push(Reverse(Head(next, i)));
            }
            self.write(conn, e)?;
            moved += 1;
        }
        Ok((moved, false))
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
                [serde_json::Value::from(sources.as_slice()).to_string()],
                |r| r.get(0),
            )?;
            let keys = conn
                .prepare_cached("SELECT id FROM attribute_keys")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            self.merges.push(Merge {
                level,
                readers: sources
                    .iter()
                    .map(|&run| Source {
                        run,
                        after: None,
                        waiting: VecDeque::new(),
                        read: false,
                    })
                    .collect(),
                into,
                heads: BinaryHeap::new(),
                started: false,
                out: Blocks::new(into),
                last: None,
                min_span: min_live(conn, "span_rows")?,
                min_trace: min_live(conn, "trace_rows")?,
                keys,
                entries: 0,
                traces: 0,
                span_max: None,
                trace_max: None,
                bloom: Bloom::with_capacity(traces.max(0) as u64),
            });
        }
        Ok(())
    }

    /// Deletes up to about `budget` entries (in whole blocks) of the first dead run, and the
    /// run once nothing of it is left.
    fn delete_dead(&mut self, conn: &mut Connection, budget: i64) -> Result<u64, StoreError> {
        let Some(&run) = self.dead.first() else {
            return Ok(0);
        };
        let blocks = (budget / 256).max(1);
        let tx = conn.transaction()?;
        let n = tx
            .prepare_cached(
                "DELETE FROM lookup_blocks WHERE id IN (SELECT id FROM lookup_blocks WHERE run = ?1 LIMIT ?2)",
            )?
            .execute(params![run, blocks])?;
        let gone = (n as i64) < blocks;
        if gone {
            tx.execute("DELETE FROM lookup_runs WHERE run = ?1", [run])?;
        }
        tx.commit()?;
        if gone {
            self.dead.remove(0);
        }
        Ok((n as u64 * 256).max(1))
    }

    /// One round of the merge `at` of `self.merges`: about `budget` entries moved in one
    /// transaction; the last round makes the output live and the sources dead in the same
    /// transaction.
    fn merge_round(
        &mut self,
        conn: &mut Connection,
        at: usize,
        budget: i64,
    ) -> Result<u64, StoreError> {
        let tx = conn.transaction()?;
        let merge = &mut self.merges[at];
        let (moved, finished) = merge.advance(&tx, budget)?;
        if finished {
            tx.execute(
                &format!(
                    "UPDATE lookup_runs SET state = {LIVE}, entries = ?2, traces = ?3, span_max = ?4,
                        trace_max = ?5
                     WHERE run = ?1"
                ),
                params![
                    merge.into,
                    merge.entries,
                    merge.traces,
                    merge.span_max,
                    merge.trace_max
                ],
            )?;
            let mut st = tx.prepare_cached(&format!(
                "UPDATE lookup_runs SET state = {DEAD} WHERE run = ?1"
            ))?;
            for src in &merge.readers {
                st.execute([src.run])?;
            }
        }
        tx.commit()?;
        if finished {
            let merge = self.merges.remove(at);
            let sources: Vec<i64> = merge.readers.iter().map(|s| s.run).collect();
            self.blooms.retain(|(r, _)| !sources.contains(r));
            self.blooms.push((merge.into, merge.bloom));
            self.blooms.sort_by_key(|(r, _)| *r);
            self.dead.extend(sources);
            self.dead.sort_unstable();
        }
        Ok(moved.max(1) as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::MAX_LIVE_RUNS;
    use super::*;

    /// The entries of each live run, in its order.
    fn live_runs(conn: &Connection) -> Vec<(i64, Vec<Entry>)> {
        let runs: Vec<i64> = conn
            .prepare(&format!("SELECT run FROM lookup_runs WHERE state = {LIVE}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        runs.into_iter()
            .map(|run| {
                let blocks: Vec<Vec<u8>> = conn
                    .prepare(
                        "SELECT entries FROM lookup_blocks WHERE run = ?1 ORDER BY kind, key, id",
                    )
                    .unwrap()
                    .query_map([run], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let entries = blocks
                    .iter()
                    .flat_map(|b| block::decode(b).unwrap())
                    .collect();
                (run, entries)
            })
            .collect()
    }

    /// The live entries of a kind, as (key, target), in order.
    fn live(conn: &Connection, kind: i64) -> Vec<(Vec<u8>, i64)> {
        let mut out: Vec<(Vec<u8>, i64)> = live_runs(conn)
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .filter(|e| e.kind == kind)
            .map(|e| match e.key {
                SqlValue::Blob(b) => (b, e.target),
                other => panic!("{other:?}"),
            })
            .collect();
        out.sort();
        out
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
        // The figures kept round by round are those of the runs' entries, each run in order.
        for (run, entries) in live_runs(&conn) {
            let (n, traces, span_max, trace_max): (i64, i64, Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT entries, traces, span_max, trace_max FROM lookup_runs WHERE run = ?1",
                    [run],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .unwrap();
            assert_eq!(n, entries.len() as i64, "run {run}");
            let count = entries.iter().filter(|e| e.kind == KIND_TRACE).count();
            assert_eq!(traces, count as i64, "run {run}");
            assert_eq!(
                super::super::maxima(&entries),
                (span_max, trace_max),
                "run {run}"
            );
            assert!(
                entries
                    .windows(2)
                    .all(|w| cmp_entry(&w[0], &w[1]) == Ordering::Less)
            );
        }
        // Each run's Bloom filter holds its trace ids.
        let held = (1..=traces).all(|t| {
            let h = super::super::bloom::hashes(&t.to_be_bytes().repeat(2));
            lookup.blooms.iter().any(|(_, b)| b.may_hold(h))
        });
        assert!(held);
    }
}
