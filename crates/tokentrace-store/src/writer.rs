//! The single writer thread: batches records into transactions, appends dataset rows, deletes
//! expired rows in small chunks between writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use serde_json::{Map, Value};
use tokentrace_model::Timestamp;

use crate::backlog::Backlog;
use crate::checkpoint::Checkpointer;
use crate::datasets::{append_rows, expire_dataset};
use crate::index::expire_values;
use crate::lookup::MAX_LIVE_RUNS;
use crate::rows::{Row, WriteState, write_rows};
use crate::{CommitObserver, MarkObserver, StoreError};

/// Rows deleted per table in the first retention transaction; later ones adapt so that each
/// holds the writer for about `EXPIRE_STEP_TARGET`.
const EXPIRE_CHUNK: i64 = 500;
/// How long one retention (or vacuum) step may hold the writer.
const EXPIRE_STEP_TARGET: Duration = Duration::from_millis(50);
/// Free pages returned to the file system per vacuum step.
const VACUUM_PAGES: i64 = 256;
/// Entries of the sorted runs handled by upkeep per entry written (each entry is rewritten
/// once per level).
const UPKEEP_PER_ENTRY: u64 = 4;
/// Upkeep owed at most; beyond, writes go first and the rest waits for a quiet moment.
const UPKEEP_BUDGET_MAX: u64 = 1 << 20;
/// Entries handled by one upkeep transaction at most.
const UPKEEP_STEP: u64 = 20_000;
/// Shortest time between two commits made because nothing else waited to be written: a steady
/// trickle of rows is committed a hundred times a second at most, not once a row.
const COMMIT_GAP: Duration = Duration::from_millis(10);

pub(crate) enum Cmd {
    /// Rows, and the mark to report once they are committed (0: none).
    Write(Vec<Row>, u64),
    Flush(SyncSender<Result<(), StoreError>>),
    AppendRows {
        dataset_id: String,
        project: String,
        rows: Vec<Map<String, Value>>,
        expires_at: Option<i64>,
        reply: SyncSender<Result<u64, StoreError>>,
    },
    Expire {
        now: Timestamp,
        reply: SyncSender<Result<u64, StoreError>>,
    },
    Close,
}

/// Counters the writer keeps about itself.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub spans: AtomicU64,
    pub max_batch_rows: AtomicU64,
    pub rows_expired: AtomicU64,
    pub write_errors: AtomicU64,
    /// Nanoseconds the writer spent writing batches, merging index runs, and on retention.
    pub write_ns: AtomicU64,
    pub merge_ns: AtomicU64,
    pub retention_ns: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed with records.
    pub batches_committed: u64,
    /// Records committed.
    pub rows_committed: u64,
    /// Spans among them.
    pub spans_committed: u64,
    /// Largest transaction so far, in records.
    pub max_batch_rows: u64,
    /// Rows deleted by retention.
    pub rows_expired: u64,
    /// Batches that failed to commit (logged; their records are lost).
    pub write_errors: u64,
    /// Bytes of rows handed to the writer and not yet committed (now).
    pub queued_bytes: u64,
    /// What the writer thread has been busy with, in nanoseconds: writing batches (their
    /// transactions and commits), merging and deleting index runs, retention. Their sum
    /// against the time elapsed is how saturated it is.
    pub write_ns: u64,
    pub merge_ns: u64,
    pub retention_ns: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WriterStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            batches_committed: l(&self.batches),
            rows_committed: l(&self.rows),
            spans_committed: l(&self.spans),
            max_batch_rows: l(&self.max_batch_rows),
            rows_expired: l(&self.rows_expired),
            write_errors: l(&self.write_errors),
            queued_bytes: 0,
            write_ns: l(&self.write_ns),
            merge_ns: l(&self.merge_ns),
            retention_ns: l(&self.retention_ns),
        }
    }
}

struct Expiry {
    now: i64,
    deleted: u64,
    /// Rows per table per step, adapted to the step's time.
    chunk: i64,
    /// Deleting is done; free pages are being given back (files with `auto_vacuum`).
    vacuuming: bool,
    /// The next range of `attribute_values` to clean, and whether all have been visited.
    values_at: Option<(i64, rusqlite::types::Value)>,
    values_done: bool,
    /// Every due range of metric points has been read to its end in this run.
    points_done: bool,
    /// Steps taken, those over the target, and the longest, for the log line at the end.
    steps: u32,
    over: u32,
    longest: Duration,
    reply: SyncSender<Result<u64, StoreError>>,
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    pub counters: Arc<Counters>,
    on_commit: Option<CommitObserver>,
    on_mark: Option<MarkObserver>,
    /// The highest mark written, and the highest reported.
    mark_written: u64,
    mark_reported: u64,
    backlog: Arc<Backlog>,
    state: WriteState,
    /// Entries of the sorted runs the upkeep may still handle before the next write.
    upkeep_budget: u64,
    /// Upkeep may have work: set by writes, cleared when a step finds nothing to do.
    upkeep_pending: bool,
    pending: Vec<Row>,
    first_pending: Option<Instant>,
    last_commit: Instant,
    expiry: Option<Expiry>,
    checkpointer: Option<Checkpointer>,
}

impl Writer {
    pub fn new(
        conn: Connection,
        batch_max_rows: usize,
        flush_interval: Duration,
        counters: Arc<Counters>,
        (on_commit, on_mark): (Option<CommitObserver>, Option<MarkObserver>),
        (backlog, checkpointer): (Arc<Backlog>, Checkpointer),
        state: WriteState,
    ) -> Self {
        Self {
            conn,
            batch_max_rows: batch_max_rows.max(1),
            flush_interval,
            counters,
            on_commit,
            on_mark,
            mark_written: 0,
            mark_reported: 0,
            backlog,
            state,
            upkeep_budget: 0,
            upkeep_pending: true,
            pending: Vec::new(),
            first_pending: None,
            last_commit: Instant::now(),
            expiry: None,
            checkpointer: Some(checkpointer),
        }
    }

    pub fn run(mut self, rx: Receiver<Cmd>) {
        self.serve(rx);
        // Whatever happens to the thread, nobody waits for room any more.
        self.backlog.close();
        // Dropping the hook stops the checkpointer; it is joined before the store counts as
        // closed.
        let none: Option<fn(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()>> =
            None;
        if let Err(e) = self.conn.wal_hook(none) {
            tracing::error!("trace store: removing the WAL hook: {e}");
        }
        drop(self.checkpointer.take());
    }

    fn serve(&mut self, rx: Receiver<Cmd>) {
        loop {
            let busy = self.expiry.is_some() || self.upkeep_pending;
            let cmd = if busy {
                match rx.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => Some(Cmd::Close),
                }
            } else {
                let wait = match self.first_pending {
                    Some(t) => self
                        .flush_interval
                        .saturating_sub(t.elapsed())
                        .min(COMMIT_GAP.saturating_sub(self.last_commit.elapsed())),
                    None => Duration::from_secs(3600),
                };
                match rx.recv_timeout(wait) {
                    Ok(cmd) => Some(cmd),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Cmd::Close),
                }
            };
            match cmd {
                Some(Cmd::Write(records, mark)) => {
                    self.mark_written = self.mark_written.max(mark);
                    if records.is_empty() && self.pending.is_empty() {
                        // Everything before is committed already.
                        self.report_mark(true);
                    } else {
                        if self.first_pending.is_none() {
                            self.first_pending = Some(Instant::now());
                        }
                        self.pending.extend(records);
                        if self.pending.len() >= self.batch_max_rows {
                            let _ = self.commit_pending(); // failures are logged and counted
                        }
                    }
                }
                Some(Cmd::Flush(reply)) => {
                    let r = self.commit_pending();
                    let _ = reply.send(r);
                }
                Some(Cmd::AppendRows {
                    dataset_id,
                    project,
                    rows,
                    expires_at,
                    reply,
                }) => {
                    let _ = self.commit_pending(); // failures are logged and counted
                    let r = append_rows(&mut self.conn, &dataset_id, &project, rows, expires_at);
                    let _ = reply.send(r);
                }
                Some(Cmd::Expire { now, reply }) => match &self.expiry {
                    Some(_) => {
                        let _ = reply.send(Err(StoreError::RetentionRunning));
                    }
                    None => {
                        self.expiry = Some(Expiry {
                            now: now.unix_nanos(),
                            deleted: 0,
                            chunk: EXPIRE_CHUNK,
                            vacuuming: false,
                            values_at: None,
                            values_done: false,
                            points_done: false,
                            steps: 0,
                            over: 0,
                            longest: Duration::ZERO,
                            reply,
                        });
                    }
                },
                Some(Cmd::Close) => {
                    let _ = self.commit_pending(); // failures are logged and counted
                    if let Some(e) = self.expiry.take() {
                        let _ = e.reply.send(Err(StoreError::Closed));
                    }
                    return;
                }
                None => {
                    if self.commit_due(true) {
                        let _ = self.commit_pending(); // failures are logged and counted
                    }
                    self.upkeep(true);
                }
            }
            if self.commit_due(false) {
                let _ = self.commit_pending(); // failures are logged and counted
            }
            self.upkeep(false);
            self.expire_step();
        }
    }

    /// Whether what is pending is to be committed now: it has waited `flush_interval`, or
    /// nothing else is waiting to be written (`idle`) and the last commit is `COMMIT_GAP` ago.
    /// So under a light load a row waits little more than its transaction, and under a heavy
    /// one the rows that came while a transaction ran share the next.
    fn commit_due(&self, idle: bool) -> bool {
        self.first_pending.is_some_and(|t| {
            t.elapsed() >= self.flush_interval || (idle && self.last_commit.elapsed() >= COMMIT_GAP)
        })
    }

    /// Commits what is pending, in transactions of at most `batch_max_rows` rows. Errors are
    /// logged and counted; the first is returned.
    fn commit_pending(&mut self) -> Result<(), StoreError> {
        self.first_pending = None;
        self.last_commit = Instant::now();
        let mut result = Ok(());
        let mut rest = std::mem::take(&mut self.pending);
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.batch_max_rows));
            let started = Instant::now();
            let r = self.commit(&rest);
            self.backlog
                .release(rest.iter().map(Row::size).sum(), Some(started.elapsed()));
            self.catch_up();
            if result.is_ok() {
                result = r;
            }
            rest = tail;
        }
        self.report_mark(result.is_ok());
        result
    }

    /// Tells the mark observer that the rows written up to the highest mark are committed
    /// (or that some failed).
    fn report_mark(&mut self, ok: bool) {
        if self.mark_written > self.mark_reported {
            self.mark_reported = self.mark_written;
            if let Some(observe) = &self.on_mark {
                (observe.0)(self.mark_reported, ok);
            }
        }
    }

    /// Commits `records` in one transaction.
    fn commit(&mut self, records: &[Row]) -> Result<(), StoreError> {
        let n = records.len() as u64;
        let spans = records.iter().filter(|r| r.is_span()).count() as u64;
        let started = Instant::now();
        let written = self
            .conn
            .transaction()
            .map_err(StoreError::from)
            .and_then(|tx| {
                let entries = write_rows(&tx, records, &mut self.state)?;
                tx.commit()?;
                Ok(entries)
            });
        busy(&self.counters.write_ns, started);
        match written {
            Ok(entries) => {
                let c = &self.counters;
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.rows.fetch_add(n, Ordering::Relaxed);
                c.spans.fetch_add(spans, Ordering::Relaxed);
                c.max_batch_rows.fetch_max(n, Ordering::Relaxed);
                if let Some(observe) = &self.on_commit {
                    (observe.0)(n, started.elapsed());
                }
                self.upkeep_budget = self
                    .upkeep_budget
                    .saturating_add(UPKEEP_PER_ENTRY * entries)
                    .min(UPKEEP_BUDGET_MAX);
                self.upkeep_pending = true;
                Ok(())
            }
            Err(e) => {
                if let Err(reload) = self.state.rolled_back(&self.conn) {
                    tracing::error!("trace store: reloading the writer's state: {reload}");
                }
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("trace store: a batch of {n} records failed to commit: {e}");
                Err(e)
            }
        }
    }

    /// Merges before writing again while more than `MAX_LIVE_RUNS` runs are live (writes
    /// outpaced merging): lookups stay a bounded number of seeks, and the wait reaches the
    /// senders as backpressure, like a full backlog.
    fn catch_up(&mut self) {
        while self.state.lookup.live_runs() > MAX_LIVE_RUNS {
            if self.merge_step(UPKEEP_STEP).unwrap_or(0) == 0 {
                break;
            }
        }
    }

    /// One transaction of run upkeep; the entries it handled (0: nothing to do), or `None`
    /// when it failed (logged; the writer's state is reloaded from the file).
    fn merge_step(&mut self, budget: u64) -> Option<u64> {
        let started = Instant::now();
        let step = self.state.lookup.step(&mut self.conn, budget);
        busy(&self.counters.merge_ns, started);
        match step {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!("trace store: merging index runs: {e}");
                if let Err(reload) = self.state.rolled_back(&self.conn) {
                    tracing::error!("trace store: reloading the writer's state: {reload}");
                }
                None
            }
        }
    }

    /// Upkeep of the sorted runs (merging, deleting merged runs) between writes, one short
    /// transaction per call: after writes, about `UPKEEP_PER_ENTRY` times the entries they
    /// added, so that merges keep pace with writes under any load; when no write waits
    /// (`idle`), until nothing is left.
    fn upkeep(&mut self, idle: bool) {
        if !self.upkeep_pending || (!idle && self.upkeep_budget == 0) {
            return;
        }
        let budget = if idle {
            UPKEEP_STEP
        } else {
            self.upkeep_budget.min(UPKEEP_STEP)
        };
        match self.merge_step(budget) {
            Some(n) if n > 0 => self.upkeep_budget = self.upkeep_budget.saturating_sub(n),
            // Nothing left, or it failed: wait for the next write.
            _ => {
                self.upkeep_budget = 0;
                self.upkeep_pending = false;
            }
        }
    }

    /// One step of retention between writes: deletes a chunk of expired rows, sized so that a
    /// step takes about `EXPIRE_STEP_TARGET`; when nothing is left, gives free pages back to the
    /// file system a few at a time (files created with `auto_vacuum = INCREMENTAL`; older files
    /// reuse their free pages for new rows instead); then answers.
    fn expire_step(&mut self) {
        let Some(expiry) = &mut self.expiry else {
            return;
        };
        let started = Instant::now();
        let step = if expiry.vacuuming {
            vacuum_step(&self.conn).map(|more| (0, more))
        } else {
            // Index entries of deleted traces go too (not counted as rows).
            expire_chunk(
                &mut self.conn,
                expiry.now,
                expiry.chunk,
                &mut expiry.points_done,
            )
            .and_then(|rows| {
                // A run that deleted nothing left no index entries to clean.
                if rows == 0 && expiry.deleted == 0 {
                    expiry.values_done = true;
                }
                if !expiry.values_done {
                    let (_, done) = expire_values(&self.conn, &mut expiry.values_at, expiry.chunk)?;
                    expiry.values_done = done;
                }
                // More to do while rows expire or ranges remain to be visited.
                Ok((rows, rows > 0 || !expiry.values_done))
            })
        };
        let took = started.elapsed();
        busy(&self.counters.retention_ns, started);
        expiry.steps += 1;
        expiry.over += u32::from(took > EXPIRE_STEP_TARGET);
        expiry.longest = expiry.longest.max(took);
        match step {
            Ok((n, more)) => {
                expiry.deleted += n;
                self.counters.rows_expired.fetch_add(n, Ordering::Relaxed);
                if !expiry.vacuuming {
                    expiry.chunk = if took > EXPIRE_STEP_TARGET {
                        (expiry.chunk / 2).max(50)
                    } else if took < EXPIRE_STEP_TARGET / 2 {
                        (expiry.chunk * 2).min(50_000)
                    } else {
                        expiry.chunk
                    };
                    if !more {
                        expiry.vacuuming = true;
                        // Runs whose every entry points at a deleted row go as a whole.
                        match self.state.lookup.drop_expired(&self.conn) {
                            Ok(()) => self.upkeep_pending = true,
                            Err(e) => {
                                tracing::error!("trace store: dropping expired index runs: {e}")
                            }
                        }
                    }
                } else if !more && let Some(done) = self.expiry.take() {
                    if done.deleted > 0 {
                        tracing::info!(
                            "retention: deleted {} expired rows in {} steps between writes ({} over {} ms, the longest {:.1} ms)",
                            done.deleted,
                            done.steps,
                            done.over,
                            EXPIRE_STEP_TARGET.as_millis(),
                            done.longest.as_secs_f64() * 1000.0
                        );
                    }
                    let _ = done.reply.send(Ok(done.deleted));
                }
            }
            Err(e) => {
                if let Some(done) = self.expiry.take() {
                    let _ = done.reply.send(Err(e));
                }
            }
        }
    }
}

/// Adds the time since `started` to a busy counter.
fn busy(counter: &AtomicU64, started: Instant) {
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
}

/// Gives up to `VACUUM_PAGES` free pages back; whether free pages remain.
fn vacuum_step(conn: &Connection) -> Result<bool, StoreError> {
    let auto: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if auto != 2 {
        return Ok(false);
    }
    conn.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(free > 0)
}

/// Deletes up to `chunk` expired rows from each table (spans: of expired traces; metric points
/// by the ranges of their hours of expiry, until `points_done`, with the rollups they leave
/// empty) in one short transaction.
fn expire_chunk(
    conn: &mut Connection,
    now: i64,
    chunk: i64,
    points_done: &mut bool,
) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let mut deleted = 0;
    // A trace's spans go together, once the last of them has expired (the trace row's
    // expiry), up to a chunk of them a step; the trace row goes when none is left. So
    // retention never leaves part of a trace, and spans need no expiry index of their own.
    deleted += tx
        .prepare_cached(
            "DELETE FROM span_rows WHERE rowid IN (SELECT s.rowid FROM trace_rows t
                 JOIN span_rows s ON s.trace = t.id WHERE t.expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, chunk])? as u64;
    deleted += tx
        .prepare_cached(
            "DELETE FROM event_rows WHERE rowid IN (SELECT rowid FROM event_rows WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, chunk])? as u64;
    let mut points_done_now = *points_done;
    if !points_done_now {
        let (points, done) = crate::expiry::expire_points(&tx, now, chunk)?;
        deleted += points;
        points_done_now = done;
    }
    deleted += tx
        .prepare_cached(
            "DELETE FROM trace_rows WHERE rowid IN (SELECT t.rowid FROM trace_rows t
                 WHERE t.expires_at <= ?1 AND NOT EXISTS (SELECT 1 FROM span_rows s WHERE s.trace = t.id)
                 LIMIT ?2)",
        )?
        .execute(params![now, chunk])? as u64;
    deleted += expire_dataset(&tx, now, chunk)?;
    tx.commit()?;
    *points_done = points_done_now;
    Ok(deleted)
}
