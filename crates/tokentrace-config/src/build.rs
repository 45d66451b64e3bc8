//! From the parsed YAML to a [`RunConfig`]: the telemetry provider's keys, the seed's
//! environment variables where a key is absent, the defaults, and validation that names the key
//! at fault.

use std::path::PathBuf;

use serde::Deserialize;

use crate::deserialize::{SinkList, opt_number};
use crate::{ConsoleConfig, RunConfig, ServerConfig, SinkKind, TelemetryConfig, inference};

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => match dirs::home_dir() {
            Some(home) => home.join(rest.trim_start_matches('/')),
            None => PathBuf::from(p),
        },
        _ => PathBuf::from(p),
    }
}

#[derive(Deserialize)]
pub(crate) struct RawRoot {
    #[serde(default)]
    server: Option<ServerConfig>,
    #[serde(default)]
    providers: Option<RawProviders>,
    #[serde(default)]
    models: Option<Vec<inference::RawModel>>,
    #[serde(default)]
    pricing: Option<Vec<crate::pricing::RawPrice>>,
}

#[derive(Deserialize)]
struct RawProviders {
    #[serde(default)]
    telemetry: Option<Vec<RawTelemetryProvider>>,
    #[serde(default)]
    inference: Option<Vec<inference::RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetryProvider {
    provider_id: String,
    provider_type: String,
    #[serde(default)]
    config: Option<RawTelemetryConfig>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetryConfig {
    service_name: Option<String>,
    sinks: Option<SinkList>,
    otel_exporter_otlp_endpoint: Option<String>,
    sqlite_db_path: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    default_ttl_seconds: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    span_timeout_seconds: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    retention_interval_seconds: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    queue_capacity: Option<usize>,
    #[serde(default, deserialize_with = "opt_number")]
    queue_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    backpressure_ms: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    thread_nice: Option<i32>,
    console: Option<ConsoleConfig>,
    capture_content: Option<bool>,
    capture_content_format: Option<crate::ContentFormat>,
    ack: Option<crate::AckMode>,
    redaction: Option<crate::RedactionConfig>,
    indexed_attributes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_number")]
    max_answer_spans: Option<usize>,
    #[serde(default, deserialize_with = "opt_number")]
    max_open_spans: Option<usize>,
    #[serde(default, deserialize_with = "opt_number")]
    max_open_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    sqlite_queue_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    otel_queue_max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    query_timeout_seconds: Option<u64>,
}

const TELEMETRY: &str = "providers.telemetry[0].config";

pub(crate) fn build(
    raw: RawRoot,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunConfig, (String, String)> {
    let server = raw.server.unwrap_or_default();
    let d = TelemetryConfig::default();
    if server.max_body_bytes < 1024 {
        return Err((
            "server.max_body_bytes".into(),
            format!("must be at least 1024, got {}", server.max_body_bytes),
        ));
    }
    if server.otlp_max_body_bytes < 1024 {
        return Err((
            "server.otlp_max_body_bytes".into(),
            format!("must be at least 1024, got {}", server.otlp_max_body_bytes),
        ));
    }
    if server.max_connections == 0 {
        return Err(("server.max_connections".into(), "must be at least 1".into()));
    }
    if server.request_timeout_seconds == 0 {
        return Err((
            "server.request_timeout_seconds".into(),
            "must be positive".into(),
        ));
    }
    let (telemetry_providers, inference_providers) = match raw.providers {
        Some(p) => (p.telemetry, p.inference),
        None => (None, None),
    };
    let inference = inference::build(inference_providers, raw.models)?;
    let pricing = crate::PriceTable::with_config(raw.pricing.as_deref().unwrap_or_default())?;
    let providers = telemetry_providers.unwrap_or_default();
    if providers.len() > 1 {
        return Err((
            "providers.telemetry".into(),
            format!(
                "exactly one telemetry provider is supported, got {}",
                providers.len()
            ),
        ));
    }
    let (provider_id, config) = match providers.into_iter().next() {
        Some(p) => {
            if p.provider_type != "inline::meta-reference" {
                return Err((
                    "providers.telemetry[0].provider_type".into(),
                    format!(
                        "unknown provider type {:?}; valid: inline::meta-reference",
                        p.provider_type
                    ),
                ));
            }
            (p.provider_id, p.config.unwrap_or_default())
        }
        None => (d.provider_id.clone(), RawTelemetryConfig::default()),
    };
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    let service_name = config
        .service_name
        .or_else(|| env_nonempty("OTEL_SERVICE_NAME"))
        .filter(|s| !s.is_empty())
        .unwrap_or(d.service_name);
    let sinks = match config.sinks {
        Some(SinkList(list)) => list,
        None => match env_nonempty("TELEMETRY_SINKS") {
            Some(v) => SinkKind::parse_list(&v).map_err(|m| ("TELEMETRY_SINKS".to_string(), m))?,
            None => d.sinks,
        },
    };
    let endpoint = config
        .otel_exporter_otlp_endpoint
        .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty());
    if let Some(e) = &endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err((
            format!("{TELEMETRY}.otel_exporter_otlp_endpoint"),
            format!("{e:?} must be an http:// or https:// URL, e.g. http://localhost:4318"),
        ));
    }
    for sink in &sinks {
        if matches!(sink, SinkKind::OtelTrace | SinkKind::OtelMetric) && endpoint.is_none() {
            return Err((
                format!("{TELEMETRY}.otel_exporter_otlp_endpoint"),
                format!(
                    "telemetry sink {} needs otel_exporter_otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT), e.g. http://localhost:4318",
                    sink.as_str()
                ),
            ));
        }
    }
    let sqlite_db_path = match config.sqlite_db_path.filter(|p| !p.trim().is_empty()) {
        Some(p) => expand_home(p.trim()),
        None => match env_nonempty("SQLITE_STORE_DIR") {
            Some(dir) => expand_home(dir.trim()).join("trace_store.db"),
            None => d.sqlite_db_path,
        },
    };
    let default_ttl_seconds = config.default_ttl_seconds.unwrap_or(d.default_ttl_seconds);
    if default_ttl_seconds <= 0 {
        return Err((
            format!("{TELEMETRY}.default_ttl_seconds"),
            format!("must be positive, got {default_ttl_seconds}"),
        ));
    }
    let thread_nice = config.thread_nice.unwrap_or(d.thread_nice);
    if !(0..=19).contains(&thread_nice) {
        return Err((
            format!("{TELEMETRY}.thread_nice"),
            format!("must be between 0 and 19, got {thread_nice}"),
        ));
    }
    let indexed_attributes = config.indexed_attributes.unwrap_or(d.indexed_attributes);
    for (i, key) in indexed_attributes.iter().enumerate() {
        let bad = if key.is_empty() {
            Some("must not be empty")
        } else if key.len() > 256 {
            Some("is longer than 256 bytes")
        } else if key.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            Some("must not contain quotes, backslashes or control characters")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err((
                format!("{TELEMETRY}.indexed_attributes[{i}]"),
                format!("{key:?} is not a valid attribute key: it {why}"),
            ));
        }
    }
    let ack = config.ack.unwrap_or(d.ack);
    if ack == crate::AckMode::Committed && !sinks.contains(&SinkKind::Sqlite) {
        return Err((
            format!("{TELEMETRY}.ack"),
            "committed needs the sqlite sink (it is what commits); add sqlite to sinks or use accepted".into(),
        ));
    }
    let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64, (String, String)> {
        match v.unwrap_or(default) {
            0 => Err((format!("{TELEMETRY}.{key}"), "must be positive".to_string())),
            n => Ok(n),
        }
    };
    // A byte bound smaller than one large item would refuse it whatever the load.
    let at_least_1_mib =
        |key: &str, v: Option<u64>, default: u64| -> Result<u64, (String, String)> {
            match v.unwrap_or(default) {
                n if n < 1 << 20 => Err((
                    format!("{TELEMETRY}.{key}"),
                    format!("must be at least 1048576 (1 MiB), got {n}"),
                )),
                n => Ok(n),
            }
        };
    Ok(RunConfig {
        server,
        telemetry: TelemetryConfig {
            provider_id,
            service_name,
            sinks,
            otel_exporter_otlp_endpoint: endpoint,
            sqlite_db_path,
            default_ttl_seconds,
            span_timeout_seconds: positive(
                "span_timeout_seconds",
                config.span_timeout_seconds,
                d.span_timeout_seconds,
            )?,
            retention_interval_seconds: positive(
                "retention_interval_seconds",
                config.retention_interval_seconds,
                d.retention_interval_seconds,
            )?,
            queue_capacity: positive(
                "queue_capacity",
                config.queue_capacity.map(|q| q as u64),
                d.queue_capacity as u64,
            )? as usize,
            queue_max_bytes: positive(
                "queue_max_bytes",
                config.queue_max_bytes,
                d.queue_max_bytes,
            )?,
            backpressure_ms: config.backpressure_ms.unwrap_or(d.backpressure_ms),
            thread_nice,
            console: config.console.unwrap_or(d.console),
            capture_content: config.capture_content.unwrap_or(d.capture_content),
            capture_content_format: config
                .capture_content_format
                .unwrap_or(d.capture_content_format),
            ack,
            redaction: {
                let r = config.redaction.unwrap_or_default();
                r.check()?;
                r
            },
            indexed_attributes,
            max_answer_spans: positive(
                "max_answer_spans",
                config.max_answer_spans.map(|m| m as u64),
                d.max_answer_spans as u64,
            )? as usize,
            query_timeout_seconds: positive(
                "query_timeout_seconds",
                config.query_timeout_seconds,
                d.query_timeout_seconds,
            )?,
            max_open_spans: positive(
                "max_open_spans",
                config.max_open_spans.map(|m| m as u64),
                d.max_open_spans as u64,
            )? as usize,
            max_open_bytes: at_least_1_mib(
                "max_open_bytes",
                config.max_open_bytes,
                d.max_open_bytes,
            )?,
            sqlite_queue_max_bytes: at_least_1_mib(
                "sqlite_queue_max_bytes",
                config.sqlite_queue_max_bytes,
                d.sqlite_queue_max_bytes,
            )?,
            otel_queue_max_bytes: at_least_1_mib(
                "otel_queue_max_bytes",
                config.otel_queue_max_bytes,
                d.otel_queue_max_bytes,
            )?,
        },
        inference,
        pricing,
    })
}
