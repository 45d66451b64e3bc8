//! The writer's backlog, bounded in bytes: rows handed to the writer thread and not yet
//! committed. A caller whose rows would take it past the limit waits until the writer has
//! committed enough, so memory stays bounded and the wait reaches back to the pipeline (and from
//! there to the HTTP callers, as backpressure or 503) instead of rows piling up in memory.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    bytes: u64,
    closed: bool,
}

pub(crate) struct Backlog {
    state: Mutex<State>,
    room: Condvar,
    limit: u64,
}

impl Backlog {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for room for `n` bytes and takes it. Rows larger than the whole limit are let in
    /// when the backlog is empty; nobody waits once the writer has stopped.
    pub(crate) fn reserve(&self, n: u64) {
        let mut s = self.lock();
        while !s.closed && s.bytes > 0 && s.bytes.saturating_add(n) > self.limit {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.bytes = s.bytes.saturating_add(n);
    }

    /// `n` bytes were committed (or failed): room for others.
    pub(crate) fn release(&self, n: u64) {
        let mut s = self.lock();
        s.bytes = s.bytes.saturating_sub(n);
        self.room.notify_all();
    }

    /// The writer has stopped: wake every waiter, and wait no more.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }

    /// Bytes waiting now.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}
