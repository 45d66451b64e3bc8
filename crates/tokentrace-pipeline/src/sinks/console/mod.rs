//! Console sink: human-readable lines on stderr for developers.

mod config;
mod sink;

pub use config::ConsoleSinkConfig;
pub use sink::ConsoleSink;
