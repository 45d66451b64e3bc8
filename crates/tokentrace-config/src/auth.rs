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
    /// The projects it reads, the first one the project it writes to (`default` when the
    /// config names none).
    pub projects: Vec<String>,
    /// Attributes for `access_policy` conditions (`roles`, `teams`, …).
    pub attributes: std::collections::BTreeMap<String, Vec<String>>,
}

/// `provider_type: oauth2_token`: JWTs signed by an identity provider, verified against its
/// key set (JWKS) or a shared HS256 secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth2Config {
    /// Where the key set is fetched (`config.jwks.uri`, http or https).
    pub jwks_uri: Option<String>,
    /// A bearer token for fetching it (`config.jwks.token`).
    pub jwks_token: Option<String>,
    /// Or a file holding it (`config.jwks.file`).
    pub jwks_file: Option<std::path::PathBuf>,
    /// How often the key set is fetched (or read) again (`config.jwks.key_recheck_period`,
    /// seconds).
    pub key_recheck_period: u64,
    /// The `iss` a token must name (`config.issuer`); `None`: not checked.
    pub issuer: Option<String>,
    /// The `aud` a token must name (`config.audience`); `None`: not checked.
    pub audience: Option<String>,
    /// Secret for HS256 tokens (`config.hs256_secret`); `None`: HS256 refused.
    pub hs256_secret: Option<String>,
    /// Claim → what its values grant (`config.claims_mapping`): `scopes` or `projects`.
    pub claims_mapping: Vec<(String, ClaimTarget)>,
    /// Seconds of clock difference tolerated for `exp` and `nbf` (`config.leeway_seconds`).
    pub leeway_seconds: u64,
}

/// What a mapped claim's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimTarget {
    /// Scope names (`telemetry.read`, ...): a string of them separated by spaces or commas, or
    /// a list.
    Scopes,
    /// Project names, in the same forms; the first is the project the token writes to.
    Projects,
    /// Values of an attribute for `access_policy` conditions: `roles`, `teams` or
    /// `namespaces`, in the same forms.
    Attribute(&'static str),
}

/// The attributes claims may be mapped to besides scopes and projects (Llama Stack's).
pub const CLAIM_ATTRIBUTES: &[&str] = &["roles", "teams", "namespaces"];

impl ClaimTarget {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimTarget::Scopes => "scopes",
            ClaimTarget::Projects => "projects",
            ClaimTarget::Attribute(a) => a,
        }
    }
}

/// The server's authentication, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The accepted keys (`provider_type: api_key`).
    pub keys: Vec<ApiKey>,
    /// The accepted JWTs (`provider_type: oauth2_token`).
    pub oauth2: Option<OAuth2Config>,
    /// `/metrics` without a credential.
    pub public_metrics: bool,
    /// Who may use which model (`access_policy`); empty: everyone.
    pub access_policy: Vec<crate::AccessRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    provider_type: String,
    #[serde(default)]
    config: Option<RawAuthProvider>,
    #[serde(default)]
    access_policy: Option<Vec<crate::policy::RawRule>>,
    #[serde(default)]
    public_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthProvider {
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    jwks: Option<RawJwks>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    hs256_secret: Option<String>,
    #[serde(default)]
    claims_mapping: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "crate::opt_number")]
    leeway_seconds: Option<u64>,
    // Accepted for compatibility with Llama Stack run configs.
    #[serde(default)]
    #[allow(dead_code)]
    verify_tls: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default, deserialize_with = "crate::opt_number")]
    key_recheck_period: Option<u64>,
}

/// The claims read for scopes when `claims_mapping` is not given.
pub const DEFAULT_SCOPE_CLAIMS: &[&str] = &["scope", "scp", "scopes"];

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

impl RawAuthProvider {
    fn oauth2(self) -> Result<OAuth2Config, (String, String)> {
        let err = |key: &str, msg: String| Err((format!("server.auth.config.{key}"), msg));
        if !self.keys.is_empty() {
            return err(
                "keys",
                "oauth2_token takes no keys; use provider_type: api_key for keys".into(),
            );
        }
        let jwks = self.jwks.unwrap_or(RawJwks {
            uri: None,
            token: None,
            file: None,
            key_recheck_period: None,
        });
        let (uri, file) = (nonempty(jwks.uri), nonempty(jwks.file));
        let secret = nonempty(self.hs256_secret);
        if uri.is_some() && file.is_some() {
            return err("jwks", "give either jwks.uri or jwks.file, not both".into());
        }
        if uri.is_none() && file.is_none() && secret.is_none() {
            return err(
                "jwks",
                "give jwks.uri (the identity provider's key set), jwks.file, or hs256_secret"
                    .into(),
            );
        }
        if let Some(u) = &uri
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return err(
                "jwks.uri",
                format!("{u:?} must be an http:// or https:// URL"),
            );
        }
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            return err(
                "hs256_secret",
                "must be at least 32 bytes (an empty ${env.*} gives an empty secret)".into(),
            );
        }
        let period = jwks.key_recheck_period.unwrap_or(3600);
        if period == 0 {
            return err("jwks.key_recheck_period", "must be positive".into());
        }
        let mapping = match self.claims_mapping {
            None => DEFAULT_SCOPE_CLAIMS
                .iter()
                .map(|c| (c.to_string(), ClaimTarget::Scopes))
                .collect(),
            Some(m) => {
                let mut out = Vec::new();
                for (claim, target) in m {
                    match target.as_str() {
                        "scopes" => out.push((claim, ClaimTarget::Scopes)),
                        "projects" => out.push((claim, ClaimTarget::Projects)),
                        other => match CLAIM_ATTRIBUTES.iter().find(|a| **a == other) {
                            Some(a) => out.push((claim, ClaimTarget::Attribute(a))),
                            None => {
                                return err(
                                    &format!("claims_mapping.{claim}"),
                                    format!(
                                        "unknown target {other:?}; valid: scopes, projects, roles, teams, namespaces"
                                    ),
                                );
                            }
                        },
                    }
                }
                out
            }
        };
        Ok(OAuth2Config {
            jwks_uri: uri,
            jwks_token: nonempty(jwks.token),
            jwks_file: file.map(std::path::PathBuf::from),
            key_recheck_period: period,
            issuer: nonempty(self.issuer),
            audience: nonempty(self.audience),
            hs256_secret: secret,
            claims_mapping: mapping,
            leeway_seconds: self.leeway_seconds.unwrap_or(60),
        })
    }
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
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, Vec<String>>,
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
        let mut access_policy = Vec::new();
        for (i, rule) in self
            .access_policy
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match rule.build() {
                Ok(r) => access_policy.push(r),
                Err((at, msg)) => {
                    let at = if at.is_empty() {
                        format!("access_policy[{i}]")
                    } else {
                        format!("access_policy[{i}].{at}")
                    };
                    return err(&at, msg);
                }
            }
        }
        match self.provider_type.as_str() {
            "api_key" => {}
            "oauth2_token" => {
                let Some(config) = self.config else {
                    return err(
                        "config",
                        "oauth2_token needs config: jwks.uri (or jwks.file, or hs256_secret)"
                            .into(),
                    );
                };
                return Ok(AuthConfig {
                    keys: Vec::new(),
                    oauth2: Some(config.oauth2()?),
                    public_metrics: self.public_metrics,
                    access_policy,
                });
            }
            "github_token" | "custom" => {
                return err(
                    "provider_type",
                    format!(
                        "{:?} is not supported; use api_key (config.keys) or oauth2_token (JWTs)",
                        self.provider_type
                    ),
                );
            }
            other => {
                return err(
                    "provider_type",
                    format!("unknown provider {other:?}; use api_key or oauth2_token"),
                );
            }
        }
        if let Some(c) = &self.config
            && (c.jwks.is_some() || c.hs256_secret.is_some() || c.claims_mapping.is_some())
        {
            return err(
                "config",
                "jwks, hs256_secret and claims_mapping belong to provider_type: oauth2_token"
                    .into(),
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
            for p in &k.projects {
                if let Err(msg) = tokentrace_model::validate_project(p) {
                    return err(&format!("{at}.projects"), msg);
                }
            }
            let mut projects: Vec<String> = Vec::new();
            for p in k.projects {
                if !projects.contains(&p) {
                    projects.push(p);
                }
            }
            if projects.is_empty() {
                projects.push(tokentrace_model::DEFAULT_PROJECT.to_string());
            }
            for name in k.attributes.keys() {
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    return err(
                        &format!("{at}.attributes"),
                        format!("{name:?} is not an attribute name (one word)"),
                    );
                }
            }
            keys.push(ApiKey {
                name: k.name,
                sha256,
                scopes,
                projects,
                attributes: k.attributes,
            });
        }
        Ok(AuthConfig {
            keys,
            oauth2: None,
            public_metrics: self.public_metrics,
            access_policy,
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
