//! Inference providers and models (`providers.inference`, `models`), Llama Stack style.

use serde::Deserialize;

/// How tokentrace talks to a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible HTTP API (`remote::openai-compatible`, `remote::vllm`,
    /// `remote::ollama`, `remote::tgi`, `remote::openai`).
    OpenAiCompatible,
    /// The embedded development provider (`inline::echo`): answers offline, deterministically.
    Echo,
}

/// The provider types accepted in `provider_type`.
pub const PROVIDER_TYPES: &str = "remote::openai-compatible, remote::vllm, remote::ollama, remote::tgi, remote::openai, inline::echo";

/// One inference provider.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceProvider {
    /// Its id, as models refer to it.
    pub provider_id: String,
    /// The type as written (`remote::vllm`, ...).
    pub provider_type: String,
    /// How it is reached.
    pub kind: ProviderKind,
    /// Base URL of its OpenAI-compatible API, ending before `/chat/completions` (remote only).
    pub url: Option<String>,
    /// Bearer token sent upstream, if any.
    pub api_key: Option<String>,
    /// Whole-request time limit in seconds (504 when exceeded).
    pub timeout_seconds: u64,
    /// Connection time limit in seconds.
    pub connect_timeout_seconds: u64,
}

impl InferenceProvider {
    /// Runs on the user's own hardware (`inline::echo`, `remote::vllm`, `remote::ollama`,
    /// `remote::tgi`): its calls cost nothing unless the run config prices them.
    pub fn self_hosted(&self) -> bool {
        matches!(
            self.provider_type.as_str(),
            "inline::echo" | "remote::vllm" | "remote::ollama" | "remote::tgi"
        )
    }
}

/// What a model is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Chat and text completion.
    #[default]
    Llm,
    /// Embeddings.
    Embedding,
}

impl ModelType {
    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llm => "llm",
            ModelType::Embedding => "embedding",
        }
    }
}

/// One model clients can name.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The id clients send as `model` / `model_id`.
    pub model_id: String,
    /// The provider serving it.
    pub provider_id: String,
    /// The provider's own name for it.
    pub provider_model_id: String,
    /// What it is for.
    pub model_type: ModelType,
    /// Free-form metadata returned by `GET /v1/models`.
    pub metadata: serde_json::Value,
    /// Its price, when the run config sets one (`models[].pricing`).
    pub pricing: Option<crate::Price>,
}

/// Providers and models.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceConfig {
    /// Providers, in config order.
    pub providers: Vec<InferenceProvider>,
    /// Models, in config order.
    pub models: Vec<Model>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    provider_id: String,
    provider_type: String,
    #[serde(default)]
    config: Option<RawProviderConfig>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProviderConfig {
    url: Option<String>,
    #[serde(alias = "api_token")]
    api_key: Option<String>,
    #[serde(default, deserialize_with = "crate::opt_number")]
    timeout_seconds: Option<u64>,
    #[serde(default, deserialize_with = "crate::opt_number")]
    connect_timeout_seconds: Option<u64>,
    // Accepted for compatibility with Llama Stack run configs; not used.
    #[serde(default)]
    #[allow(dead_code)]
    tls_verify: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    refresh_models: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    model_id: String,
    provider_id: String,
    #[serde(default)]
    provider_model_id: Option<String>,
    #[serde(default)]
    model_type: Option<ModelType>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    pricing: Option<crate::Price>,
}

type KeyError = (String, String);

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

pub(crate) fn build(
    providers: Option<Vec<RawProvider>>,
    models: Option<Vec<RawModel>>,
) -> Result<InferenceConfig, KeyError> {
    let Some(raw_providers) = providers.filter(|p| !p.is_empty()) else {
        // No providers configured: the embedded development provider and its model.
        if let Some(m) = models.as_ref().and_then(|m| m.first()) {
            return Err((
                "models[0].provider_id".into(),
                format!(
                    "provider {:?} is not configured under providers.inference",
                    m.provider_id
                ),
            ));
        }
        return Ok(InferenceConfig {
            providers: vec![InferenceProvider {
                provider_id: "echo".into(),
                provider_type: "inline::echo".into(),
                kind: ProviderKind::Echo,
                url: None,
                api_key: None,
                timeout_seconds: 60,
                connect_timeout_seconds: 5,
            }],
            models: vec![Model {
                model_id: "echo".into(),
                provider_id: "echo".into(),
                provider_model_id: "echo".into(),
                model_type: ModelType::Llm,
                metadata: serde_json::json!({}),
                pricing: None,
            }],
        });
    };
    let mut providers = Vec::new();
    for (i, p) in raw_providers.into_iter().enumerate() {
        let key = |k: &str| format!("providers.inference[{i}].{k}");
        if p.provider_id.trim().is_empty() {
            return Err((key("provider_id"), "must not be empty".into()));
        }
        if providers
            .iter()
            .any(|q: &InferenceProvider| q.provider_id == p.provider_id)
        {
            return Err((
                key("provider_id"),
                format!("duplicate provider id {:?}", p.provider_id),
            ));
        }
        let config = p.config.unwrap_or_default();
        let url = nonempty(config.url).map(|u| u.trim_end_matches('/').to_string());
        let (kind, url) = match p.provider_type.as_str() {
            "inline::echo" => (ProviderKind::Echo, None),
            "remote::openai" => (
                ProviderKind::OpenAiCompatible,
                Some(url.unwrap_or_else(|| "https://api.openai.com/v1".into())),
            ),
            "remote::ollama" => (
                ProviderKind::OpenAiCompatible,
                Some(with_v1(
                    url.unwrap_or_else(|| "http://localhost:11434".into()),
                )),
            ),
            "remote::tgi" => match url {
                Some(u) => (ProviderKind::OpenAiCompatible, Some(with_v1(u))),
                None => {
                    return Err((
                        key("config.url"),
                        "remote::tgi needs the URL of the TGI server".into(),
                    ));
                }
            },
            "remote::vllm" | "remote::openai-compatible" => match url {
                Some(u) => (ProviderKind::OpenAiCompatible, Some(u)),
                None => {
                    return Err((
                        key("config.url"),
                        format!(
                            "{} needs the base URL of its OpenAI-compatible API, e.g. http://localhost:8000/v1",
                            p.provider_type
                        ),
                    ));
                }
            },
            other => {
                return Err((
                    key("provider_type"),
                    format!("unknown provider type {other:?}; valid: {PROVIDER_TYPES}"),
                ));
            }
        };
        if let Some(u) = &url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err((
                key("config.url"),
                format!("{u:?} must be an http:// or https:// URL"),
            ));
        }
        let timeout_seconds = config.timeout_seconds.unwrap_or(60);
        let connect_timeout_seconds = config.connect_timeout_seconds.unwrap_or(5);
        if timeout_seconds == 0 || connect_timeout_seconds == 0 {
            return Err((
                key("config.timeout_seconds"),
                "timeouts must be positive".into(),
            ));
        }
        providers.push(InferenceProvider {
            provider_id: p.provider_id,
            provider_type: p.provider_type,
            kind,
            url,
            api_key: nonempty(config.api_key),
            timeout_seconds,
            connect_timeout_seconds,
        });
    }
    let mut out = Vec::new();
    for (i, m) in models.unwrap_or_default().into_iter().enumerate() {
        let key = |k: &str| format!("models[{i}].{k}");
        if m.model_id.trim().is_empty() {
            return Err((key("model_id"), "must not be empty".into()));
        }
        if out.iter().any(|o: &Model| o.model_id == m.model_id) {
            return Err((
                key("model_id"),
                format!("duplicate model id {:?}", m.model_id),
            ));
        }
        if !providers.iter().any(|p| p.provider_id == m.provider_id) {
            let known: Vec<&str> = providers.iter().map(|p| p.provider_id.as_str()).collect();
            return Err((
                key("provider_id"),
                format!(
                    "unknown provider {:?}; configured: {}",
                    m.provider_id,
                    known.join(", ")
                ),
            ));
        }
        if let Some(p) = &m.pricing {
            p.check().map_err(|e| (key("pricing"), e))?;
        }
        out.push(Model {
            provider_model_id: nonempty(m.provider_model_id).unwrap_or_else(|| m.model_id.clone()),
            model_id: m.model_id,
            provider_id: m.provider_id,
            model_type: m.model_type.unwrap_or_default(),
            metadata: m.metadata.unwrap_or_else(|| serde_json::json!({})),
            pricing: m.pricing,
        });
    }
    Ok(InferenceConfig {
        providers,
        models: out,
    })
}

fn with_v1(url: String) -> String {
    if url.ends_with("/v1") {
        url
    } else {
        format!("{url}/v1")
    }
}
