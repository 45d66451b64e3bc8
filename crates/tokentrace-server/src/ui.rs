//! The web UI: a page shell and our own JavaScript and CSS, compiled into the binary, served at
//! `/` (traces), `/trace/{id}`, `/sessions`, `/dashboard` and `/explore` (metrics). The pages
//! render in the browser from the same JSON routes every client uses (the telemetry query API
//! and `/v1/tokentrace/*`), so the UI has no read path of its own. Nothing is fetched from
//! elsewhere: the Content-Security-Policy allows this origin only.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokentrace_config::Scope;

use crate::extract::ApiJson;
use crate::guard::KEY_COOKIE;
use crate::{ApiError, AppState};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const LIB_JS: &str = include_str!("ui/lib.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// This origin only: no CDN, no inline script, no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's page paths (one shell; the script renders the page the path names).
const PAGES: &[&str] = &["/", "/sessions", "/dashboard", "/explore"];

/// Whether a path is one of the UI's pages or assets.
pub(crate) fn is_ui_path(path: &str) -> bool {
    PAGES.contains(&path) || path.starts_with("/ui/") || path.starts_with("/trace/")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, always revalidated: a new binary's UI is used at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn page() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

/// Checks a key and keeps it in an HttpOnly, SameSite=Strict cookie: the UI's requests then
/// carry it, and the page's script never sees it.
async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<Login>,
) -> Result<Response, ApiError> {
    if state.settings.guard.auth.is_none() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if !req
        .key
        .chars()
        .all(|c| c.is_ascii_graphic() && c != ';' && c != ',')
    {
        return Err(ApiError::bad_request(
            "a key for the web UI must be printable ASCII without ';' or ','",
        ));
    }
    let who = state
        .settings
        .guard
        .authenticate(&req.key)
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, why))?;
    if !who.may(Scope::TelemetryRead) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} cannot read telemetry: the web UI needs the scope telemetry.read",
                who.shown()
            ),
        ));
    }
    let secure = if state.settings.guard.tls {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{KEY_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/{secure}",
        req.key
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie)
            .map_err(|_| ApiError::bad_request("the key cannot be kept in a cookie"))?,
    );
    Ok(r)
}

async fn logout() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tokentrace_key=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// The UI's routes.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout));
    for p in PAGES {
        r = r.route(p, get(page));
    }
    r.route("/trace/{trace_id}", get(page))
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/lib.js",
            get(|| async { asset(LIB_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
}
