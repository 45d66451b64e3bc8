//! `server.auth.provider_type: oauth2_token` on the real binary: tokens minted here with a test
//! EC key (ES256), a test RSA key (RS256) and a shared secret (HS256), the key set served by an
//! HTTP server on 127.0.0.1 and rotated while tokentrace runs; expiry, audience, issuer, `nbf`,
//! signature, algorithm and scope checked on every route family.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use common::{free_port, signal, start, wait_exit};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "tokentrace";
const SECRET: &str = "a-shared-hs256-secret-of-32-bytes-or-more";

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The key set the test identity provider serves, and how often it was fetched.
#[derive(Default)]
struct Idp {
    jwks: Mutex<Value>,
    fetched: AtomicUsize,
}

async fn jwks(State(idp): State<Arc<Idp>>) -> axum::Json<Value> {
    idp.fetched.fetch_add(1, Ordering::SeqCst);
    axum::Json(idp.jwks.lock().unwrap().clone())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(scope: &str) -> Value {
    json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
           "iat": now(), "scope": scope})
}

fn mint(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

struct Call {
    status: u16,
    body: String,
    challenge: Option<String>,
}

fn call(http: &reqwest::blocking::Client, base: &str, path: &str, token: Option<&str>) -> Call {
    let mut req = if path.contains("chat") || path.contains("telemetry/traces") {
        http.post(format!("{base}{path}"))
            .json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
    } else {
        http.get(format!("{base}{path}"))
    };
    if path.contains("telemetry/traces") {
        req = http.post(format!("{base}{path}")).json(&json!({}));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    Call {
        status: r.status().as_u16(),
        challenge,
        body: r.text().unwrap(),
    }
}

#[test]
fn jwts_are_verified_against_a_rotating_key_set_and_grant_their_claimed_scopes() {
    let dir = tempfile::tempdir().unwrap();

    // The identity provider's keys: EC now, RSA added later (a rotation).
    let ec = rcgen::KeyPair::generate().unwrap();
    let point = ec.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let ec_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
                        "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
    let ec_key = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let rsa_pem = dir.path().join("rsa.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa_pem)
        .output()
        .expect("openssl makes the test's RSA key");
    assert!(made.status.success());
    let modulus = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&rsa_pem)
        .output()
        .unwrap();
    let hex = String::from_utf8(modulus.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-2", "alg": "RS256", "use": "sig",
                         "n": b64url(&n), "e": "AQAB"});
    let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(&rsa_pem).unwrap()).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = Arc::new(Idp::default());
    *idp.jwks.lock().unwrap() = json!({"keys": [ec_jwk.clone()]});
    let idp_port = free_port();
    let app = axum::Router::new()
        .route("/jwks.json", get(jwks))
        .with_state(idp.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", idp_port)))
        .unwrap();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "server:
  auth:
    provider_type: oauth2_token
    config:
      jwks:
        uri: http://127.0.0.1:{idp_port}/jwks.json
        key_recheck_period: 1
      issuer: {ISSUER}
      audience: {AUDIENCE}
      hs256_secret: {SECRET}
      claims_mapping:
        scope: scopes
        groups: scopes
providers:
  telemetry:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
    config:
      sinks: sqlite
      sqlite_db_path: {}/trace_store.db
",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    assert!(
        idp.fetched.load(Ordering::SeqCst) >= 1,
        "the key set is fetched at start"
    );
    let base = server.base.clone();
    let http = reqwest::blocking::Client::new();
    let chat = "/v1/chat/completions";
    let read = "/v1/telemetry/traces";

    // No token, and /v1/health without one.
    let c = call(&http, &base, chat, None);
    assert_eq!(c.status, 401, "{}", c.body);
    assert!(c.challenge.unwrap().starts_with("Bearer"));
    assert_eq!(call(&http, &base, "/v1/health", None).status, 200);

    // ES256 with the inference scope: the gateway answers; reading needs telemetry.read.
    let infer = mint(
        Algorithm::ES256,
        Some("ec-1"),
        &ec_key,
        &claims("openid inference"),
    );
    let c = call(&http, &base, chat, Some(&infer));
    assert_eq!(c.status, 200, "{}", c.body);
    let c = call(&http, &base, read, Some(&infer));
    assert_eq!(c.status, 403, "{}", c.body);
    assert!(
        c.body.contains(r#"the token of \"alice\""#) && c.body.contains("telemetry.read"),
        "{}",
        c.body
    );
    // Scopes from another mapped claim; admin may do everything.
    let mut admin = claims("openid");
    admin["groups"] = json!(["admin"]);
    let admin = mint(Algorithm::ES256, Some("ec-1"), &ec_key, &admin);
    assert_eq!(call(&http, &base, read, Some(&admin)).status, 200);

    // Each wrong token is refused with 401 and a reason.
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("admin");
        f(&mut c);
        mint(Algorithm::ES256, Some("ec-1"), &ec_key, &c)
    };
    let mut tampered = with(&|_| {});
    tampered.replace_range(tampered.len() - 6.., "AAAAAA");
    let other_secret = EncodingKey::from_secret(b"another-secret-that-is-also-long-enough");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("admin").to_string().as_bytes())
    );
    for (token, why) in [
        (with(&|c| c["exp"] = json!(now() - 3600)), "expired"),
        (with(&|c| c["aud"] = json!("someone-else")), "audience"),
        (with(&|c| c["iss"] = json!("https://evil.test")), "issuer"),
        (with(&|c| c["nbf"] = json!(now() + 3600)), "not valid yet"),
        (
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "exp",
        ),
        (tampered, "signature"),
        (
            mint(Algorithm::HS256, None, &other_secret, &claims("admin")),
            "signature",
        ),
        (none, "not a valid JWT"),
        ("not-a-jwt".to_string(), "not a valid JWT"),
        (
            mint(Algorithm::ES256, Some("nope"), &ec_key, &claims("admin")),
            "not in the key set",
        ),
    ] {
        let c = call(&http, &base, read, Some(&token));
        assert_eq!(c.status, 401, "{why}: {}", c.body);
        assert!(c.body.contains(why), "{why}: {}", c.body);
    }

    // HS256 with the configured secret.
    let hs = mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims("telemetry.read"),
    );
    assert_eq!(call(&http, &base, read, Some(&hs)).status, 200);

    // A token of a key the provider adds later: refused until the key set is fetched again,
    // then accepted without a restart.
    let rsa = mint(
        Algorithm::RS256,
        Some("rsa-2"),
        &rsa_key,
        &claims("telemetry.read"),
    );
    assert_eq!(call(&http, &base, read, Some(&rsa)).status, 401);
    *idp.jwks.lock().unwrap() = json!({"keys": [ec_jwk, rsa_jwk]});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = call(&http, &base, read, Some(&rsa));
        if c.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never fetched: {}",
            c.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // OTLP senders: `OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer …`; a token without
    // telemetry.write gets an OTLP Status 403.
    let otlp = |token: &str| {
        http.post(format!("{base}/v1/traces"))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(r#"{"resourceSpans": []}"#)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let writer = mint(
        Algorithm::ES256,
        Some("ec-1"),
        &ec_key,
        &claims("telemetry.write"),
    );
    assert_eq!(otlp(&writer), 200);
    assert_eq!(otlp(&infer), 403);

    // The web UI signs in with a token that can read, and refuses one that cannot.
    let login = |token: &str| {
        http.post(format!("{base}/ui/login"))
            .json(&json!({ "key": token }))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(login(&admin), 204);
    assert_eq!(login(&infer), 403);

    // check-config shows the settings, the secret masked.
    let out = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["check-config", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("provider_type: oauth2_token") && !shown.contains(SECRET));

    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
    drop(rt);
}

/// A key set file that cannot be read stops start-up, naming the key.
#[test]
fn an_unreadable_key_set_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        "server:\n  auth:\n    provider_type: oauth2_token\n    config:\n      jwks:\n        file: /nonexistent/jwks.json\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokentrace"))
        .args(["serve", "--port", "0", "--config", config.to_str().unwrap()])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("server.auth.config.jwks.file") && err.contains("/nonexistent/jwks.json"),
        "{err}"
    );
}
