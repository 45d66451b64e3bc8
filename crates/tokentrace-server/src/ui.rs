//! The web UI: a page shell and our own JavaScript and CSS, compiled into the binary, served at
//! `/` (traces), `/trace/{id}`, `/sessions`, `/dashboard` and `/explore` (metrics). The pages
//! render in the browser from the same JSON routes every client uses (the telemetry query API
//! and `/v1/tokentrace/*`), so the UI has no read path of its own. Nothing is fetched from
//! elsewhere: the Content-Security-Policy allows this origin only.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

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

/// The UI's routes.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
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
