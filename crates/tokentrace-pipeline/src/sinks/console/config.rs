//! The console sink's config: `telemetry.console` of the run config.

use tokentrace_config::{ColorChoice, TelemetryConfig};

use super::ConsoleSink;

/// How the console sink prints.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsoleSinkConfig {
    /// Colour: always, never, or on a terminal without `NO_COLOR`.
    pub color: ColorChoice,
    /// Attribute values longer than this are cut.
    pub max_value_len: usize,
}

impl ConsoleSinkConfig {
    /// The settings of a run config.
    pub fn from_config(tc: &TelemetryConfig) -> Self {
        Self {
            color: tc.console.color,
            max_value_len: tc.console.max_value_len,
        }
    }

    /// A sink printing to stderr.
    pub fn build(self) -> ConsoleSink {
        ConsoleSink::stderr(self.color, self.max_value_len)
    }
}
