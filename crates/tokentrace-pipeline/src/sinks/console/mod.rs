//! Console sink: human-readable lines on stderr for developers.

mod config;
pub mod group;
mod sink;
pub mod tree;

pub use config::ConsoleSinkConfig;
pub use sink::ConsoleSink;
