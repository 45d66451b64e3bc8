//! The sqlite sink's config: where the store lives and how its writer runs.

use std::path::PathBuf;
use std::sync::Arc;

use tokentrace_config::TelemetryConfig;
use tokentrace_store::{Store, StoreOptions, ThreadStart};

use super::SqliteSink;
use crate::sinks::BuildError;
use crate::sinks::prometheus::{Registry, commit_observer, lag_observer};
use crate::thread;

/// The trace store the sink writes.
#[derive(Clone, Debug)]
pub struct SqliteSinkConfig {
    /// The SQLite file (created with its directory when missing).
    pub path: PathBuf,
    /// Nice value of the store's writer thread.
    pub thread_nice: i32,
    /// Attribute keys (and span fields) the store indexes for filters.
    pub indexed_attributes: Vec<String>,
    /// Most spans (or dataset rows) one query answer may hold.
    pub max_answer_spans: usize,
    /// Longest one read query may run.
    pub query_timeout: std::time::Duration,
    /// Bytes of rows handed to the writer and not yet committed at most.
    pub queue_max_bytes: u64,
}

impl SqliteSinkConfig {
    /// The settings of a run config.
    pub fn from_config(tc: &TelemetryConfig) -> Self {
        Self {
            path: tc.sqlite_db_path.clone(),
            thread_nice: tc.thread_nice,
            indexed_attributes: tc.indexed_attributes.clone(),
            max_answer_spans: tc.max_answer_spans,
            query_timeout: std::time::Duration::from_secs(tc.query_timeout_seconds),
            queue_max_bytes: tc.sqlite_queue_max_bytes,
        }
    }

    /// Opens (and migrates) the store and starts its writer thread; every commit is recorded in
    /// `registry` (its time, and the commit lag) and reported to `commits` (acknowledgements
    /// after the commit, the lag the pipeline's admission follows). Returns the
    /// sink and the store, which the query API reads and shutdown closes.
    pub fn build(
        self,
        registry: &Arc<Registry>,
        commits: &Arc<crate::Commits>,
    ) -> Result<(SqliteSink, Store), BuildError> {
        let nice = self.thread_nice;
        let options = StoreOptions {
            on_writer_start: Some(ThreadStart(Arc::new(move || thread::set_nice(nice)))),
            on_commit: Some(commit_observer(registry.clone())),
            on_mark: Some(commits.observer(lag_observer(registry.clone()))),
            indexed_attributes: self.indexed_attributes,
            max_answer_rows: self.max_answer_spans,
            query_timeout: self.query_timeout,
            queue_max_bytes: self.queue_max_bytes,
            ..StoreOptions::default()
        };
        let store = Store::open(&self.path, options).map_err(|source| BuildError::Store {
            path: self.path.clone(),
            source,
        })?;
        Ok((SqliteSink::new(store.writer()), store))
    }
}
