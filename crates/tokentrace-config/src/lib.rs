//! tokentrace's run config: YAML in Llama Stack's `run.yaml` shape, `${env.*}` substitution, the
//! seed's environment variables, embedded defaults, and validation with one clear message.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

mod deserialize;
mod inference;
mod substitute;

use deserialize::{SinkList, number, opt_number};
pub use substitute::substitute_env;
use substitute::substitute_tree;

pub use inference::{
    InferenceConfig, InferenceProvider, Model, ModelType, PROVIDER_TYPES, ProviderKind,
};

/// The embedded default run config, used when no file is given.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

/// Looks a variable up in the process environment (the `env` argument of [`load`]).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The whole run config.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Telemetry provider settings.
    pub telemetry: TelemetryConfig,
    /// Inference providers and models.
    pub inference: InferenceConfig,
}

/// HTTP server settings (`server:`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    #[serde(deserialize_with = "number")]
    pub port: u16,
    /// Largest request body accepted, in bytes.
    #[serde(deserialize_with = "number")]
    pub max_body_bytes: usize,
    /// Requests not answered within this time get 504.
    #[serde(deserialize_with = "number")]
    pub request_timeout_seconds: u64,
    /// Also trace calls of the telemetry query API and datasetio.
    pub trace_telemetry_api: bool,
    /// A second port serving only the OTLP/HTTP receiver (e.g. 4318); off when unset.
    #[serde(deserialize_with = "opt_number")]
    pub otlp_port: Option<u16>,
    /// Largest OTLP request body accepted, compressed and decompressed, in bytes.
    #[serde(deserialize_with = "number")]
    pub otlp_max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8321,
            max_body_bytes: 1 << 20,
            request_timeout_seconds: 30,
            trace_telemetry_api: false,
            otlp_port: None,
            otlp_max_body_bytes: 16 << 20,
        }
    }
}

/// A telemetry sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinkKind {
    /// Human-readable lines on stderr.
    Console,
    /// The SQLite trace store.
    Sqlite,
    /// OTLP/HTTP traces.
    OtelTrace,
    /// OTLP/HTTP metrics.
    OtelMetric,
}

const SINK_NAMES: &str = "console, sqlite, otel_trace, otel_metric";

impl SinkKind {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Console => "console",
            SinkKind::Sqlite => "sqlite",
            SinkKind::OtelTrace => "otel_trace",
            SinkKind::OtelMetric => "otel_metric",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "console" => SinkKind::Console,
            "sqlite" => SinkKind::Sqlite,
            "otel_trace" => SinkKind::OtelTrace,
            "otel_metric" => SinkKind::OtelMetric,
            other => return Err(format!("unknown sink {other:?}; valid sinks: {SINK_NAMES}")),
        })
    }

    /// Parses a list given as a comma-separated string (`TELEMETRY_SINKS`).
    pub fn parse_list(list: &str) -> Result<Vec<SinkKind>, String> {
        let mut sinks = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let sink = Self::parse(name)?;
            if !sinks.contains(&sink) {
                sinks.push(sink);
            }
        }
        Ok(sinks)
    }
}

/// When the console sink uses colour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Console sink settings (`config.console`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Colour choice.
    pub color: ColorChoice,
    /// Attribute values longer than this are cut.
    #[serde(deserialize_with = "number")]
    pub max_value_len: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            color: ColorChoice::Auto,
            max_value_len: 120,
        }
    }
}

/// The telemetry provider's settings (`providers.telemetry[0].config`), after defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// The provider's id.
    pub provider_id: String,
    /// `service.name` of what tokentrace emits.
    pub service_name: String,
    /// Enabled sinks, in order.
    pub sinks: Vec<SinkKind>,
    /// OTLP/HTTP endpoint of a collector.
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The SQLite file.
    pub sqlite_db_path: PathBuf,
    /// Retention of events sent without `ttl_seconds`.
    pub default_ttl_seconds: i64,
    /// Spans not ended after this long are stored unfinished.
    pub span_timeout_seconds: u64,
    /// How often expired rows are deleted.
    pub retention_interval_seconds: u64,
    /// Events buffered before callers get 503.
    pub queue_capacity: usize,
    /// How long a traced API request waits for room when the queue is three quarters full
    /// (0: never wait; its spans may then be dropped and counted).
    pub backpressure_ms: u64,
    /// Nice value (0 to 19) of the telemetry threads: pipeline, SQLite writer, OTLP exporters.
    pub thread_nice: i32,
    /// Console sink settings.
    pub console: ConsoleConfig,
    /// Record request and response content as span attributes.
    pub capture_content: bool,
    /// Attribute keys (and the span fields `name`, `status`) the store indexes, so that filters
    /// on them are answered from an index rather than by reading every span.
    pub indexed_attributes: Vec<String>,
}

/// The keys people filter by, indexed unless `indexed_attributes` says otherwise.
pub const DEFAULT_INDEXED_ATTRIBUTES: &[&str] = &[
    "model_id",
    "provider_id",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.provider.name",
    "service.name",
    "user.id",
    "user_id",
    "enduser.id",
    "session.id",
    "session_id",
    "gen_ai.conversation.id",
    "error.type",
    "http.response.status_code",
    "name",
    "status",
];

impl Default for TelemetryConfig {
    /// The defaults of every telemetry setting: the one place they are stated. A run config
    /// that leaves a key out gets the value given here.
    fn default() -> Self {
        Self {
            provider_id: "meta-reference".into(),
            service_name: "tokentrace".into(),
            sinks: vec![SinkKind::Console, SinkKind::Sqlite],
            otel_exporter_otlp_endpoint: None,
            sqlite_db_path: default_data_dir().join("trace_store.db"),
            default_ttl_seconds: 604_800,
            span_timeout_seconds: 3600,
            retention_interval_seconds: 60,
            queue_capacity: 65_536,
            backpressure_ms: 1_000,
            thread_nice: 10,
            console: ConsoleConfig::default(),
            capture_content: true,
            indexed_attributes: DEFAULT_INDEXED_ATTRIBUTES
                .iter()
                .map(|k| k.to_string())
                .collect(),
        }
    }
}

/// Why a config was refused. Each message is one line naming the key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is malformed.
    #[error("config {origin}: invalid YAML: {message}")]
    Yaml {
        /// File or description.
        origin: String,
        /// Parser message (with line and column).
        message: String,
    },
    /// A key has a bad value.
    #[error("config {origin}: `{key}`: {message}")]
    Invalid {
        /// File or description.
        origin: String,
        /// Dotted path of the key.
        key: String,
        /// What is wrong and what is valid.
        message: String,
    },
}

/// Loads the run config from `path`, or the embedded defaults when `None`.
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunConfig, ConfigError> {
    match path {
        None => load_from_str(DEFAULT_CONFIG_YAML, "(embedded defaults)", env),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.display().to_string(),
                source,
            })?;
            load_from_str(&text, &p.display().to_string(), env)
        }
    }
}

/// Loads a run config from YAML text; `origin` names it in messages.
pub fn load_from_str(
    yaml: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunConfig, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: origin.to_string(),
        key: key.to_string(),
        message,
    };
    let mut tree: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(yaml).map_err(|e| ConfigError::Yaml {
            origin: origin.to_string(),
            message: e.to_string().replace('\n', " "),
        })?
    };
    if tree.is_null() {
        tree = Value::Object(Default::default());
    }
    substitute_tree(&mut tree, String::new(), env)
        .map_err(|(key, message)| invalid(&key, message))?;
    let raw: RawRoot = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        invalid(&key, e.into_inner().to_string())
    })?;
    build(raw, env).map_err(|(key, message)| invalid(&key, message))
}

/// The user's data directory for tokentrace (`$XDG_DATA_HOME/tokentrace` on Linux).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("tokentrace")
}

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
struct RawRoot {
    #[serde(default)]
    server: Option<ServerConfig>,
    #[serde(default)]
    providers: Option<RawProviders>,
    #[serde(default)]
    models: Option<Vec<inference::RawModel>>,
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
    backpressure_ms: Option<u64>,
    #[serde(default, deserialize_with = "opt_number")]
    thread_nice: Option<i32>,
    console: Option<ConsoleConfig>,
    capture_content: Option<bool>,
    indexed_attributes: Option<Vec<String>>,
}

const TELEMETRY: &str = "providers.telemetry[0].config";

fn build(
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
    let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64, (String, String)> {
        match v.unwrap_or(default) {
            0 => Err((format!("{TELEMETRY}.{key}"), "must be positive".to_string())),
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
            backpressure_ms: config.backpressure_ms.unwrap_or(d.backpressure_ms),
            thread_nice,
            console: config.console.unwrap_or(d.console),
            capture_content: config.capture_content.unwrap_or(d.capture_content),
            indexed_attributes,
        },
        inference,
    })
}
