//! `server.auth`, in Llama Stack's shape (`provider_type`, `config`, `access_policy`): which
//! credentials the server accepts and what each may do.

use serde::Deserialize;

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The query API, datasetio, `/metrics`, the web UI's and the CLI's reads.
    TelemetryRead,
    /// The events API and the OTLP receiver.
    TelemetryWrite,
    /// The inference gateway.
    Inference,
    /// Everything, read-only SQL included.
    Admin,
}

/// The scope names of configs.
pub const SCOPE_NAMES: &str = "telemetry.read, telemetry.write, inference, admin";

impl Scope {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TelemetryRead => "telemetry.read",
            Scope::TelemetryWrite => "telemetry.write",
            Scope::Inference => "inference",
            Scope::Admin => "admin",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "telemetry.read" => Scope::TelemetryRead,
            "telemetry.write" => Scope::TelemetryWrite,
            "inference" => Scope::Inference,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }
}

/// One accepted API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Who it is (logs, spans of its requests); never the key.
    pub name: String,
    /// SHA-256 of the key; literal keys are hashed when the config is read.
    pub sha256: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
}

/// The server's authentication, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The accepted keys (`provider_type: api_key`).
    pub keys: Vec<ApiKey>,
    /// `/metrics` without a credential.
    pub public_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    provider_type: String,
    #[serde(default)]
    config: Option<RawAuthProvider>,
    #[serde(default)]
    access_policy: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    public_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthProvider {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    key: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a key, as stored.
pub fn key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

impl RawAuth {
    /// Validates `server.auth`; errors name the key at fault.
    pub(crate) fn build(self) -> Result<AuthConfig, (String, String)> {
        let err = |key: &str, msg: String| Err((format!("server.auth.{key}"), msg));
        match self.provider_type.as_str() {
            "api_key" => {}
            "oauth2_token" | "github_token" | "custom" => {
                return err(
                    "provider_type",
                    format!(
                        "{:?} is not supported yet; use api_key (config.keys)",
                        self.provider_type
                    ),
                );
            }
            other => {
                return err(
                    "provider_type",
                    format!("unknown provider {other:?}; use api_key"),
                );
            }
        }
        if self.access_policy.as_ref().is_some_and(|p| !p.is_empty()) {
            return err(
                "access_policy",
                "access policies are not supported yet: give each key its scopes".into(),
            );
        }
        let raw_keys = self.config.map(|c| c.keys).unwrap_or_default();
        if raw_keys.is_empty() {
            return err(
                "config.keys",
                "list at least one key: {name, key, scopes}".into(),
            );
        }
        let mut keys: Vec<ApiKey> = Vec::new();
        for (i, k) in raw_keys.into_iter().enumerate() {
            let at = format!("config.keys[{i}]");
            if k.name.trim().is_empty() {
                return err(&format!("{at}.name"), "must not be empty".into());
            }
            if keys.iter().any(|o| o.name == k.name) {
                return err(&format!("{at}.name"), format!("{:?} is used twice", k.name));
            }
            let sha256 = match k.key.strip_prefix("sha256:") {
                Some(h) => match hex32(h) {
                    Some(d) => d,
                    None => {
                        return err(
                            &format!("{at}.key"),
                            "sha256: must be followed by 64 hex digits (sha256sum of the key)"
                                .into(),
                        );
                    }
                },
                None if k.key.len() < 16 => {
                    return err(
                        &format!("{at}.key"),
                        "a key must be at least 16 characters (or sha256:<hex> of one); an empty ${env.*} gives an empty key".into(),
                    );
                }
                None => key_digest(&k.key),
            };
            if k.scopes.is_empty() {
                return err(
                    &format!("{at}.scopes"),
                    format!("give at least one of {SCOPE_NAMES}"),
                );
            }
            let mut scopes = Vec::new();
            for s in &k.scopes {
                match Scope::parse(s) {
                    Some(sc) => scopes.push(sc),
                    None => {
                        return err(
                            &format!("{at}.scopes"),
                            format!("unknown scope {s:?}; scopes: {SCOPE_NAMES}"),
                        );
                    }
                }
            }
            if !k.projects.is_empty() && k.projects != ["default"] {
                return err(
                    &format!("{at}.projects"),
                    "projects are not supported yet: leave projects out (everything is the project default)".into(),
                );
            }
            keys.push(ApiKey {
                name: k.name,
                sha256,
                scopes,
            });
        }
        Ok(AuthConfig {
            keys,
            public_metrics: self.public_metrics,
        })
    }
}

/// Reads and validates `server.auth` (for `ServerConfig`'s `deserialize_with`).
pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<AuthConfig>, D::Error> {
    let raw: Option<RawAuth> = Option::deserialize(d)?;
    raw.map(|r| {
        r.build().map_err(|(key, msg)| {
            let at = key.trim_start_matches("server.auth.");
            serde::de::Error::custom(format!("{at}: {msg}"))
        })
    })
    .transpose()
}
