//! The sinks, one folder each. A sink that has settings has a config type built from the run
//! config (`from_config`) and a `build()` that returns the running sink, so the binary builds
//! every configured sink in one loop over [`SinkConfig`]. The prometheus sink (always on, fed
//! into the registry `/metrics` serves) and the memory sink (tests) have no settings.

pub mod console;
pub mod memory;
pub mod otlp_export;
pub mod prometheus;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use tokentrace_config::{SinkKind, TelemetryConfig};
use tokentrace_store::{Store, StoreError};

use crate::Sink;
use otlp_export::ExportStats;
use prometheus::Registry;

/// Why a sink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The SQLite file could not be opened, created or migrated.
    #[error("cannot open the trace store {}: {source}", path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// An exporter thread could not be started.
    #[error("cannot start the {sink} exporter: {source}")]
    Exporter {
        /// `otel_trace` or `otel_metric`.
        sink: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// A sink named in `telemetry.sinks`, with its settings.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// `console`.
    Console(console::ConsoleSinkConfig),
    /// `sqlite`.
    Sqlite(sqlite::SqliteSinkConfig),
    /// `otel_trace`.
    OtelTrace(otlp_export::OtelTraceConfig),
    /// `otel_metric`.
    OtelMetric(otlp_export::OtelMetricConfig),
}

/// A started sink, and what the rest of the process needs of it.
pub struct Built {
    /// The sink, for the pipeline.
    pub sink: Box<dyn Sink>,
    /// The trace store (`sqlite`): the query API reads it, shutdown closes it.
    pub store: Option<Store>,
    /// The exporter's counters by signal (`otel_*`), for `/metrics`.
    pub exporter: Option<(&'static str, Arc<ExportStats>)>,
}

impl Built {
    fn sink(sink: impl Sink + 'static) -> Self {
        Self {
            sink: Box::new(sink),
            store: None,
            exporter: None,
        }
    }
}

impl SinkConfig {
    /// The settings of sink `kind` in a run config; `env` supplies the `OTEL_*` variables.
    pub fn from_config(
        kind: SinkKind,
        tc: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        match kind {
            SinkKind::Console => Self::Console(console::ConsoleSinkConfig::from_config(tc)),
            SinkKind::Sqlite => Self::Sqlite(sqlite::SqliteSinkConfig::from_config(tc)),
            SinkKind::OtelTrace => {
                Self::OtelTrace(otlp_export::OtelTraceConfig::from_config(tc, env))
            }
            SinkKind::OtelMetric => {
                Self::OtelMetric(otlp_export::OtelMetricConfig::from_config(tc, env))
            }
        }
    }

    /// Starts the sink; `registry` (what `/metrics` serves) gets the store's commit histograms,
    /// `commits` (the pipeline's, [`crate::PipelineOptions::commits`]) the store's commits.
    pub fn build(
        self,
        registry: &Arc<Registry>,
        commits: &Arc<crate::Commits>,
    ) -> Result<Built, BuildError> {
        Ok(match self {
            Self::Console(c) => Built::sink(c.build()),
            Self::Sqlite(c) => {
                let (sink, store) = c.build(registry, commits)?;
                Built {
                    store: Some(store),
                    ..Built::sink(sink)
                }
            }
            Self::OtelTrace(c) => {
                let sink = c.build()?;
                Built {
                    exporter: Some(("traces", sink.stats())),
                    ..Built::sink(sink)
                }
            }
            Self::OtelMetric(c) => {
                let sink = c.build()?;
                Built {
                    exporter: Some(("metrics", sink.stats())),
                    ..Built::sink(sink)
                }
            }
        })
    }
}
