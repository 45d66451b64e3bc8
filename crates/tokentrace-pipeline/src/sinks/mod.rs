//! The sinks: one directory each, config apart from runtime.

pub mod console;
mod genai;
pub mod memory;
pub mod otlp;
pub mod prometheus;
pub mod sqlite;
