//! tokentrace's SQLite trace store: schema and migrations, one batching writer thread, read-only
//! query connections, datasets and retention.

mod backlog;
mod checkpoint;
mod datasets;
mod expiry;
mod export;
mod follow;
mod index;
mod keys;
mod lookup;
mod metrics;
mod names;
mod reader;
mod rollups;
mod rows;
mod schema;
mod sql;
mod summaries;
mod trees;
mod upgrade;
mod usage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Map, Value};
use tokentrace_model::{MetricPoint, SpanEvent, SpanRecord, Timestamp};

pub use checkpoint::CHECKPOINT_PAGES;
pub use datasets::DatasetRow;
pub use export::ExportPage;
pub use index::text_key;
pub use lookup::{find_targets, live_entries};
pub use metrics::{MAX_BUCKETS, MetricQuery};
pub use names::MAX_ATTRIBUTE_NAMES;
pub use reader::{StoreReader, Table};
pub use rows::Row;
pub use schema::SCHEMA_VERSION;
pub use sql::MAX_SQL_LEN;
pub use writer::WriterStats;

use backlog::Backlog;
use index::IndexedKeys;
use writer::{Cmd, Counters, Writer};

/// Tuning of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Records per transaction at most.
    pub batch_max_rows: usize,
    /// Longest a record waits before its transaction commits.
    pub flush_interval: Duration,
    /// Batches queued for the writer before `write` blocks.
    pub queue_capacity: usize,
    /// Bytes of rows handed to the writer and not yet committed before `write` blocks.
    pub queue_max_bytes: u64,
    /// Attribute keys (and the span fields `name`, `status`) to index for filters.
    pub indexed_attributes: Vec<String>,
    /// Idle read-only connections kept.
    pub read_connections: usize,
    /// Most spans (or dataset rows) one answer may hold: `query_spans`, `save_spans_to_dataset`
    /// and `iterrows` past it fail with [`StoreError::TooLarge`] instead of building it.
    pub max_answer_rows: usize,
    /// Longest one read query may run; past it SQLite interrupts it
    /// ([`StoreError::is_interrupted`]).
    pub query_timeout: Duration,
    /// Run first on the writer thread (the binary lowers its priority there).
    pub on_writer_start: Option<ThreadStart>,
    /// Told of every committed transaction.
    pub on_commit: Option<CommitObserver>,
    /// Told when the rows written with a mark ([`StoreWriter::write_rows_marked`]) are
    /// committed.
    pub on_mark: Option<MarkObserver>,
}

/// Told by the writer thread, once every row written with marks up to `mark` (and all rows
/// written before them) has been committed (`true`), or some of them failed to commit
/// (`false`: they are lost). Marks only grow. It runs on the writer thread: keep it cheap.
#[derive(Clone)]
pub struct MarkObserver(pub Arc<dyn Fn(u64, bool) + Send + Sync>);

impl std::fmt::Debug for MarkObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkObserver")
    }
}

/// Told by the writer thread, after each transaction it commits, how many records it held and
/// how long writing and committing took. It runs on the writer thread: keep it cheap.
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(u64, Duration) + Send + Sync>);

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

/// Code run once at the start of the writer thread.
#[derive(Clone)]
pub struct ThreadStart(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for ThreadStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadStart")
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            batch_max_rows: 5_000,
            flush_interval: Duration::from_millis(50),
            queue_capacity: 64,
            queue_max_bytes: 16 << 20,
            indexed_attributes: Vec::new(),
            read_connections: 4,
            max_answer_rows: 100_000,
            query_timeout: Duration::from_secs(10),
            on_writer_start: None,
            on_commit: None,
            on_mark: None,
        }
    }
}

/// Something to store.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A span (its `events` are ignored: events are records of their own).
    Span(SpanRecord),
    /// A log, metric or other event.
    Event(SpanEvent),
    /// A metric data point.
    Metric(MetricPoint),
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file or its directory could not be used.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The writer thread has stopped.
    #[error("the trace store is closed")]
    Closed,
    /// Stored data could not be read back, or the file is from a newer version.
    #[error("{0}")]
    Corrupt(String),
    /// Retention was asked to run while it already runs.
    #[error("retention is already running")]
    RetentionRunning,
    /// The writer thread panicked.
    #[error("the trace store's writer thread panicked")]
    WriterPanicked,
    /// An answer would hold more rows than `StoreOptions::max_answer_rows`; the message says
    /// how to narrow the request.
    #[error("{0}")]
    TooLarge(String),
    /// A query the caller got wrong (read-only SQL that writes, does not parse, or is several
    /// statements); the message says what.
    #[error("{0}")]
    BadQuery(String),
    /// A read-only handle was asked for a file that does not exist.
    #[error("no trace store at {0}")]
    Missing(PathBuf),
}

impl StoreError {
    /// Whether SQLite stopped the query: it ran past `StoreOptions::query_timeout`, or the
    /// store's reader was told to interrupt everything ([`StoreReader::interrupt_all`]).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::OperationInterrupted)
    }
}

/// An open store: owns the writer thread. Close it with [`Store::close`].
pub struct Store {
    path: PathBuf,
    writer: StoreWriter,
    reader: StoreReader,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Sends records to the writer thread; cheap to clone, safe to share.
#[derive(Clone)]
pub struct StoreWriter {
    tx: SyncSender<Cmd>,
    counters: Arc<Counters>,
    backlog: Arc<Backlog>,
    indexed: Arc<IndexedKeys>,
}

impl Store {
    /// Opens (creating if needed) the store at `path`, migrates it and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            // Only its owner may list or open what the store holds (prompts, answers).
            std::fs::create_dir_all(dir)?;
            private(dir, 0o700)?;
        }
        let new = !path.exists();
        let mut conn = Connection::open(path)?;
        if new {
            // SQLite gives the WAL and shared-memory files the database file's mode.
            private(path, 0o600)?;
        }
        // A file from a newer tokentrace is refused before WAL mode or anything else touches it.
        schema::check_version(&conn)?;
        schema::configure_writer(&conn)?;
        schema::migrate(&mut conn)?;
        let mut state = rows::WriteState::load(&conn)?;
        let indexed = Arc::new(IndexedKeys::prepare(
            &mut conn,
            &options.indexed_attributes,
            &mut state.lookup,
        )?);
        let checkpointer = checkpoint::Checkpointer::start(path, &mut conn)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(options.queue_capacity.max(1));
        let backlog = Arc::new(Backlog::new(options.queue_max_bytes));
        let writer = Writer::new(
            conn,
            options.batch_max_rows,
            options.flush_interval,
            counters.clone(),
            (options.on_commit, options.on_mark),
            (backlog.clone(), checkpointer),
            state,
        );
        let on_start = options.on_writer_start;
        let thread = std::thread::Builder::new()
            .name("tokentrace-store-writer".into())
            .spawn(move || {
                if let Some(ThreadStart(start)) = on_start {
                    start();
                }
                writer.run(rx)
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            writer: StoreWriter {
                tx,
                counters,
                backlog,
                indexed: indexed.clone(),
            },
            reader: StoreReader::new(
                path.to_path_buf(),
                options.read_connections,
                indexed,
                options.max_answer_rows,
                options.query_timeout,
            ),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A writer handle.
    pub fn writer(&self) -> StoreWriter {
        self.writer.clone()
    }

    /// A reader handle.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits everything accepted and stops the writer thread.
    pub fn close(self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&self) -> Result<(), StoreError> {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            // Queued behind every accepted batch.
            let _ = self.writer.tx.send(Cmd::Close);
            thread.join().map_err(|_| StoreError::WriterPanicked)?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("closing the trace store: {e}");
        }
    }
}

impl StoreWriter {
    fn call<T>(
        &self,
        make: impl FnOnce(SyncSender<Result<T, StoreError>>) -> Cmd,
    ) -> Result<T, StoreError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send(make(reply_tx))
            .map_err(|_| StoreError::Closed)?;
        reply_rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Encodes records (on this thread; spans with their attribute index entries) and hands
    /// them to the writer thread; blocks while its queue is full.
    pub fn write(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(|r| match r {
                Record::Span(s) => self.span_row(s),
                other => Row::from_record(other),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.write_rows(rows)
    }

    /// A span's row, with its entries in the attribute index.
    pub fn span_row(&self, span: &SpanRecord) -> Result<Row, StoreError> {
        Ok(Row::span(span)?.with_index(self.indexed.entries(span)))
    }

    /// Hands encoded rows to the writer thread; blocks while its backlog is full (in bytes, see
    /// [`StoreOptions::queue_max_bytes`], or in batches).
    pub fn write_rows(&self, rows: Vec<Row>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write_rows_marked(rows, 0)
    }

    /// Like [`StoreWriter::write_rows`], then `mark` goes to the `on_mark` observer once these
    /// rows and all written before are committed (at the next commit: within `flush_interval`).
    /// `rows` may be empty: the mark then waits only for what was written before.
    pub fn write_rows_marked(&self, rows: Vec<Row>, mark: u64) -> Result<(), StoreError> {
        let bytes = rows.iter().map(Row::size).sum();
        self.backlog.reserve(bytes);
        self.tx.send(Cmd::Write(rows, mark)).map_err(|_| {
            self.backlog.release(bytes, None);
            StoreError::Closed
        })
    }

    /// Bytes of rows handed to the writer and not yet committed.
    pub fn queued_bytes(&self) -> u64 {
        self.backlog.bytes()
    }

    /// Returns once everything written before is committed.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.call(Cmd::Flush)
    }

    /// Appends rows to a dataset of `project` (created on first use); returns its row count
    /// after. A dataset id another project's dataset has is refused ([`StoreError::BadQuery`]).
    /// The dataset is kept until `expires_at` (the latest given to any append; none: forever),
    /// then retention deletes it whole.
    pub fn append_dataset_rows(
        &self,
        dataset_id: &str,
        project: &str,
        rows: Vec<Map<String, Value>>,
        expires_at: Option<Timestamp>,
    ) -> Result<u64, StoreError> {
        self.call(|reply| Cmd::AppendRows {
            dataset_id: dataset_id.to_string(),
            project: project.to_string(),
            rows,
            expires_at: expires_at.map(Timestamp::unix_nanos),
            reply,
        })
    }

    /// Deletes rows that expired at `now`, in small transactions between writes; returns the
    /// number deleted.
    pub fn expire(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.call(|reply| Cmd::Expire { now, reply })
    }

    /// The writer's counters.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            queued_bytes: self.backlog.bytes(),
            ..self.counters.snapshot()
        }
    }
}

/// Makes a new file or directory of the store private to its owner.
#[cfg(unix)]
fn private(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(not(unix))]
fn private(_path: &Path, _mode: u32) -> Result<(), StoreError> {
    Ok(())
}

/// Creates the schema on a connection (for tools and benchmarks that own the file).
pub fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    schema::configure_writer(conn)?;
    schema::migrate(conn)
}

/// Bytes SQLite holds in this process now, and the most it has held since start: every
/// connection's page cache, prepared statements and sorts (`sqlite3_memory_used`,
/// `sqlite3_memory_highwater`).
#[allow(unsafe_code)]
pub fn sqlite_memory() -> (u64, u64) {
    // SAFETY: both calls only read SQLite's global memory counters (thread-safe in the
    // bundled, serialized build); passing 0 leaves the high-water mark as it is.
    let (used, highwater) = unsafe {
        (
            rusqlite::ffi::sqlite3_memory_used(),
            rusqlite::ffi::sqlite3_memory_highwater(0),
        )
    };
    (used.max(0) as u64, highwater.max(0) as u64)
}
