//! JWTs (`server.auth.provider_type: oauth2_token`): RS256 and ES256 tokens verified against the
//! identity provider's key set (JWKS, fetched from `config.jwks.uri` or read from
//! `config.jwks.file`, again every `key_recheck_period`, and soon after a token names a key it
//! does not know), HS256 tokens against `config.hs256_secret`; `exp` (required), `nbf`, `iss`
//! and `aud` checked; scopes read from the claims `claims_mapping` names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};
use tokentrace_config::{ClaimTarget, OAuth2Config, Scope};

/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// A token naming an unknown key triggers a fetch of the key set at most this often (or every
/// `key_recheck_period`, when that is shorter).
const UNKNOWN_KEY_RECHECK: Duration = Duration::from_secs(30);

/// Who a verified token is, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// `sub`, else `token`.
    pub subject: String,
    /// The scopes its mapped claims grant.
    pub scopes: Vec<Scope>,
    /// The projects its mapped claims name (the first is written to).
    pub projects: Vec<String>,
    /// The attributes its claims mapped to `roles`, `teams`, `namespaces` give.
    pub attributes: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

/// Verifies tokens; shared by every request.
pub struct JwtVerifier {
    config: OAuth2Config,
    keys: RwLock<Keys>,
    refreshing: AtomicBool,
    last_attempt: Mutex<Option<Instant>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("jwks_uri", &self.config.jwks_uri)
            .field("jwks_file", &self.config.jwks_file)
            .finish_non_exhaustive()
    }
}

/// The values of the claims mapped to `target`, in mapping order, each once: a claim may be a
/// string of values separated by spaces or commas, or a list.
fn claim_values(
    claims: &Map<String, Value>,
    mapping: &[(String, ClaimTarget)],
    target: ClaimTarget,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (claim, _) in mapping.iter().filter(|(_, t)| *t == target) {
        let values: Vec<&str> = match claims.get(claim) {
            Some(Value::String(s)) => s
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|v| !v.is_empty())
                .collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for v in values {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn scopes_of(claims: &Map<String, Value>, mapping: &[(String, ClaimTarget)]) -> Vec<Scope> {
    claim_values(claims, mapping, ClaimTarget::Scopes)
        .iter()
        .filter_map(|v| Scope::parse(v))
        .collect()
}

/// The values of the claims mapped to attributes (`roles`, `teams`, `namespaces`), by attribute.
fn attributes_of(
    claims: &Map<String, Value>,
    mapping: &[(String, ClaimTarget)],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for (_, target) in mapping {
        if let ClaimTarget::Attribute(a) = target
            && !out.contains_key(*a)
        {
            out.insert(a.to_string(), claim_values(claims, mapping, *target));
        }
    }
    out
}

/// The projects the mapped claims name (values that are no valid project name are left out),
/// or the default project when they name none.
fn projects_of(claims: &Map<String, Value>, mapping: &[(String, ClaimTarget)]) -> Vec<String> {
    let mut out: Vec<String> = claim_values(claims, mapping, ClaimTarget::Projects)
        .into_iter()
        .filter(|p| tokentrace_model::validate_project(p).is_ok())
        .collect();
    if out.is_empty() {
        out.push(tokentrace_model::DEFAULT_PROJECT.to_string());
    }
    out
}

impl JwtVerifier {
    /// A verifier for `config`; its key set is loaded by [`JwtVerifier::refresh`].
    pub fn new(config: OAuth2Config) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            config,
            keys: RwLock::new(Keys::default()),
            refreshing: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
            client,
        })
    }

    /// Whether tokens are checked against a key set (rather than only a shared secret).
    pub fn uses_jwks(&self) -> bool {
        self.config.jwks_uri.is_some() || self.config.jwks_file.is_some()
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let text = if let Some(file) = &self.config.jwks_file {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            if bytes.len() > MAX_JWKS_BYTES {
                return Err(format!("{} is larger than 1 MiB", file.display()));
            }
            bytes
        } else if let Some(uri) = &self.config.jwks_uri {
            let mut req = self.client.get(uri);
            if let Some(t) = &self.config.jwks_token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.map_err(|e| format!("{uri}: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("{uri}: HTTP {}", res.status()));
            }
            if res
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(format!("{uri}: the key set is larger than 1 MiB"));
            }
            let body = res.bytes().await.map_err(|e| format!("{uri}: {e}"))?;
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("{uri}: the key set is larger than 1 MiB"));
            }
            body.to_vec()
        } else {
            return Ok(JwkSet { keys: Vec::new() });
        };
        serde_json::from_slice::<JwkSet>(&text).map_err(|e| format!("not a JWK set: {e}"))
    }

    /// Fetches (or reads) the key set now; on failure the keys held stay. Returns how many keys
    /// the set has.
    pub async fn refresh(&self) -> Result<usize, String> {
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let set = self.load().await?;
        let n = set.keys.len();
        if let Ok(mut keys) = self.keys.write() {
            keys.set = Some(set);
            keys.fetched = Some(Instant::now());
        }
        Ok(n)
    }

    /// Starts a refresh in the background unless one is running or one was tried less than
    /// `min_gap` ago.
    fn refresh_soon(self: &Arc<Self>, min_gap: Duration) {
        if !self.uses_jwks() {
            return;
        }
        let gap = min_gap.min(Duration::from_secs(self.config.key_recheck_period));
        let recent = self
            .last_attempt
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < gap);
        if recent || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.refreshing.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            match this.refresh().await {
                Ok(n) => tracing::info!("server.auth: key set refreshed ({n} keys)"),
                Err(e) => tracing::warn!("server.auth: cannot refresh the key set: {e}"),
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, String> {
        let keys = self
            .keys
            .read()
            .map_err(|_| "the key set is unavailable".to_string())?;
        let Some(set) = &keys.set else {
            return Err("the signing keys are not available yet".into());
        };
        // A key that names its algorithm is used for that one only; the key's type must fit
        // the token's algorithm too (an RSA key never verifies an ES256 token).
        let usable = |k: &&Jwk| {
            let kind_fits = matches!(
                (&k.algorithm, alg),
                (AlgorithmParameters::RSA(_), Algorithm::RS256)
                    | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
            );
            let alg_fits = match k.common.key_algorithm {
                None => true,
                Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
                Some(_) => false,
            };
            kind_fits && alg_fits
        };
        let jwk = match kid {
            Some(kid) => set.find(kid).filter(usable),
            None => {
                let mut candidates = set.keys.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        };
        let jwk = jwk.ok_or_else(|| match kid {
            Some(kid) => format!("the token's signing key {kid:?} is not in the key set"),
            None => "the token names no key id (kid) and the key set has several keys".into(),
        })?;
        DecodingKey::from_jwk(jwk).map_err(|e| format!("the signing key cannot be used: {e}"))
    }

    /// Verifies a token; `Err` says why it is refused (safe to tell the caller).
    pub fn verify(self: &Arc<Self>, token: &str) -> Result<Verified, String> {
        if let Ok(keys) = self.keys.read()
            && keys
                .fetched
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.config.key_recheck_period))
        {
            drop(keys);
            self.refresh_soon(UNKNOWN_KEY_RECHECK);
        }
        let header = decode_header(token).map_err(|_| "not a valid JWT".to_string())?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.config.hs256_secret {
                Some(s) => DecodingKey::from_secret(s.as_bytes()),
                None => return Err("HS256 tokens are not accepted here".into()),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                match self.key_for(header.alg, header.kid.as_deref()) {
                    Ok(k) => k,
                    Err(e) => {
                        self.refresh_soon(UNKNOWN_KEY_RECHECK);
                        return Err(e);
                    }
                }
            }
            other => {
                return Err(format!(
                    "the algorithm {other:?} is not accepted (RS256, ES256, HS256)"
                ));
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.config.leeway_seconds;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.config.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.config.issuer {
            v.set_issuer(&[i]);
        }
        let data = decode::<Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "the token has expired".to_string(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                K::InvalidAudience => "the token is not for this audience (aud)".to_string(),
                K::InvalidIssuer => "the token's issuer (iss) is not accepted".to_string(),
                K::InvalidSignature => "the token's signature does not verify".to_string(),
                K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                _ => "the token is not valid".to_string(),
            }
        })?;
        let subject = data
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("token")
            .chars()
            .take(128)
            .collect();
        Ok(Verified {
            subject,
            scopes: scopes_of(&data.claims, &self.config.claims_mapping),
            projects: projects_of(&data.claims, &self.config.claims_mapping),
            attributes: attributes_of(&data.claims, &self.config.claims_mapping),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes_come_from_the_mapped_claims_only() {
        let claims = json!({"scope": "telemetry.read openid inference", "groups": ["admin", "x"],
                            "other": "admin"});
        let map = |c: &[&str]| -> Vec<(String, ClaimTarget)> {
            c.iter()
                .map(|c| (c.to_string(), ClaimTarget::Scopes))
                .collect()
        };
        let claims = claims.as_object().unwrap();
        assert_eq!(
            scopes_of(claims, &map(&["scope"])),
            [Scope::TelemetryRead, Scope::Inference]
        );
        assert_eq!(
            scopes_of(claims, &map(&["scope", "groups"])),
            [Scope::TelemetryRead, Scope::Inference, Scope::Admin]
        );
        assert!(scopes_of(claims, &map(&["missing"])).is_empty());
    }

    #[test]
    fn projects_come_from_their_claims_and_default_without() {
        let claims = json!({"tenant": "alpha, beta", "teams": ["beta", "not valid", "gamma"]});
        let claims = claims.as_object().unwrap();
        let map = vec![
            ("tenant".to_string(), ClaimTarget::Projects),
            ("teams".to_string(), ClaimTarget::Projects),
        ];
        assert_eq!(projects_of(claims, &map), ["alpha", "beta", "gamma"]);
        assert_eq!(projects_of(claims, &[]), ["default"]);
        let with_teams = [("teams".to_string(), ClaimTarget::Attribute("teams"))];
        assert_eq!(
            attributes_of(claims, &with_teams)["teams"],
            ["beta", "not valid", "gamma"]
        );
        assert!(scopes_of(claims, &map).is_empty());
    }
}
