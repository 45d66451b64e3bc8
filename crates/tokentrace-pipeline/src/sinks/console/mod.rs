//! Console sink: human-readable lines for developers. Its settings are
//! `tokentrace_config::ConsoleConfig`.

mod sink;

pub use sink::ConsoleSink;
