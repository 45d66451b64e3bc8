//! Real instrumentation packages (opentelemetry-instrumentation-openai-v2, OpenLLMetry,
//! OpenInference) around the official `openai` SDK, exporting to the OTLP receiver, calling a
//! fake provider directly and through the gateway: tokens, model, messages, cost, user and
//! session come out right, and each call is counted once. `scripts/test` installs the packages,
//! pinned (`genai_requirements.txt`), into `target/py-genai`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{free_port, signal, start, wait_exit};

#[test]
fn instrumented_applications_are_understood_priced_and_counted_once() {
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/py-genai/bin/python"
    );
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run scripts/test, which installs the instrumentation packages"
    );
    let (otlp_port, upstream_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "server:
  otlp_port: {otlp_port}
providers:
  telemetry:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
    config:
      sinks: sqlite
      sqlite_db_path: {}/trace_store.db
  inference:
  - provider_id: openai
    provider_type: remote::openai
    config:
      url: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-upstream
models:
- model_id: gpt-4o-mini
  provider_id: openai
- model_id: priced-alias
  provider_id: openai
  provider_model_id: house-model
  pricing: {{input_per_million: 1.0, output_per_million: 2.0, cached_input_per_million: 0.5}}
- model_id: my-finetune
  provider_id: openai
",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/genai_compat.py");
    for inst in ["plain", "otel_genai", "openllmetry", "openinference"] {
        let out = Command::new(python)
            .args([
                script,
                inst,
                &server.base,
                &otlp,
                &upstream_port.to_string(),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success() && stdout.contains("all GenAI checks passed"),
            "{inst} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
}
