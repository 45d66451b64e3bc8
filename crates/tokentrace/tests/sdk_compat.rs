//! The official Python `openai` and `llama-stack-client==0.2.12` SDKs, unmodified, against the
//! running binary (`scripts/test` installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{signal, start, wait_exit};

const MODEL: &str = "meta-llama/Llama-3.2-3B-Instruct";

#[test]
fn official_sdks_are_traced_and_counted() {
    let probe = Command::new("python3")
        .args(["-c", "import openai, llama_stack_client"])
        .output()
        .expect("python3 is needed for the SDK compatibility test");
    assert!(
        probe.status.success(),
        "the Python SDKs are missing; run scripts/test, or: pip install openai llama-stack-client==0.2.12 fire\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_compat.py");
    let out = Command::new("python3")
        .args([script, &server.base, MODEL])
        .output()
        .unwrap();
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
    assert!(
        out.status.success(),
        "SDK checks failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all SDK checks passed"));
}
