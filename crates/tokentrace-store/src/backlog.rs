//! The writer's backlog, bounded in bytes and in time: rows handed to the writer thread and not
//! yet committed. A caller whose rows would take it past the limit waits until the writer has
//! committed enough, so memory stays bounded and the wait reaches back to the pipeline (and from
//! there to the HTTP callers, as backpressure or 503) instead of rows piling up in memory. The
//! limit is the smaller of the configured bytes and what the writer commits in
//! [`BACKLOG_TIME`] at the pace it has been committing: what is acknowledged stays about that
//! far ahead of the disk whatever the machine's speed.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How much of the writer's work the backlog holds at most.
pub(crate) const BACKLOG_TIME: Duration = Duration::from_millis(100);
/// The backlog never shrinks below this (a few large rows must still fit).
const MIN_LIMIT: u64 = 1 << 20;

#[derive(Default)]
struct State {
    bytes: u64,
    closed: bool,
    /// Bytes per second the writer commits (a moving average); 0 until measured.
    pace: f64,
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

    fn limit(&self, s: &State) -> u64 {
        if s.pace <= 0.0 {
            return self.limit;
        }
        let timed = (s.pace * BACKLOG_TIME.as_secs_f64()) as u64;
        timed.clamp(MIN_LIMIT.min(self.limit), self.limit)
    }

    /// Waits for room for `n` bytes and takes it. Rows larger than the whole limit are let in
    /// when the backlog is empty; nobody waits once the writer has stopped.
    pub(crate) fn reserve(&self, n: u64) {
        let mut s = self.lock();
        while !s.closed && s.bytes > 0 && s.bytes.saturating_add(n) > self.limit(&s) {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.bytes = s.bytes.saturating_add(n);
    }

    /// `n` bytes were committed (or failed) in `took`: room for others, and the writer's pace.
    pub(crate) fn release(&self, n: u64, took: Option<Duration>) {
        let mut s = self.lock();
        s.bytes = s.bytes.saturating_sub(n);
        if let Some(t) = took.filter(|t| !t.is_zero() && n > 0) {
            let pace = n as f64 / t.as_secs_f64();
            s.pace = if s.pace <= 0.0 {
                pace
            } else {
                0.8 * s.pace + 0.2 * pace
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_follows_the_writers_pace_within_its_bounds() {
        let b = Backlog::new(16 << 20);
        assert_eq!(
            b.limit(&b.lock()),
            16 << 20,
            "the configured bound until measured"
        );
        // 40 MiB committed in a second: BACKLOG_TIME (a tenth of a second) of it.
        assert_eq!(BACKLOG_TIME, Duration::from_millis(100));
        b.reserve(40 << 20);
        b.release(40 << 20, Some(Duration::from_secs(1)));
        assert_eq!(b.limit(&b.lock()), (40 << 20) / 10);
        // A very slow writer: never below the floor.
        let slow = Backlog::new(16 << 20);
        slow.reserve(1000);
        slow.release(1000, Some(Duration::from_secs(1)));
        assert_eq!(slow.limit(&slow.lock()), MIN_LIMIT);
        // A very fast one: never above the configured bound.
        let fast = Backlog::new(4 << 20);
        fast.reserve(1 << 30);
        fast.release(1 << 30, Some(Duration::from_millis(10)));
        assert_eq!(fast.limit(&fast.lock()), 4 << 20);
    }
}
