//! WAL checkpoints on a thread of their own, so that copying the WAL back into the file never
//! holds up a commit.
//!
//! SQLite checkpoints on the committing connection by default: the commit that takes the WAL
//! past its threshold also writes every page of it into the database file and syncs it (10,000
//! pages, ~40 MB here), and every row waiting behind that commit waits for it too. Instead, the
//! writer's connection reports the WAL's size after each commit (`sqlite3_wal_hook`, which also
//! turns its automatic checkpoints off), and past [`CHECKPOINT_PAGES`] wakes the checkpointer
//! thread, which runs a PASSIVE checkpoint on its own connection while the writer goes on
//! writing. The WAL starts over from its beginning at the first commit after every frame has
//! been copied; since the writer keeps adding frames while the thread copies, the writer copies
//! the last few itself once no more than [`TAIL_PAGES`] are left (milliseconds). Should the
//! checkpointer fall behind (a starved thread, a slow disk), the writer checkpoints alone once
//! the WAL reaches [`WAL_MAX_PAGES`], so the WAL stays bounded whatever happens.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// WAL pages past which the checkpointer thread is woken; the WAL stays about this size.
pub const CHECKPOINT_PAGES: i32 = 10_000;
/// WAL pages past which the writer checkpoints on its own connection (the checkpointer fell
/// behind).
pub(crate) const WAL_MAX_PAGES: i32 = 4 * CHECKPOINT_PAGES;
/// Frames not yet copied that the writer copies itself, so the WAL can start over (a few
/// megabytes: milliseconds).
const TAIL_PAGES: i32 = 1_000;

/// The checkpointer thread; it stops when the hook is gone from the writer's connection
/// (removed, or the connection closed), and dropping this waits for it.
pub(crate) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread and installs the hook on `writer`. The thread keeps the process's
    /// priority (the writer's is lowered): it mostly waits for the disk, and were it starved its
    /// work would only come back to the writer.
    pub(crate) fn start(path: &Path, writer: &mut Connection) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(1))?;
        // A connection that has not read the file yet does not know it is in WAL mode, and its
        // checkpoints would do nothing.
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?;
        conn.pragma_update(
            None,
            "journal_size_limit",
            crate::schema::JOURNAL_SIZE_LIMIT,
        )?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let progress = Arc::new(Progress::default());
        let seen = progress.clone();
        let mut last_pages = 0;
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages < last_pages {
                // The WAL started over: what was copied of the last one says nothing of this.
                seen.generation.fetch_add(1, Ordering::Relaxed);
            }
            last_pages = pages;
            if pages < CHECKPOINT_PAGES {
                return Ok(());
            }
            if pages >= WAL_MAX_PAGES || pages - seen.copied() <= TAIL_PAGES {
                // The checkpointer fell behind, or left only the frames of the last commits:
                // copying those here lets the next commit start the WAL over.
                let _ = wal.checkpoint();
            } else {
                // Already woken, or stopping: a commit never waits here.
                let _ = wake.try_send(());
            }
            Ok(())
        }))?;
        let thread = std::thread::Builder::new()
            .name("tokentrace-store-checkpoint".into())
            .spawn(move || run(&conn, &woken, &progress))?;
        Ok(Checkpointer {
            thread: Some(thread),
        })
    }
}

fn run(conn: &Connection, woken: &Receiver<()>, progress: &Progress) {
    while woken.recv().is_ok() {
        let generation = progress.generation.load(Ordering::Relaxed);
        match conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE) {
            Ok((_, copied)) => progress.copied_in(generation, copied),
            // Busy (the writer is checkpointing itself) or failed: the next wake-up tries again.
            Err(e) => tracing::debug!("trace store: checkpoint: {e}"),
        }
    }
}

/// How far the checkpointer has copied the WAL, shared with the writer's hook.
#[derive(Default)]
struct Progress {
    /// Times the WAL started over (counted by the hook).
    generation: AtomicU32,
    /// The generation of the last checkpoint (high half) and the frames it had copied.
    copied: AtomicU64,
}

impl Progress {
    fn copied_in(&self, generation: u32, frames: i32) {
        let frames = u64::from(frames.max(0).unsigned_abs());
        self.copied
            .store(u64::from(generation) << 32 | frames, Ordering::Relaxed);
    }

    /// Frames of the current WAL already copied into the database file.
    fn copied(&self) -> i32 {
        let c = self.copied.load(Ordering::Relaxed);
        if (c >> 32) as u32 == self.generation.load(Ordering::Relaxed) {
            (c & 0xffff_ffff) as i32
        } else {
            0
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("trace store: the checkpoint thread panicked");
        }
    }
}
