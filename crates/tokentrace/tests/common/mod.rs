//! Runs the real `tokentrace` binary for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub stderr: mpsc::Receiver<String>,
    /// What it printed before it listened.
    pub started: Vec<String>,
}

impl Drop for Server {
    /// A failed test must not leave the server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `tokentrace serve --port 0` with a private data dir and waits for it to listen.
pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokentrace"));
    cmd.arg("serve").args(["--port", "0"]).args(args);
    start_command(cmd, dir, env)
}

/// Starts `cmd` (a `tokentrace serve --port 0`, maybe behind a shell) as [`start`] does.
pub fn start_command(mut cmd: Command, dir: &Path, env: &[(&str, &str)]) -> Server {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // keep draining so the server never blocks on a full pipe
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut started = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("server did not start; status {:?}", child.try_wait()));
        if let Some(rest) = line.split("listening on ").nth(1) {
            let base = rest.split_whitespace().next().unwrap().to_string();
            return Server {
                child,
                base,
                stderr: rx,
                started,
            };
        }
        started.push(line);
    }
}

/// Writes `run.yaml` in `dir`: the telemetry provider with only the sqlite sink, its store
/// `dir/trace_store.db`, plus `extra` (lines of the provider's config, each indented six
/// spaces). Returns the config's path.
pub fn sqlite_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("run.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}\n{extra}",
            dir.join("trace_store.db").display()
        ),
    )
    .unwrap();
    config
}

/// An OTLP attribute.
pub fn kv(
    key: &str,
    value: tokentrace_otlp::proto::common::v1::any_value::Value,
) -> tokentrace_otlp::proto::common::v1::KeyValue {
    tokentrace_otlp::proto::common::v1::KeyValue {
        key: key.into(),
        value: Some(tokentrace_otlp::proto::common::v1::AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A port nobody listens on now (for a server or fake upstream the test starts later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails with install instructions unless Python can import these modules.
pub fn require_python(modules: &str) {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .expect("python3 is needed for the compatibility tests");
    assert!(
        probe.status.success(),
        "Python packages are missing ({modules}); run scripts/test, which installs them\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

/// Runs one of the Python scripts beside the tests against a server; fails with its output
/// unless it succeeds and prints `done`.
pub fn run_python(script: &str, args: &[&str], env: &[(&str, &str)], done: &str) {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(done),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `sample` (a metric's name, with its labels if it has any) in a
/// Prometheus text exposition, if it is there.
pub fn metric_sample(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
