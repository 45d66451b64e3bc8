//! SQLite sink: the trace store. The sink encodes rows on the pipeline thread; the store's
//! writer thread commits them.

mod config;
mod sink;

pub use config::SqliteSinkConfig;
pub use sink::SqliteSink;
