//! Acknowledgement after the commit (`telemetry.ack: committed`): the pipeline thread numbers
//! the messages it handles, tells the sinks the number reached before each flush, and the
//! SQLite store reports back when everything up to a number is committed. A submitter holding an
//! [`Ack`] waits until its message's number is committed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokentrace_store::MarkObserver;

/// Failed ranges remembered: a waiter whose message fell in one learns it was not stored.
const FAILURES_KEPT: usize = 64;

/// How far the pipeline and the store have got, shared by the pipeline thread, the store's
/// writer thread and the submitters waiting on them.
#[derive(Default)]
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

    /// The store's observer: it reports here, and waiters wake.
    pub fn observer(self: &Arc<Self>) -> MarkObserver {
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
        }))
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
