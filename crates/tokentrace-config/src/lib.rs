//! tokentrace's run config: YAML in Llama Stack's `run.yaml` shape, `${env.*}` substitution, the
//! seed's environment variables, embedded defaults, and validation with one clear message.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

mod auth;
mod build;
mod deserialize;
mod effective;
mod inference;
mod policy;
mod pricing;
mod redaction;
mod substitute;

pub use auth::{
    ApiKey, AuthConfig, ClaimTarget, DEFAULT_SCOPE_CLAIMS, OAuth2Config, SCOPE_NAMES, Scope,
    key_digest,
};
pub use effective::MASK;
pub use policy::{AccessRule, Action, Condition, User, is_allowed};
pub use pricing::{EMBEDDED_PRICES_YAML, Price, PriceOrigin, PriceTable};
pub use redaction::{BUILTIN_KINDS, RedactionConfig, RedactionMode, RedactionPattern};

use build::{RawRoot, build};
use deserialize::{number, opt_number};
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
    /// What tokens cost: the embedded table under the config's `pricing:` list.
    pub pricing: PriceTable,
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
    /// Connections open at once on both ports; past it a new connection is answered 503
    /// and closed.
    #[serde(deserialize_with = "number")]
    pub max_connections: usize,
    /// Who may call (`server.auth`); `None`: every request is accepted, and only a loopback
    /// address may be listened on unless `allow_unauthenticated`.
    #[serde(deserialize_with = "auth::deserialize")]
    pub auth: Option<AuthConfig>,
    /// Listen on a non-loopback address without `auth` (say so explicitly).
    pub allow_unauthenticated: bool,
    /// `Host` header values accepted (against DNS rebinding), with or without a port; empty:
    /// the loopback names when listening on loopback, any host otherwise.
    pub allowed_hosts: Vec<String>,
    /// Cross-origin requests from web pages: off unless origins are listed.
    pub cors: CorsConfig,
    /// Serve HTTPS (both ports) with this certificate and key.
    pub tls: Option<TlsConfig>,
}

/// `server.tls`: PEM files.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `server.cors`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call tokentrace; requests from
    /// other origins are refused.
    pub allowed_origins: Vec<String>,
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
            max_connections: 1024,
            auth: None,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            cors: CorsConfig::default(),
            tls: None,
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

/// When the events API and the OTLP receiver answer 200 (`ack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// When the pipeline accepted the items (it commits them within about `flush_interval`).
    #[default]
    Accepted,
    /// Only after the items are committed to SQLite.
    Committed,
}

impl AckMode {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Accepted => "accepted",
            AckMode::Committed => "committed",
        }
    }
}

/// The attributes captured content is recorded in (`capture_content_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentFormat {
    /// The current GenAI conventions: `gen_ai.input.messages`, `gen_ai.output.messages`
    /// (structured JSON: roles, parts, tool calls).
    #[default]
    Messages,
    /// The deprecated `gen_ai.prompt` (the request's messages as sent) and `gen_ai.completion`
    /// (the answer's text), for tools that read the older shape.
    Legacy,
    /// Both.
    Both,
}

impl ContentFormat {
    /// The name used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentFormat::Messages => "messages",
            ContentFormat::Legacy => "legacy",
            ContentFormat::Both => "both",
        }
    }

    /// Records `gen_ai.input.messages` / `gen_ai.output.messages`.
    pub fn messages(self) -> bool {
        self != ContentFormat::Legacy
    }

    /// Records `gen_ai.prompt` / `gen_ai.completion`.
    pub fn legacy(self) -> bool {
        self != ContentFormat::Messages
    }
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
    /// Bytes of events buffered before callers get 503.
    pub queue_max_bytes: u64,
    /// How long a traced API request waits for room when the queue is three quarters full
    /// (0: never wait; its spans may then be dropped and counted).
    pub backpressure_ms: u64,
    /// Nice value (0 to 19) of the telemetry threads: pipeline, SQLite writer, OTLP exporters.
    pub thread_nice: i32,
    /// Console sink settings.
    pub console: ConsoleConfig,
    /// Record request and response content as span attributes.
    pub capture_content: bool,
    /// Which attributes hold the captured content.
    pub capture_content_format: ContentFormat,
    /// When ingestion answers 200.
    pub ack: AckMode,
    /// Personal data replaced before any sink sees it.
    pub redaction: RedactionConfig,
    /// Attribute keys (and the span fields `name`, `status`) the store indexes, so that filters
    /// on them are answered from an index rather than by reading every span.
    pub indexed_attributes: Vec<String>,
    /// Most spans one `query_spans` or `save_spans_to_dataset` answer (and rows one `iterrows`
    /// answer) may hold; past it the request gets a 400 saying how to narrow it.
    pub max_answer_spans: usize,
    /// Longest one store query may run before it is stopped and answered 503.
    pub query_timeout_seconds: u64,
    /// Spans open at once (started, not ended) at most; past it the oldest is stored
    /// unfinished.
    pub max_open_spans: usize,
    /// Bytes (estimated) the open spans may hold, with the events kept in them and the starts
    /// kept for late ends; past it the oldest open span is stored unfinished.
    pub max_open_bytes: u64,
    /// Bytes of rows handed to the SQLite writer and not yet committed at most (less when the
    /// writer's pace makes 100 ms of it less); past it the pipeline waits.
    pub sqlite_queue_max_bytes: u64,
    /// Bytes of encoded spans waiting for the OTLP trace exporter at most; past it spans are
    /// dropped and counted.
    pub otel_queue_max_bytes: u64,
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
            queue_max_bytes: 8 << 20,
            backpressure_ms: 1_000,
            thread_nice: 10,
            console: ConsoleConfig::default(),
            capture_content: true,
            capture_content_format: ContentFormat::Messages,
            ack: AckMode::Accepted,
            indexed_attributes: DEFAULT_INDEXED_ATTRIBUTES
                .iter()
                .map(|k| k.to_string())
                .collect(),
            max_answer_spans: 100_000,
            query_timeout_seconds: 10,
            max_open_spans: 100_000,
            max_open_bytes: 64 << 20,
            sqlite_queue_max_bytes: 16 << 20,
            otel_queue_max_bytes: 8 << 20,
            redaction: RedactionConfig::default(),
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
