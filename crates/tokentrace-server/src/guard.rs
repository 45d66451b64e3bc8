//! What every request passes before it is routed (or traced): the `Host` header must be one
//! this server answers to (DNS rebinding), a browser's cross-origin request is refused, a JSON
//! route must be sent JSON (a web page can post `text/plain` cross-site without a preflight),
//! and, with `server.auth`, the caller's key must be known and hold the route's scope. Refusals
//! come in the route family's error format: `{"detail"}`, OpenAI's `{"error"}`, an OTLP
//! `Status`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokentrace_config::{AuthConfig, Scope, ServerConfig, key_digest};
use tokentrace_otlp::{Encoding, status_body};

/// The cookie the web UI keeps a key in (HttpOnly, SameSite=Strict).
pub const KEY_COOKIE: &str = "tokentrace_key";

/// The guard's settings.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Accepted keys; `None`: no authentication.
    pub auth: Option<Arc<AuthConfig>>,
    /// Verifies JWTs when `auth` is `oauth2_token`.
    pub jwt: Option<Arc<crate::jwt::JwtVerifier>>,
    /// Accepted `Host` names (lowercase, without port); empty: any.
    pub hosts: Vec<String>,
    /// Origins whose pages may call (`server.cors.allowed_origins`).
    pub origins: Vec<String>,
    /// Served over TLS: the UI's cookie is `Secure`.
    pub tls: bool,
    /// `server.auth.access_policy`.
    pub policy: Arc<[tokentrace_config::AccessRule]>,
}

/// Whether `host` (a listen address or a host name) is reachable only from this machine.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Guard {
    /// The guard a server config asks for: its keys, and its `allowed_hosts` (by default the
    /// loopback names when it listens on loopback, any host otherwise).
    pub fn from_config(server: &ServerConfig) -> Self {
        let hosts = if !server.allowed_hosts.is_empty() {
            server
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect()
        } else if is_loopback(&server.host) {
            ["localhost", "127.0.0.1", "[::1]", "::1"]
                .iter()
                .map(|h| h.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let jwt = server
            .auth
            .as_ref()
            .and_then(|a| a.oauth2.clone())
            .map(crate::jwt::JwtVerifier::new);
        Self {
            auth: server.auth.clone().map(Arc::new),
            jwt,
            hosts,
            origins: server
                .cors
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            tls: server.tls.is_some(),
            policy: server.auth.as_ref().map_or_else(
                || Arc::from(Vec::new()),
                |a| Arc::from(a.access_policy.clone()),
            ),
        }
    }
}

/// The error format of a route family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Detail,
    OpenAi,
    Otlp,
}

fn is_otlp(path: &str) -> bool {
    matches!(path, "/v1/traces" | "/v1/metrics" | "/v1/logs")
}

fn is_gateway(path: &str) -> bool {
    path.starts_with("/v1/openai/")
        || path.starts_with("/v1/inference/")
        || matches!(
            path,
            "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/models"
        )
}

fn family(path: &str) -> Family {
    if is_otlp(path) {
        Family::Otlp
    } else if is_gateway(path) {
        Family::OpenAi
    } else {
        Family::Detail
    }
}

/// What a request needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Need {
    /// Nothing: health, the UI's shell and assets (they hold no data), the UI's login.
    Open,
    /// A key with this scope (or `admin`).
    Scope(Scope),
}

fn need(path: &str, public_metrics: bool) -> Need {
    use Scope::*;
    if path == "/v1/health" || crate::ui::is_ui_path(path) {
        return Need::Open;
    }
    if path == "/metrics" {
        return if public_metrics {
            Need::Open
        } else {
            Need::Scope(TelemetryRead)
        };
    }
    if is_otlp(path) || path.ends_with("/telemetry/events") {
        return Need::Scope(TelemetryWrite);
    }
    if is_gateway(path) {
        return Need::Scope(Inference);
    }
    if path == "/v1/tokentrace/sql" {
        // Reads every table, whatever a reader's other limits.
        return Need::Scope(Admin);
    }
    Need::Scope(TelemetryRead)
}

fn refuse(
    fam: Family,
    status: StatusCode,
    code: &str,
    message: &str,
    headers: &HeaderMap,
) -> Response {
    let mut r = match fam {
        Family::Detail => (status, axum::Json(json!({ "detail": message }))).into_response(),
        Family::OpenAi => {
            let kind = if status == StatusCode::UNAUTHORIZED {
                "authentication_error"
            } else {
                "invalid_request_error"
            };
            let body =
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
            (status, axum::Json(body)).into_response()
        }
        Family::Otlp => {
            let enc = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(Encoding::from_content_type)
                .unwrap_or(Encoding::Protobuf);
            // google.rpc.Code: UNAUTHENTICATED 16, PERMISSION_DENIED 7, INVALID_ARGUMENT 3.
            let rpc = match status {
                StatusCode::UNAUTHORIZED => 16,
                StatusCode::FORBIDDEN => 7,
                _ => 3,
            };
            let mut r = (status, status_body(enc, rpc, message)).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(enc.content_type()),
            );
            r
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if code == "invalid_api_key" {
            "Bearer realm=\"tokentrace\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"tokentrace\""
        };
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    r
}

/// The credential of a request: `Authorization: Bearer …`, else the UI's cookie.
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim()
                .to_string(),
        );
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{KEY_COOKIE}="))
                .map(str::to_string)
        })
}

/// Who a request's credential is, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, or the token's subject.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Its projects; the first is the one it writes to.
    pub projects: Vec<String>,
    /// Its attributes for `access_policy` conditions: `scopes` and `projects`, and what the
    /// key's `attributes` or the token's mapped claims give.
    pub attributes: std::collections::BTreeMap<String, Vec<String>>,
    /// A JWT (else an API key).
    pub token: bool,
}

/// The header choosing the project a request writes to (and narrowing what it reads to that
/// project): one of the credential's projects, any for `admin` or without `server.auth`.
pub const PROJECT_HEADER: &str = "x-tokentrace-project";

/// What a request may reach: which projects it reads, which one it writes to, and which
/// models it may call (`access_policy`). The guard puts it in the request's extensions, and
/// handlers take it as an extractor (everything, written to `default`, when the guard did not
/// run: without `server.auth`).
#[derive(Clone, Debug)]
pub struct Access {
    /// The projects it reads; `None`: every project.
    pub reads: Option<Arc<[String]>>,
    /// The project what it sends is stored in.
    pub writes: Arc<str>,
    /// Who it is (`None`: no authentication, or an open route).
    pub who: Option<Arc<Principal>>,
    /// The rules `who` is held to.
    pub policy: Arc<[tokentrace_config::AccessRule]>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            reads: None,
            writes: Arc::from(tokentrace_model::DEFAULT_PROJECT),
            who: None,
            policy: Arc::from(Vec::new()),
        }
    }
}

impl Access {
    /// What `who` (`None`: no authentication) may read and where it writes, with the project
    /// `chosen` in [`PROJECT_HEADER`]. `Err`: why not, safe to tell the caller.
    pub fn of(who: Option<&Principal>, chosen: Option<&str>) -> Result<Self, String> {
        let everything = who.is_none_or(|p| p.may_all_projects());
        if let Some(c) = chosen {
            tokentrace_model::validate_project(c)?;
            if !everything && !who.is_some_and(|p| p.projects.iter().any(|p| p == c)) {
                let shown = who.map(Principal::shown).unwrap_or_default();
                return Err(format!("{shown} has no access to the project {c:?}"));
            }
            return Ok(Self {
                reads: Some(Arc::from(vec![c.to_string()])),
                writes: Arc::from(c),
                ..Self::default()
            });
        }
        match who {
            Some(p) if !everything => Ok(Self {
                reads: Some(Arc::from(p.projects.clone())),
                writes: Arc::from(
                    p.projects
                        .first()
                        .map_or(tokentrace_model::DEFAULT_PROJECT, String::as_str),
                ),
                ..Self::default()
            }),
            _ => Ok(Self::default()),
        }
    }

    /// Whether it may do `action` on `resource` (`type::id`, e.g. `model::gpt-4o`) under the
    /// access policy; always without authentication.
    pub fn may(&self, action: tokentrace_config::Action, resource: &str) -> bool {
        match &self.who {
            None => true,
            Some(p) => tokentrace_config::is_allowed(
                &self.policy,
                action,
                resource,
                &tokentrace_config::User {
                    principal: &p.name,
                    attributes: &p.attributes,
                },
            ),
        }
    }

    /// Whether records of `project` are visible to it.
    pub fn sees(&self, project: &str) -> bool {
        self.reads
            .as_ref()
            .is_none_or(|r| r.iter().any(|p| p == project))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Access>()
            .cloned()
            .unwrap_or_default())
    }
}

impl Principal {
    /// A principal; its attributes get `scopes` and `projects` beside the given ones.
    pub fn new(
        name: String,
        scopes: Vec<Scope>,
        projects: Vec<String>,
        mut attributes: std::collections::BTreeMap<String, Vec<String>>,
        token: bool,
    ) -> Self {
        attributes.insert(
            "scopes".into(),
            scopes.iter().map(|s| s.as_str().to_string()).collect(),
        );
        attributes.insert("projects".into(), projects.clone());
        Self {
            name,
            scopes,
            projects,
            attributes,
            token,
        }
    }

    /// How messages name it: `the key "app"`, `the token of "alice"`.
    pub fn shown(&self) -> String {
        if self.token {
            format!("the token of {:?}", self.name)
        } else {
            format!("the key {:?}", self.name)
        }
    }

    /// Whether it may do what `scope` allows (`admin` may do everything).
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether it reads every project (`admin`).
    pub fn may_all_projects(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }
}

impl Guard {
    /// Who `token` is: an API key of `server.auth` (compared in constant time), or a JWT that
    /// verifies. `Err`: why not, safe to tell the caller.
    pub fn authenticate(&self, token: &str) -> Result<Principal, String> {
        if let Some(jwt) = &self.jwt {
            return jwt
                .verify(token)
                .map(|v| Principal::new(v.subject, v.scopes, v.projects, v.attributes, true));
        }
        let auth = self
            .auth
            .as_ref()
            .ok_or("no authentication is configured")?;
        find_key(auth, token)
            .map(|k| {
                Principal::new(
                    k.name.clone(),
                    k.scopes.clone(),
                    k.projects.clone(),
                    k.attributes.clone(),
                    false,
                )
            })
            .ok_or_else(|| "the API key is not valid".to_string())
    }
}

/// The key a token is, compared in constant time with every key.
pub fn find_key<'a>(auth: &'a AuthConfig, token: &str) -> Option<&'a tokentrace_config::ApiKey> {
    let digest = key_digest(token);
    let mut found = None;
    for k in &auth.keys {
        if bool::from(k.sha256.ct_eq(&digest)) && found.is_none() {
            found = Some(k);
        }
    }
    found
}

fn host_name(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.starts_with('[') {
        // [::1]:8321
        return h.split(']').next().map(|x| format!("{x}]")).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') => {
            name.to_string()
        }
        _ => h,
    }
}

fn is_json(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// The middleware (see the module's text).
pub async fn guard(State(g): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let fam = family(&path);
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !g.hosts.is_empty() && !g.hosts.contains(&host_name(&host)) {
        return refuse(
            fam,
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            &format!("host {host:?} is not one this server answers to (server.allowed_hosts)"),
            headers,
        );
    }
    let mut cors_origin = None;
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let own = [format!("http://{host}"), format!("https://{host}")];
        if !own.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            if !g.origins.contains(&origin.to_ascii_lowercase()) {
                return refuse(
                    fam,
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    &format!(
                        "requests from web pages of other origins ({origin}) are refused (server.cors.allowed_origins)"
                    ),
                    headers,
                );
            }
            let value = HeaderValue::from_str(origin).ok();
            if *req.method() == Method::OPTIONS {
                // The browser's preflight: what a page of this origin may send.
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                if let Some(v) = value {
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                }
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(
                        "authorization, content-type, traceparent, tracestate, x-tokentrace-project",
                    ),
                );
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                );
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
                return r;
            }
            cors_origin = value;
        }
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|n| n != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && has_body
        && fam != Family::Otlp
    {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(ct) {
            return refuse(
                fam,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                &format!("send JSON with Content-Type: application/json (got {ct:?})"),
                headers,
            );
        }
    }
    let mut principal = None;
    if let Some(auth) = &g.auth
        && let Need::Scope(scope) = need(&path, auth.public_metrics)
    {
        let Some(token) = credential(headers) else {
            return refuse(
                fam,
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "this tokentrace needs an API key: send Authorization: Bearer <key>",
                headers,
            );
        };
        let who = match g.authenticate(&token) {
            Ok(p) => p,
            Err(why) => {
                return refuse(
                    fam,
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    &why,
                    headers,
                );
            }
        };
        if !who.may(scope) {
            return refuse(
                fam,
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                &format!(
                    "{} does not have the scope {} that {path} needs",
                    who.shown(),
                    scope.as_str()
                ),
                headers,
            );
        }
        principal = Some(who);
    }
    let chosen = headers
        .get(PROJECT_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").trim().to_string());
    // Without a principal (no server.auth, or an open route: health, the UI's shell, public
    // metrics) nothing limits the projects.
    let access = Access::of(principal.as_ref(), chosen.as_deref()).map(|a| Access {
        policy: g.policy.clone(),
        who: principal.map(Arc::new),
        ..a
    });
    match access {
        Ok(a) => {
            req.extensions_mut().insert(a);
        }
        Err(why) => {
            return refuse(
                fam,
                StatusCode::FORBIDDEN,
                "project_not_allowed",
                &why,
                headers,
            );
        }
    }
    let mut res = next.run(req).await;
    if let Some(origin) = cors_origin {
        res.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_their_scopes() {
        use Scope::*;
        assert_eq!(need("/v1/health", false), Need::Open);
        assert_eq!(need("/", false), Need::Open);
        assert_eq!(need("/metrics", false), Need::Scope(TelemetryRead));
        assert_eq!(need("/metrics", true), Need::Open);
        assert_eq!(need("/v1/traces", false), Need::Scope(TelemetryWrite));
        assert_eq!(
            need("/v1/telemetry/events", false),
            Need::Scope(TelemetryWrite)
        );
        assert_eq!(
            need("/v1/telemetry/traces", false),
            Need::Scope(TelemetryRead)
        );
        assert_eq!(
            need("/v1/openai/v1/chat/completions", false),
            Need::Scope(Inference)
        );
        assert_eq!(need("/v1/models", false), Need::Scope(Inference));
        assert_eq!(need("/v1/tokentrace/sql", false), Need::Scope(Admin));
        assert_eq!(need("/no/such/route", false), Need::Scope(TelemetryRead));
    }

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8321"), "127.0.0.1");
        assert_eq!(host_name("LocalHost"), "localhost");
        assert_eq!(host_name("[::1]:8321"), "[::1]");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0") && !is_loopback("10.0.0.5"));
    }

    #[test]
    fn keys_come_from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; tokentrace_key=k123"),
        );
        assert_eq!(credential(&h).as_deref(), Some("k123"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(credential(&h).as_deref(), Some("abc"));
    }
}
