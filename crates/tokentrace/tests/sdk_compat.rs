//! The official Python `openai` and `llama-stack-client==0.2.12` SDKs, unmodified, against the
//! running binary (`scripts/test` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{require_python, run_python, signal, start, wait_exit};

const MODEL: &str = "meta-llama/Llama-3.2-3B-Instruct";

#[test]
fn official_sdks_are_traced_and_counted() {
    require_python("openai, llama_stack_client");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: echo\n    provider_type: inline::echo\nmodels:\n- model_id: {MODEL}\n  provider_id: echo\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    run_python(
        "sdk_compat.py",
        &[&server.base, MODEL],
        &[],
        "all SDK checks passed",
    );
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
}
