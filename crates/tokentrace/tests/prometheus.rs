//! A real Prometheus scrapes tokentrace's /metrics; the seed's four PromQL queries return what
//! the requests sent imply. promtool accepts deploy/'s config and alert rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{signal, start, wait_exit};
use serde_json::{Value, json};

/// Stops a child process even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deploy(file: &str) -> String {
    format!("{}/../../deploy/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is missing; run scripts/test (it installs the Debian package prometheus)"
    );
}

#[test]
fn promtool_accepts_the_deploy_config_and_rules() {
    tool("promtool");
    for args in [
        vec!["check", "config", &deploy("prometheus.yml")],
        vec!["check", "rules", &deploy("alerts.yml")],
    ] {
        let out = Command::new("promtool").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exprs = dashboard_exprs();
    for seed in [
        "sum(llama_stack_tokens_total)",
        "sum by (model_id) (llama_stack_tokens_total)",
        "rate(llama_stack_tokens_total[5m])",
        "sum by (provider_id) (llama_stack_tokens_total)",
    ] {
        assert!(
            exprs.iter().any(|e| e == seed),
            "the dashboard uses the seed's query {seed}"
        );
    }
}

/// Every query of the Grafana dashboard in deploy/.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/tokentrace-dashboard.json")).unwrap(),
    )
    .unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The Prometheus HTTP API's answer to an instant query, whole.
fn api_query(rt: &tokio::runtime::Runtime, prom: &str, q: &str) -> Value {
    rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{prom}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
}

fn query(rt: &tokio::runtime::Runtime, prom: &str, q: &str) -> Vec<(HashMap<String, String>, f64)> {
    api_query(rt, prom, q)["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (labels, r["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

fn wait_for(rt: &tokio::runtime::Runtime, prom: &str, q: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = query(rt, prom, q);
        if r.first().is_some_and(|(_, v)| *v == want) {
            return;
        }
        assert!(Instant::now() < deadline, "{q} never reached {want}: {r:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn send(
    rt: &tokio::runtime::Runtime,
    base: &str,
    model: &str,
    n: usize,
    totals: &mut HashMap<(String, String), f64>,
) {
    let provider = if model == "m1" { "echo" } else { "echo2" };
    rt.block_on(async {
        for i in 0..n {
            let body: Value = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": model, "messages": [{"role": "user", "content": format!("count the tokens of request {i} please")}]}))
                .send().await.unwrap().json().await.unwrap();
            *totals.entry((model.to_string(), provider.to_string())).or_default() += body["usage"]["total_tokens"].as_f64().unwrap();
        }
    });
}

#[test]
fn prometheus_answers_the_seed_queries_with_the_tokens_sent() {
    tool("prometheus");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(&config, format!(
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n      sinks: sqlite\n      sqlite_db_path: {}/trace_store.db\n  inference:\n  - provider_id: echo\n    provider_type: inline::echo\n  - provider_id: echo2\n    provider_type: inline::echo\nmodels:\n- model_id: m1\n  provider_id: echo\n- model_id: m2\n  provider_id: echo2\n",
        dir.path().display())).unwrap();
    let mut server = start(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let target = server.base.trim_start_matches("http://").to_string();
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(&prom_config, format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tokentrace\n    static_configs:\n      - targets: [\"{target}\"]\n")).unwrap();
    let mut prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rt.block_on(async {
        reqwest::get(format!("{prom_url}/-/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    }) {
        assert!(
            Instant::now() < deadline,
            "prometheus did not start; exit status {:?}",
            prom.0.try_wait()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut totals = HashMap::new();
    send(&rt, &server.base, "m1", 3, &mut totals);
    send(&rt, &server.base, "m2", 2, &mut totals);
    let first: f64 = totals.values().sum();
    wait_for(&rt, &prom_url, "sum(llama_stack_tokens_total)", first);
    // a second wave, so that the counters move between scrapes
    send(&rt, &server.base, "m1", 4, &mut totals);
    let total: f64 = totals.values().sum();
    wait_for(&rt, &prom_url, "sum(llama_stack_tokens_total)", total);

    let by_model: HashMap<String, f64> = query(
        &rt,
        &prom_url,
        "sum by (model_id) (llama_stack_tokens_total)",
    )
    .into_iter()
    .map(|(l, v)| (l["model_id"].clone(), v))
    .collect();
    let by_provider: HashMap<String, f64> = query(
        &rt,
        &prom_url,
        "sum by (provider_id) (llama_stack_tokens_total)",
    )
    .into_iter()
    .map(|(l, v)| (l["provider_id"].clone(), v))
    .collect();
    for ((model, provider), t) in &totals {
        assert_eq!(by_model[model], *t, "tokens of {model}");
        assert_eq!(by_provider[provider], *t, "tokens of {provider}");
    }
    let rates = query(&rt, &prom_url, "rate(llama_stack_tokens_total[5m])");
    let m1 = rates
        .iter()
        .find(|(l, _)| l["model_id"] == "m1")
        .expect("a rate series for m1");
    assert_eq!(m1.0["provider_id"], "echo");
    assert!(m1.1 > 0.0, "tokens per second of m1: {}", m1.1);

    // The store's transactions as histograms: one observation per commit, every row counted.
    wait_for(
        &rt,
        &prom_url,
        "tokentrace_sqlite_commit_seconds_count - tokentrace_sqlite_batches_committed_total",
        0.0,
    );
    wait_for(
        &rt,
        &prom_url,
        "tokentrace_sqlite_batch_rows_sum - tokentrace_sqlite_rows_committed_total",
        0.0,
    );
    let rows = query(&rt, &prom_url, "tokentrace_sqlite_rows_committed_total");
    assert!(rows.first().is_some_and(|(_, v)| *v > 0.0), "{rows:?}");
    // The writer's time writing batches: each measured inside the commit its histogram
    // observes, so more than nothing and no more than the commits' sum (of the same scrape).
    let write = query(
        &rt,
        &prom_url,
        "tokentrace_sqlite_writer_busy_seconds_total{work=\"write\"}",
    );
    let commits = query(&rt, &prom_url, "tokentrace_sqlite_commit_seconds_sum");
    match (write.first(), commits.first()) {
        (Some((_, w)), Some((_, c))) => assert!(*w > 0.0 && *w <= c + 1e-6, "{w} {c}"),
        _ => panic!("{write:?} {commits:?}"),
    }
    let kinds = query(
        &rt,
        &prom_url,
        "tokentrace_sqlite_writer_busy_seconds_total",
    );
    let mut works: Vec<&str> = kinds.iter().map(|(l, _)| l["work"].as_str()).collect();
    works.sort();
    assert_eq!(works, ["merge", "retention", "write"]);
    let p99 = query(
        &rt,
        &prom_url,
        "histogram_quantile(0.99, tokentrace_sqlite_commit_seconds_bucket)",
    );
    assert!(
        p99.first()
            .is_some_and(|(_, v)| v.is_finite() && *v > 0.0 && *v <= 5.0),
        "commit p99: {p99:?}"
    );
    // The commit lag of sampled messages: from acceptance to the commit of their rows.
    let lags = query(&rt, &prom_url, "tokentrace_commit_lag_seconds_count");
    assert!(lags.first().is_some_and(|(_, v)| *v > 0.0), "{lags:?}");
    let lag = query(
        &rt,
        &prom_url,
        "histogram_quantile(0.5, tokentrace_commit_lag_seconds_bucket)",
    );
    assert!(
        lag.first()
            .is_some_and(|(_, v)| v.is_finite() && *v > 0.0 && *v <= 10.0),
        "commit lag p50: {lag:?}"
    );

    // A streaming request, so that the time-to-first-token histogram exists too.
    rt.block_on(async {
        let sse = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.base))
            .json(&json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "stream this"}]}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(sse.contains("data: [DONE]"), "{sse}");
    });
    wait_for(
        &rt,
        &prom_url,
        "count(llama_stack_time_to_first_token_seconds_count)",
        1.0,
    );

    // Every dashboard query is one this Prometheus accepts, over series tokentrace serves (the
    // exporter series exist only with the OTLP sinks, which this server does not run).
    let series: Vec<String> = rt.block_on(async {
        let body: Value = reqwest::get(format!("{prom_url}/api/v1/label/__name__/values"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        serde_json::from_value(body["data"].clone()).unwrap()
    });
    for expr in dashboard_exprs() {
        let body = api_query(&rt, &prom_url, &expr);
        assert_eq!(body["status"], "success", "{expr}: {body}");
        let named = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("llama_stack_") || w.starts_with("tokentrace_"))
            .filter(|w| !w.starts_with("tokentrace_exporter_"));
        for name in named {
            assert!(series.iter().any(|s| s == name), "{expr}: no series {name}");
        }
    }

    drop(prom);
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).success());
}
