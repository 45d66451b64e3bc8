//! Acknowledgement after the commit (`telemetry.ack: committed`): the pipeline thread numbers
//! the messages it handles, tells the sinks the number reached before each flush, and the
//! SQLite store reports back when everything up to a number is committed. A submitter holding an
//! [`Ack`] waits until its message's number is committed.
//!
//! The same numbers measure the commit lag of every message, acknowledged after the commit or
//! not: a message accepted at most every 5 ms (`PROBE_EVERY`) is a *probe*, numbered with its
//! acceptance time; when its number is committed, the time since is its lag
//! (`tokentrace_commit_lag_seconds`), and the age of the oldest probe not yet committed
//! ([`Commits::lag`]) is how far what was acknowledged is ahead of the disk now. Ingestion is let
//! in only while that age is short (see `crate::telemetry`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokentrace_store::MarkObserver;

/// Failed ranges remembered: a waiter whose message fell in one learns it was not stored.
const FAILURES_KEPT: usize = 64;
/// A message accepted at most this often is a probe of the commit lag.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Probes waiting for their commit at most (at one per [`PROBE_EVERY`], five seconds of lag):
/// past it no new probe is taken, and the oldest keeps the lag growing.
const MAX_PROBES: usize = 1024;

/// Told the commit lag of each probe once its rows are committed (on the writer thread).
pub type LagObserver = Box<dyn Fn(Duration) + Send + Sync>;

/// How far the pipeline and the store have got, shared by the pipeline thread, the store's
/// writer thread and the submitters waiting on them.
pub struct Commits {
    /// Numbered messages handled by the pipeline thread.
    handled: AtomicU64,
    /// Messages whose rows are committed (when a store reports).
    committed: AtomicU64,
    /// A store reports commits (`sqlite` sink).
    durable: AtomicBool,
    /// Ranges `(from, to]` whose rows failed to commit.
    failed: Mutex<VecDeque<(u64, u64)>>,
    notify: tokio::sync::Notify,
    /// Probes not yet committed, oldest first: their number (0 until the pipeline thread has
    /// handled them) and acceptance time.
    probes: Mutex<VecDeque<(u64, Instant)>>,
    /// When the next probe may be taken, in nanoseconds since `epoch`.
    next_probe: AtomicU64,
    epoch: Instant,
    /// Woken when a commit may have made room for ingestion (set by the pipeline).
    room: OnceLock<Weak<crate::telemetry::Room>>,
}

impl Default for Commits {
    fn default() -> Self {
        Self {
            handled: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            durable: AtomicBool::new(false),
            failed: Mutex::new(VecDeque::new()),
            notify: tokio::sync::Notify::new(),
            probes: Mutex::new(VecDeque::new()),
            next_probe: AtomicU64::new(0),
            epoch: Instant::now(),
            room: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits")
            .field("handled", &self.handled.load(Ordering::Relaxed))
            .field("committed", &self.committed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why an acknowledgement after the commit was not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// Not committed within the time allowed (it may still be).
    #[error("accepted but not yet committed; retry after the Retry-After delay")]
    Timeout,
    /// Its rows failed to commit.
    #[error("accepted but could not be stored; retry")]
    NotStored,
}

impl Commits {
    /// A new, shared tracker.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The store's observer: it reports here, waiters wake, and the lag of every probe
    /// committed goes to `lag`.
    pub fn observer(self: &Arc<Self>, lag: LagObserver) -> MarkObserver {
        self.durable.store(true, Ordering::SeqCst);
        let this = self.clone();
        MarkObserver(Arc::new(move |mark, ok| {
            let before = this.committed.load(Ordering::SeqCst);
            if !ok && let Ok(mut f) = this.failed.lock() {
                f.push_back((before, mark));
                while f.len() > FAILURES_KEPT {
                    f.pop_front();
                }
            }
            this.committed.fetch_max(mark, Ordering::SeqCst);
            this.notify.notify_waiters();
            let now = Instant::now();
            if let Ok(mut probes) = this.probes.lock() {
                while let Some(&(n, at)) = probes.front()
                    && n != 0
                    && n <= mark
                {
                    probes.pop_front();
                    if ok {
                        lag(now.saturating_duration_since(at));
                    }
                }
            }
            if let Some(room) = this.room.get().and_then(Weak::upgrade) {
                room.wake();
            }
        }))
    }

    /// Whether a message accepted now is to be a probe: with a store, at most one per
    /// [`PROBE_EVERY`]; its acceptance time if so, already waiting among the probes (take it
    /// back with [`Commits::unprobe`] if the message is refused).
    pub(crate) fn probe_due(&self) -> Option<Instant> {
        if !self.durable.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let t = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let due = self.next_probe.load(Ordering::Relaxed);
        let next = t + PROBE_EVERY.as_nanos() as u64;
        if t < due
            || self
                .next_probe
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let mut probes = self.probes.lock().ok()?;
        if probes.len() >= MAX_PROBES {
            return None;
        }
        probes.push_back((0, now));
        Some(now)
    }

    /// The probe accepted at `at` was refused after all.
    pub(crate) fn unprobe(&self, at: Instant) {
        if let Ok(mut probes) = self.probes.lock()
            && let Some(i) = probes.iter().position(|&(_, t)| t == at)
        {
            probes.remove(i);
        }
    }

    /// The pipeline thread handled the probe accepted at `at`: it is number `n`.
    pub(crate) fn probe(&self, n: u64, at: Instant) {
        if let Ok(mut probes) = self.probes.lock()
            && let Some(p) = probes.iter_mut().find(|(_, t)| *t == at)
        {
            p.0 = n;
        }
    }

    /// How long the oldest probe not yet committed has waited (zero when every probe is
    /// committed): what was acknowledged is about that far ahead of the disk.
    pub fn lag(&self) -> Duration {
        self.probes
            .lock()
            .ok()
            .and_then(|p| p.front().map(|&(_, at)| at.elapsed()))
            .unwrap_or(Duration::ZERO)
    }

    /// Commits wake the callers waiting in `room` for ingestion room.
    pub(crate) fn wake_on_commit(&self, room: &Arc<crate::telemetry::Room>) {
        let _ = self.room.set(Arc::downgrade(room));
    }

    /// The pipeline thread handled one more numbered message; its number.
    pub(crate) fn next(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The number of the last message handled.
    pub(crate) fn handled(&self) -> u64 {
        self.handled.load(Ordering::SeqCst)
    }

    /// Wakes waiters (the pipeline thread handled messages).
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }

    fn reached(&self, ticket: u64) -> Option<Result<(), AckError>> {
        if ticket == 0 {
            return None;
        }
        if !self.durable.load(Ordering::SeqCst) {
            return Some(Ok(()));
        }
        if self.committed.load(Ordering::SeqCst) < ticket {
            return None;
        }
        let failed = self
            .failed
            .lock()
            .map(|f| f.iter().any(|&(from, to)| ticket > from && ticket <= to))
            .unwrap_or(false);
        Some(if failed {
            Err(AckError::NotStored)
        } else {
            Ok(())
        })
    }
}

/// The number a message got when the pipeline thread handled it (0 until then).
#[derive(Debug, Default)]
pub(crate) struct Ticket(AtomicU64);

impl Ticket {
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::SeqCst);
    }
}

/// A submitted message's acknowledgement: wait for it with [`Ack::committed`].
#[derive(Debug)]
pub struct Ack {
    pub(crate) ticket: Arc<Ticket>,
    pub(crate) commits: Arc<Commits>,
}

impl Ack {
    /// Waits, at most `limit`, until the message is handled and (with a store) its rows are
    /// committed.
    pub async fn committed(self, limit: Duration) -> Result<(), AckError> {
        let wait = async {
            loop {
                let mut notified = std::pin::pin!(self.commits.notify.notified());
                // Registered before the check, so a wake-up between the two is not missed.
                notified.as_mut().enable();
                if let Some(r) = self.commits.reached(self.ticket.0.load(Ordering::SeqCst)) {
                    return r;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(AckError::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_measures_from_its_acceptance_to_the_commit_of_its_number() {
        let commits = Commits::new();
        assert!(commits.probe_due().is_none(), "no probes without a store");
        let lags = Arc::new(Mutex::new(Vec::new()));
        let seen = lags.clone();
        let observe = commits.observer(Box::new(move |lag| {
            if let Ok(mut l) = seen.lock() {
                l.push(lag);
            }
        }));
        let report = |mark, ok| (observe.0)(mark, ok);
        let at = commits.probe_due().expect("the first message is a probe");
        std::thread::sleep(Duration::from_millis(20));
        // Queued, not yet handled: its wait counts already.
        assert!(commits.lag() >= Duration::from_millis(20));
        let ticket = commits.next();
        commits.probe(commits.next(), at);
        // A commit short of its number leaves it waiting.
        report(ticket, true);
        assert!(commits.lag() >= Duration::from_millis(20));
        assert!(lags.lock().unwrap().is_empty());
        report(ticket + 1, true);
        assert_eq!(commits.lag(), Duration::ZERO);
        let l = lags.lock().unwrap().clone();
        assert!(l.len() == 1 && l[0] >= Duration::from_millis(20), "{l:?}");

        // A probe whose message was refused is taken back.
        std::thread::sleep(PROBE_EVERY);
        let refused = commits.probe_due().expect("a probe again");
        commits.unprobe(refused);
        assert_eq!(commits.lag(), Duration::ZERO);
        // One whose rows failed to commit leaves no lag behind, and none measured.
        std::thread::sleep(PROBE_EVERY);
        let failed = commits.probe_due().expect("a probe again");
        commits.probe(commits.next(), failed);
        report(commits.handled(), false);
        assert_eq!(commits.lag(), Duration::ZERO);
        assert_eq!(lags.lock().unwrap().len(), 1);
    }
}
