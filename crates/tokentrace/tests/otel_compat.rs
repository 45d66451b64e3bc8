//! The official OpenTelemetry Python SDK exporting an application's spans to the OTLP receiver
//! on its own port, around an `openai` call through the gateway (`scripts/test` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_python, run_python, signal, start, wait_exit};

const MODEL: &str = "meta-llama/Llama-3.2-3B-Instruct";

#[test]
fn an_application_trace_joins_the_gateway_spans_in_one_store() {
    require_python(
        "openai, llama_stack_client, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
    );
    let otlp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  otlp_port: {otlp_port}\nproviders:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: echo\n    provider_type: inline::echo\nmodels:\n- model_id: {MODEL}\n  provider_id: echo\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    run_python(
        "otel_compat.py",
        &[&server.base, MODEL],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
        "all OpenTelemetry checks passed",
    );
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
}
