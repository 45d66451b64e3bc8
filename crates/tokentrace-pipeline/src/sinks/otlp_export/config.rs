//! The OTLP exporters' config: the run config's `otel_exporter_otlp_endpoint`, service name and
//! thread priority, and the standard `OTEL_*` environment variables.

use std::time::Duration;

use tokentrace_config::TelemetryConfig;

use super::{ExportConfig, OtlpMetricSink, OtlpTraceSink};
use crate::sinks::BuildError;

/// Where `signal` (`traces` or `metrics`) goes: the config's endpoint unless the environment
/// names one, and the telemetry threads' nice value.
fn export_config(
    tc: &TelemetryConfig,
    signal: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> ExportConfig {
    let endpoint = tc
        .otel_exporter_otlp_endpoint
        .as_deref()
        .unwrap_or_default();
    ExportConfig {
        thread_nice: tc.thread_nice,
        ..ExportConfig::from_env(endpoint, signal, env)
    }
}

/// The `otel_trace` sink: spans to `{endpoint}/v1/traces`.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelTraceConfig {
    /// Where and how to send.
    pub export: ExportConfig,
    /// `service.name` of spans that carry none.
    pub service_name: String,
    /// Bytes of encoded spans waiting for export at most (`otel_queue_max_bytes`).
    pub queue_max_bytes: usize,
}

impl OtelTraceConfig {
    /// The settings of a run config and the environment.
    pub fn from_config(tc: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            export: export_config(tc, "traces", env),
            service_name: tc.service_name.clone(),
            queue_max_bytes: usize::try_from(tc.otel_queue_max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Starts the exporter thread.
    pub fn build(self) -> Result<OtlpTraceSink, BuildError> {
        tracing::info!("otel_trace: exporting spans to {}", self.export.url);
        OtlpTraceSink::start(self.export, &self.service_name, self.queue_max_bytes).map_err(
            |source| BuildError::Exporter {
                sink: "otel_trace",
                source,
            },
        )
    }
}

/// The `otel_metric` sink: cumulative metrics to `{endpoint}/v1/metrics` every `interval`.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelMetricConfig {
    /// Where and how to send.
    pub export: ExportConfig,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Time between exports (`OTEL_METRIC_EXPORT_INTERVAL` in ms, default 60 s).
    pub interval: Duration,
}

impl OtelMetricConfig {
    /// The settings of a run config and the environment.
    pub fn from_config(tc: &TelemetryConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let interval = env("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(Duration::from_secs(60), Duration::from_millis);
        Self {
            export: export_config(tc, "metrics", env),
            service_name: tc.service_name.clone(),
            interval,
        }
    }

    /// Starts the exporter thread.
    pub fn build(self) -> Result<OtlpMetricSink, BuildError> {
        tracing::info!(
            "otel_metric: exporting metrics to {} every {:?}",
            self.export.url,
            self.interval
        );
        OtlpMetricSink::start(self.export, &self.service_name, self.interval).map_err(|source| {
            BuildError::Exporter {
                sink: "otel_metric",
                source,
            }
        })
    }
}
