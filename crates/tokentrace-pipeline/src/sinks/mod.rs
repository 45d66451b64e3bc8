//! The sinks: one directory each, config apart from runtime.

pub mod console;
pub mod memory;
pub mod prometheus;
pub mod sqlite;
