//! A real server on 127.0.0.1 over a real SQLite file, for the API tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;

use serde_json::{Value, json};
use tokentrace_pipeline::sinks::sqlite::SqliteSink;
use tokentrace_pipeline::{Pipeline, PipelineOptions, Sink, Telemetry};
use tokentrace_server::{AppState, Settings};
use tokentrace_store::{Store, StoreOptions};

pub struct TestServer {
    state: AppState,
    pub base: String,
    pub client: reqwest::Client,
    pub telemetry: Telemetry,
    pub db_path: PathBuf,
    pipeline: Option<Pipeline>,
    store: Option<Store>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(PipelineOptions::default(), Vec::new(), 1 << 20).await
    }

    /// A server whose pipeline also feeds `extra` sinks, accepting bodies up to `max_body`.
    pub async fn start_with(
        options: PipelineOptions,
        extra: Vec<Box<dyn Sink>>,
        max_body: usize,
    ) -> Self {
        let inference = tokentrace_config::load(None, &|_| None).unwrap().inference;
        Self::start_full(options, extra, max_body, inference).await
    }

    /// A server with these inference providers and models.
    pub async fn start_full(
        options: PipelineOptions,
        extra: Vec<Box<dyn Sink>>,
        max_body: usize,
        inference: tokentrace_config::InferenceConfig,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("trace_store.db");
        let store = Store::open(&db_path, StoreOptions::default()).unwrap();
        let registry = std::sync::Arc::new(tokentrace_pipeline::sinks::prometheus::Registry::new());
        let mut sinks: Vec<Box<dyn Sink>> = extra;
        sinks.push(Box::new(
            tokentrace_pipeline::sinks::prometheus::PrometheusSink::new(registry.clone()),
        ));
        sinks.push(Box::new(SqliteSink::new(store.writer())));
        let pipeline = Pipeline::start(options, sinks).unwrap();
        let telemetry = pipeline.telemetry();
        let state = AppState::new(
            telemetry.clone(),
            Some((store.reader(), store.writer())),
            tokentrace_server::Inference::new(&inference).unwrap(),
            Settings {
                max_body_bytes: max_body,
                ..Settings::default()
            },
        );
        let mut state = state;
        state.metrics = registry;
        let kept = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = tokentrace_server::router(state);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer {
            state: kept,
            base,
            client: reqwest::Client::new(),
            telemetry,
            db_path,
            pipeline: Some(pipeline),
            store: Some(store),
            server,
            _dir: dir,
        }
    }

    /// Restarts the HTTP server with a different OTLP body limit (same store and pipeline).
    pub async fn set_otlp_limit(&mut self, limit: usize) {
        self.server.abort();
        let mut state = self.state.clone();
        state.settings.otlp_max_body_bytes = limit;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let app = tokentrace_server::router(state);
        self.server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    /// Posts bytes with these headers; returns status, headers and body bytes.
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.bytes().await.unwrap().to_vec())
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET path`, the whole response (headers included).
    pub async fn get_response(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.get_response(path).await;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits until everything accepted so far is committed to SQLite.
    pub async fn flush(&self) {
        let t = self.telemetry.clone();
        tokio::task::spawn_blocking(move || t.flush().unwrap())
            .await
            .unwrap();
    }

    pub async fn log(&self, event: Value) {
        let (status, body) = self
            .post(
                "/v1/telemetry/events",
                json!({ "event": event, "ttl_seconds": 3600 }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, Value::Null);
    }

    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db_path).unwrap()
    }

    pub async fn stop(mut self) {
        self.server.abort();
        let pipeline = self.pipeline.take();
        let store = self.store.take();
        tokio::task::spawn_blocking(move || {
            if let Some(p) = pipeline {
                p.shutdown();
            }
            if let Some(s) = store {
                s.close().unwrap();
            }
        })
        .await
        .unwrap();
    }
}

pub fn span_start(
    trace: &str,
    span: &str,
    parent: Option<&str>,
    name: &str,
    ts: &str,
    attrs: Value,
) -> Value {
    let mut payload = json!({ "type": "span_start", "name": name });
    if let Some(p) = parent {
        payload["parent_span_id"] = json!(p);
    }
    json!({ "type": "structured_log", "trace_id": trace, "span_id": span, "timestamp": ts,
            "attributes": attrs, "payload": payload })
}

pub fn span_end(trace: &str, span: &str, ts: &str, status: &str) -> Value {
    json!({ "type": "structured_log", "trace_id": trace, "span_id": span, "timestamp": ts,
            "attributes": {}, "payload": { "type": "span_end", "status": status } })
}

pub fn log(trace: &str, span: &str, ts: &str, severity: &str, message: &str) -> Value {
    json!({ "type": "unstructured_log", "trace_id": trace, "span_id": span, "timestamp": ts,
            "attributes": {}, "severity": severity, "message": message })
}

pub fn metric(trace: &str, span: &str, ts: &str, name: &str, value: Value, labels: Value) -> Value {
    json!({ "type": "metric", "trace_id": trace, "span_id": span, "timestamp": ts,
            "attributes": labels, "metric": name, "value": value, "unit": "tokens" })
}
