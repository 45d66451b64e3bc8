//! The inference gateway against a real fake upstream on 127.0.0.1: tracing, token metrics,
//! streaming, faults.
//!
//! Over 500 lines: one test per behaviour of the gateway, sharing the fake upstream defined here;
//! the server helpers are in `common/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::TestServer;
use serde_json::{Value, json};
use tokentrace_config::{InferenceConfig, InferenceProvider, Model, ModelType, ProviderKind};
use tokentrace_pipeline::PipelineOptions;

type Seen = Arc<Mutex<Vec<Value>>>;

fn usage(p: u64, c: u64) -> Value {
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn chunk(text: Option<&str>, finish: Option<&str>) -> String {
    let delta = match text {
        Some(t) => json!({"content": t}),
        None => json!({}),
    };
    let c = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

async fn upstream(State(seen): State<Seen>, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().push(req.clone());
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let sse = |parts: Vec<String>, delay_ms: u64| {
        let s = futures_util::stream::unfold(parts.into_iter(), move |mut it| async move {
            let next = it.next()?;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from(next)), it))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(s))
            .unwrap()
    };
    match model.as_str() {
        "up-ok" => axum::Json(json!({
            "id": "chatcmpl-123", "object": "chat.completion", "created": 1, "model": "upstream-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
            "usage": usage(11, 7)
        }))
        .into_response(),
        "up-stream-usage" => {
            assert_eq!(req["stream_options"]["include_usage"], true, "the gateway asks for usage");
            let usage_chunk = json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
                                     "model": "upstream-model", "choices": [], "usage": usage(5, 3)});
            // events split at odd places, CRLF line ends
            let body = format!("{}{}{}data: {usage_chunk}\r\n\r\ndata: [DONE]\r\n\r\n",
                chunk(Some("Hel"), None), chunk(Some("lo wörld"), None), chunk(None, Some("stop")));
            let bytes = body.into_bytes();
            let (a, b) = bytes.split_at(37);
            let (b, c) = b.split_at(b.len() / 2);
            sse(vec![String::from_utf8_lossy(a).into_owned(), String::from_utf8_lossy(b).into_owned(), String::from_utf8_lossy(c).into_owned()], 5)
        }
        "up-stream-nousage" => sse(vec![chunk(Some("one two three"), None), chunk(None, Some("stop")), "data: [DONE]\n\n".into()], 5),
        "up-drip" => sse((0..1000).map(|i| chunk(Some(&format!("t{i} ")), None)).collect(), 20),
        "up-slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            axum::Json(json!({})).into_response()
        }
        "up-429" => (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limited"}}))).into_response(),
        "up-500" => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "up-badjson" => (axum::http::StatusCode::OK, "{not json").into_response(),
        other => panic!("unexpected model {other}"),
    }
}

async fn start_upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(upstream))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn config(url: &str) -> InferenceConfig {
    let provider = |id: &str, url: Option<&str>| InferenceProvider {
        provider_id: id.into(),
        provider_type: if url.is_some() {
            "remote::vllm".into()
        } else {
            "inline::echo".into()
        },
        kind: if url.is_some() {
            ProviderKind::OpenAiCompatible
        } else {
            ProviderKind::Echo
        },
        url: url.map(str::to_string),
        api_key: Some("sk-test".into()),
        timeout_seconds: 1,
        connect_timeout_seconds: 1,
    };
    let model = |id: &str, provider: &str| Model {
        model_id: id.trim_start_matches("up-").to_string(),
        provider_id: provider.into(),
        provider_model_id: id.into(),
        model_type: ModelType::Llm,
        metadata: json!({}),
        pricing: None,
    };
    let mut models: Vec<Model> = [
        "up-ok",
        "up-stream-usage",
        "up-stream-nousage",
        "up-drip",
        "up-slow",
        "up-429",
        "up-500",
        "up-badjson",
    ]
    .iter()
    .map(|m| model(m, "vllm"))
    .collect();
    models.push(model("refused", "down"));
    models.push(Model {
        model_id: "echo".into(),
        ..model("echo", "echo")
    });
    InferenceConfig {
        providers: vec![
            provider("vllm", Some(url)),
            provider("down", Some("http://127.0.0.1:9/v1")),
            provider("echo", None),
        ],
        models,
    }
}

async fn start() -> (TestServer, Seen) {
    let (url, seen) = start_upstream().await;
    let s = TestServer::start_full(
        PipelineOptions::default(),
        Vec::new(),
        1 << 20,
        config(&url),
    )
    .await;
    (s, seen)
}

#[derive(Clone, Debug)]
struct Stored {
    name: String,
    parent: Option<String>,
    status: Option<String>,
    attributes: Value,
}

fn spans_of(s: &TestServer, trace: &str) -> Vec<(String, Stored)> {
    let conn = s.sqlite();
    let mut st = conn.prepare("SELECT span_id, name, parent_span_id, status, attributes FROM spans WHERE trace_id = ?1 ORDER BY start_time").unwrap();
    st.query_map([trace], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Stored {
                name: r.get(1)?,
                parent: r.get(2)?,
                status: r.get(3)?,
                attributes: serde_json::from_str(&r.get::<_, String>(4)?).unwrap(),
            },
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn metric_values(s: &TestServer, trace: &str) -> Vec<(String, f64)> {
    let conn = s.sqlite();
    let mut st = conn
        .prepare("SELECT name, value FROM metrics WHERE trace_id = ?1 ORDER BY name")
        .unwrap();
    st.query_map([trace], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_is_traced_with_a_provider_span_and_token_metrics() {
    let (s, seen) = start().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let res = s.client.post(format!("{}/v1/openai/v1/chat/completions", s.base))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("X-Telemetry-Service", "my-app")
        .json(&json!({"model": "ok", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50, "temperature": 0.2}))
        .send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-trace-id"], caller_trace);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(
        seen.lock().unwrap()[0]["model"],
        "up-ok",
        "the provider's model name is sent upstream"
    );
    s.flush().await;

    let spans = spans_of(&s, caller_trace);
    assert_eq!(spans.len(), 2, "request span and provider span");
    let (req_id, req) = &spans[0];
    assert_eq!(req.name, "POST /v1/openai/v1/chat/completions");
    assert_eq!(req.parent.as_deref(), Some(caller_span));
    assert_eq!(req.status.as_deref(), Some("ok"));
    assert_eq!(req.attributes["http.response.status_code"], 200);
    assert_eq!(
        req.attributes["http.request.header.x-telemetry-service"],
        "my-app"
    );
    let (_, call) = &spans[1];
    assert_eq!(call.parent.as_ref(), Some(req_id));
    assert_eq!(call.name, "chat ok");
    let a = &call.attributes;
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.provider.name"], "vllm");
    assert_eq!(a["gen_ai.request.model"], "ok");
    assert_eq!(a["gen_ai.request.max_tokens"], 50);
    assert_eq!(a["gen_ai.request.temperature"], 0.2);
    assert_eq!(a["gen_ai.response.id"], "chatcmpl-123");
    assert_eq!(a["gen_ai.response.model"], "upstream-model");
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(a["gen_ai.usage.input_tokens"], 11);
    assert_eq!(a["gen_ai.usage.output_tokens"], 7);
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(
        (a["model_id"].as_str(), a["provider_id"].as_str()),
        (Some("ok"), Some("vllm"))
    );
    // Content in the current conventions' shape (the default), not the deprecated one.
    let parse = |k: &str| serde_json::from_str::<Value>(a[k].as_str().unwrap()).unwrap();
    assert_eq!(
        parse("gen_ai.input.messages"),
        json!([{"role": "user", "parts": [{"type": "text", "content": "Hi"}]}])
    );
    assert_eq!(
        parse("gen_ai.output.messages"),
        json!([{"role": "assistant", "parts": [{"type": "text", "content": "Hello there"}], "finish_reason": "stop"}])
    );
    assert!(a.get("gen_ai.prompt").is_none() && a.get("gen_ai.completion").is_none());
    assert!(a.get("tokentrace.tokens_estimated").is_none());
    assert_eq!(a["tokentrace.genai.origin"], "gateway");
    // A self-hosted provider nobody priced costs nothing.
    assert_eq!(a["tokentrace.cost.usd"], 0.0);
    assert_eq!(
        metric_values(&s, caller_trace),
        [
            ("completion_tokens".into(), 7.0),
            ("cost_usd".into(), 0.0),
            ("prompt_tokens".into(), 11.0),
            ("total_tokens".into(), 18.0)
        ]
    );

    // query_metrics sees them, labelled by model and provider
    let now = tokentrace_model::Timestamp::now().unix_seconds();
    let (_, m) = s
        .post(
            "/v1/telemetry/metrics/total_tokens",
            json!({"start_time": now - 60, "end_time": now + 1, "query_type": "instant"}),
        )
        .await;
    assert_eq!(m["data"][0]["values"][0]["value"], 18.0);
    assert_eq!(
        m["data"][0]["labels"],
        json!([{"name": "model_id", "value": "ok"}, {"name": "provider_id", "value": "vllm"}])
    );
    s.stop().await;
}

async fn read_sse(res: reqwest::Response) -> Vec<String> {
    let text = res.text().await.unwrap();
    text.split("\n\n")
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_asks_for_usage_and_hides_it_unless_the_client_asked() {
    let (s, _) = start().await;
    let res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "stream-usage", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    let events = read_sse(res).await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    let text: String = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(text, "Hello wörld");
    assert_eq!(events.last().unwrap(), "data: [DONE]");
    s.flush().await;
    let spans = spans_of(&s, &trace);
    let a = &spans[1].1.attributes;
    assert_eq!(
        (
            a["gen_ai.usage.input_tokens"].as_i64(),
            a["gen_ai.usage.output_tokens"].as_i64()
        ),
        (Some(5), Some(3))
    );
    assert!(a["gen_ai.response.time_to_first_chunk"].as_f64().unwrap() > 0.0);
    assert_eq!(a["gen_ai.request.stream"], true);
    assert_eq!(metric_values(&s, &trace)[3], ("total_tokens".into(), 8.0));

    // a client that asked for usage gets the chunk
    let res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "stream-usage", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}))
        .send().await.unwrap();
    let events = read_sse(res).await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"usage\":{\"completion_tokens\":3")),
        "{events:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_usage_tokens_are_counted_and_marked_estimated() {
    let (s, _) = start().await;
    let res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "stream-nousage", "stream": true, "messages": [{"role": "user", "content": "hello world"}]}))
        .send().await.unwrap();
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    read_sse(res).await;
    s.flush().await;
    let spans = spans_of(&s, &trace);
    let a = &spans[1].1.attributes;
    assert_eq!(a["tokentrace.tokens_estimated"], true);
    assert_eq!(
        a["gen_ai.usage.input_tokens"], 2,
        "\"hello world\" is two tokens"
    );
    assert_eq!(
        a["gen_ai.usage.output_tokens"], 3,
        "\"one two three\" is three tokens"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_map_to_clear_statuses_and_error_spans() {
    let (s, _) = start().await;
    for (model, status, error_type) in [
        ("429", 429, "429"),
        ("500", 500, "500"),
        ("badjson", 502, "invalid_response"),
        ("refused", 502, "connection_refused"),
        ("slow", 504, "timeout"),
    ] {
        let res = s
            .client
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{model}");
        let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
        let body: Value = res.json().await.unwrap();
        assert!(body["error"]["message"].is_string(), "{model}: {body}");
        if model == "429" {
            assert_eq!(
                body["error"]["code"], "rate_limited",
                "the upstream's OpenAI error is passed on"
            );
        }
        s.flush().await;
        let spans = spans_of(&s, &trace);
        let call = &spans[1].1;
        assert_eq!(call.status.as_deref(), Some("error"), "{model}");
        assert_eq!(call.attributes["error.type"], error_type, "{model}");
    }
    // bad requests never reach a provider
    let res = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let res = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let (st, _) = s.get("/v1/health").await;
    assert_eq!(st, 200, "still serving");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_cancels_the_call() {
    let (s, _) = start().await;
    let mut res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "drip", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send().await.unwrap();
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(res);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        s.flush().await;
        let spans = spans_of(&s, &trace);
        if let Some((_, call)) = spans.iter().find(|(_, sp)| sp.name == "chat drip") {
            assert_eq!(call.status.as_deref(), Some("error"));
            assert_eq!(call.attributes["error.type"], "cancelled");
            let (_, req) = spans
                .iter()
                .find(|(_, sp)| sp.name.starts_with("POST"))
                .unwrap();
            assert_eq!(req.attributes["error.type"], "cancelled");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled call was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

/// Waits until the trace holds its request span and provider span, and returns them.
async fn request_and_call(s: &TestServer, trace: &str, call: &str) -> (Stored, Stored) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        s.flush().await;
        let spans = spans_of(s, trace);
        let req = spans.iter().find(|(_, sp)| sp.name.starts_with("POST"));
        let provider = spans.iter().find(|(_, sp)| sp.name == call);
        if let (Some((_, r)), Some((_, c))) = (req, provider) {
            return (r.clone(), c.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trace {trace} never held both spans: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_at_any_stage_leaves_both_spans() {
    let (s, _) = start().await;
    // Before the upstream answers: the client gives up while the provider is still thinking.
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let early = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .timeout(Duration::from_millis(300))
        .json(&json!({"model": "slow", "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await;
    assert!(early.is_err(), "the client timed out first");
    let (req, call) = request_and_call(&s, trace, "chat slow").await;
    assert_eq!(req.status.as_deref(), Some("error"));
    assert_eq!(req.attributes["error.type"], "cancelled");
    assert!(req.attributes.get("http.response.status_code").is_none());
    assert_eq!(call.attributes["error.type"], "cancelled");

    // After the last chunk: nothing went wrong.
    let res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "stream-usage", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send().await.unwrap();
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    let body = res.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
    let (req, call) = request_and_call(&s, &trace, "chat stream-usage").await;
    assert_eq!(req.status.as_deref(), Some("ok"));
    assert_eq!(call.status.as_deref(), Some("ok"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_their_own_traces() {
    let (s, _) = start().await;
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let client = s.client.clone();
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let trace = format!("{:032x}", i + 1);
            let res = client.post(format!("{base}/v1/chat/completions"))
                .header("traceparent", format!("00-{trace}-{:016x}-01", i + 1))
                .json(&json!({"model": if i % 2 == 0 { "ok" } else { "stream-nousage" }, "stream": i % 2 == 1, "messages": [{"role": "user", "content": "Hi"}]}))
                .send().await.unwrap();
            assert_eq!(res.headers()["x-trace-id"].to_str().unwrap(), trace);
            res.bytes().await.unwrap();
            trace
        }));
    }
    let traces: Vec<String> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    s.flush().await;
    for (i, trace) in traces.iter().enumerate() {
        let spans = spans_of(&s, trace);
        assert_eq!(spans.len(), 2, "trace {trace}");
        assert_eq!(
            spans[0].1.parent.as_deref(),
            Some(format!("{:016x}", i + 1).as_str())
        );
        assert_eq!(spans[1].1.parent.as_ref(), Some(&spans[0].0));
        assert_eq!(metric_values(&s, trace).len(), 4);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_provider_answers_offline_in_every_shape() {
    let (s, _) = start().await;
    let (st, body) = s.post("/v1/openai/v1/chat/completions", json!({"model": "echo", "messages": [{"role": "user", "content": "the quick brown fox"}], "max_tokens": 2})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "the quick");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"], usage(4, 2));

    let res = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .json(&json!({"model": "echo", "prompt": "a b c", "stream": true}))
        .send()
        .await
        .unwrap();
    let events = read_sse(res).await;
    assert_eq!(events.last().unwrap(), "data: [DONE]");

    let (st, body) = s
        .post(
            "/v1/embeddings",
            json!({"model": "echo", "input": ["x", "y"]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_ne!(body["data"][0]["embedding"], body["data"][1]["embedding"]);

    let (st, body) = s.post("/v1/inference/chat-completion", json!({"model_id": "echo", "messages": [{"role": "user", "content": "hello world"}], "sampling_params": {"max_tokens": 10}})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["completion_message"]["content"], "hello world");
    assert_eq!(body["completion_message"]["stop_reason"], "end_of_turn");
    assert_eq!(
        body["metrics"][2],
        json!({"metric": "total_tokens", "value": 4, "unit": "tokens"})
    );

    let res = s.client.post(format!("{}/v1/inference/chat-completion", s.base))
        .json(&json!({"model_id": "echo", "stream": true, "messages": [{"role": "user", "content": "hello world"}]}))
        .send().await.unwrap();
    let events = read_sse(res).await;
    let parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(parsed.first().unwrap()["event"]["event_type"], "start");
    assert_eq!(parsed.last().unwrap()["event"]["event_type"], "complete");
    assert_eq!(
        parsed.last().unwrap()["metrics"][0]["metric"],
        "prompt_tokens"
    );
    let text: String = parsed
        .iter()
        .filter(|p| p["event"]["event_type"] == "progress")
        .map(|p| p["event"]["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "hello world");

    let (st, body) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    let echo = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["identifier"] == "echo")
        .unwrap();
    assert_eq!(
        (
            echo["provider_id"].as_str(),
            echo["id"].as_str(),
            echo["model_type"].as_str()
        ),
        (Some("echo"), Some("echo"), Some("llm"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_tokens_per_model_and_provider() {
    let (s, _) = start().await;
    for _ in 0..3 {
        let res = s
            .client
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&json!({"model": "ok", "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = s.client.post(format!("{}/v1/chat/completions", s.base))
        .json(&json!({"model": "stream-usage", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .send().await.unwrap();
    res.bytes().await.unwrap();
    s.flush().await;
    let res = s.get_response("/metrics").await;
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    for line in [
        "llama_stack_prompt_tokens_total{model_id=\"ok\",provider_id=\"vllm\"} 33",
        "llama_stack_completion_tokens_total{model_id=\"ok\",provider_id=\"vllm\"} 21",
        "llama_stack_tokens_total{model_id=\"ok\",provider_id=\"vllm\"} 54",
        "llama_stack_tokens_total{model_id=\"stream-usage\",provider_id=\"vllm\"} 8",
        "llama_stack_request_duration_seconds_count{model_id=\"ok\",provider_id=\"vllm\"} 3",
        "llama_stack_time_to_first_token_seconds_count{model_id=\"stream-usage\",provider_id=\"vllm\"} 1",
        "tokentrace_http_requests_total{route=\"/v1/chat/completions\",status_code=\"200\"} 4",
        "# TYPE tokentrace_pipeline_queue_depth gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let res = s
        .client
        .get(format!("{}/metrics", s.base))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = res.text().await.unwrap();
    assert!(
        om.contains("# TYPE llama_stack_tokens counter") && om.ends_with("# EOF\n"),
        "{om}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_health_and_scrapes_are_not_traced_api_calls_are() {
    let (s, _) = start().await;
    let (st, _) = s.get("/v1/health").await;
    assert_eq!(st, 200);
    let res = s.get_response("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-trace-id").is_none());
    for path in ["/v1/traces", "/v1/metrics", "/v1/logs"] {
        let (st, _) = s.post(path, json!({})).await;
        assert_eq!(st, 200, "{path}");
    }
    s.log(json!({
        "type": "unstructured_log",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "timestamp": "2025-01-01T00:00:00Z",
        "severity": "info",
        "message": "hello",
    }))
    .await;
    let res = s.get_response("/v1/models").await;
    assert_eq!(res.status(), 200);
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    s.flush().await;
    let names: Vec<String> = {
        let conn = s.sqlite();
        let mut st = conn
            .prepare("SELECT name FROM spans ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(names, ["GET /v1/models"]);
    assert_eq!(spans_of(&s, &trace).len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_slow_pipeline_instead_of_losing_their_spans() {
    // A sink far slower than the requests, behind a queue of four items.
    struct Slow;
    impl tokentrace_pipeline::Sink for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn span_ended(&mut self, _: &tokentrace_model::SpanRecord) {
            std::thread::sleep(Duration::from_millis(20));
        }
        fn event(&mut self, _: &tokentrace_model::SpanEvent) {}
    }
    let options = PipelineOptions {
        queue_capacity: 4,
        ..PipelineOptions::default()
    };
    let s = TestServer::start_with(options, vec![Box::new(Slow)], 1 << 20).await;
    let mut traces = Vec::new();
    for _ in 0..30 {
        let res = s.get_response("/v1/models").await;
        assert_eq!(res.status(), 200);
        traces.push(res.headers()["x-trace-id"].to_str().unwrap().to_string());
    }
    s.flush().await;
    let stats = s.telemetry.stats();
    assert!(stats.room_waits.load(Ordering::Relaxed) > 0, "never waited");
    assert_eq!(stats.rejected_full.load(Ordering::Relaxed), 0);
    for trace in &traces {
        assert_eq!(spans_of(&s, trace).len(), 1, "trace {trace}");
    }
    let metrics = s.get_response("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tokentrace_backpressure_waits_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    s.stop().await;
}

/// A flood of telemetry cannot starve the gateway: past half the queue, the events API is
/// refused (503) while an API request still finds room for its span without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_is_refused_at_half_the_queue_and_api_requests_keep_the_rest() {
    // A sink that holds the pipeline thread until released.
    struct Held(Arc<std::sync::atomic::AtomicBool>);
    impl tokentrace_pipeline::Sink for Held {
        fn name(&self) -> &'static str {
            "held"
        }
        fn span_ended(&mut self, _: &tokentrace_model::SpanRecord) {}
        fn event(&mut self, _: &tokentrace_model::SpanEvent) {}
        fn flush(&mut self) -> Result<(), tokentrace_pipeline::SinkError> {
            while !self.0.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        }
    }
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = PipelineOptions {
        queue_capacity: 16,
        ..PipelineOptions::default()
    };
    let s = TestServer::start_with(options, vec![Box::new(Held(release.clone()))], 1 << 20).await;
    let event = |i: usize| {
        json!({"event": {"type": "unstructured_log", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7", "timestamp": "2026-12-01T10:00:00Z",
            "message": format!("log {i}"), "severity": "info", "attributes": {}}})
    };
    // Sent at once: each refused request is held for room (`backpressure_ms`) before its 503.
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..40 {
        let req = s
            .client
            .post(format!("{}/v1/telemetry/events", s.base))
            .header("content-type", "application/json")
            .body(event(i).to_string());
        sends.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let mut refused = 0;
    while let Some(status) = sends.join_next().await {
        match status.unwrap() {
            503 => refused += 1,
            status => assert_eq!(status, 200),
        }
    }
    assert!(refused > 0, "ingestion was never refused");
    let res = s.get_response("/v1/models").await;
    assert_eq!(res.status(), 200);
    let trace = res.headers()["x-trace-id"].to_str().unwrap().to_string();
    let stats = s.telemetry.stats();
    assert_eq!(
        stats.room_waits.load(Ordering::Relaxed),
        0,
        "the API request found room without waiting"
    );
    release.store(true, Ordering::SeqCst);
    s.flush().await;
    assert_eq!(spans_of(&s, &trace).len(), 1, "its span was kept");
    s.stop().await;
}
