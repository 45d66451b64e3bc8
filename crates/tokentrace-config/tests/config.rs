//! Run config loading: defaults, environment variables, substitution, and error messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use tokentrace_config::{ColorChoice, SinkKind, load, load_from_str, substitute_env};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn telemetry_yaml(config: &str) -> String {
    format!(
        "providers:\n  telemetry:\n  - provider_id: meta-reference\n    provider_type: inline::meta-reference\n    config:\n{}",
        config
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    )
}

#[test]
fn defaults_without_a_file() {
    let c = load(None, &env_of(&[])).unwrap();
    assert_eq!(c.server.host, "127.0.0.1");
    assert_eq!(c.server.port, 8321);
    assert_eq!(c.telemetry.service_name, "tokentrace");
    assert_eq!(c.telemetry.sinks, [SinkKind::Console, SinkKind::Sqlite]);
    assert_eq!(c.telemetry.otel_exporter_otlp_endpoint, None);
    assert!(
        c.telemetry
            .sqlite_db_path
            .ends_with("tokentrace/trace_store.db"),
        "{:?}",
        c.telemetry.sqlite_db_path
    );
    assert_eq!(c.telemetry.default_ttl_seconds, 604_800);
    assert_eq!(c.telemetry.console.color, ColorChoice::Auto);
    assert_eq!(c.telemetry.backpressure_ms, 1_000);
    assert_eq!(c.telemetry.thread_nice, 10);
}

#[test]
fn backpressure_and_thread_priority_are_set_and_checked() {
    let env = env_of(&[]);
    let c = load_from_str(
        &telemetry_yaml("backpressure_ms: 0\nthread_nice: 0"),
        "run.yaml",
        &env,
    )
    .unwrap();
    assert_eq!(c.telemetry.backpressure_ms, 0);
    assert_eq!(c.telemetry.thread_nice, 0);
    for bad in ["thread_nice: 20", "thread_nice: -1"] {
        let e = load_from_str(&telemetry_yaml(bad), "run.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("providers.telemetry[0].config.thread_nice") && e.contains("0 and 19"),
            "{e}"
        );
    }
    let e = load_from_str(&telemetry_yaml("backpressure_ms: soon"), "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("backpressure_ms") && e.contains("soon"), "{e}");
}

#[test]
fn every_queue_bound_is_set_and_checked() {
    let env = env_of(&[]);
    let d = load(None, &env).unwrap().telemetry;
    assert_eq!(
        (
            d.max_open_spans,
            d.max_open_bytes,
            d.sqlite_queue_max_bytes,
            d.otel_queue_max_bytes
        ),
        (100_000, 64 << 20, 16 << 20, 8 << 20)
    );
    let c = load_from_str(
        &telemetry_yaml(
            "max_open_spans: 500\nmax_open_bytes: 2097152\nsqlite_queue_max_bytes: 4194304\notel_queue_max_bytes: 1048576",
        ),
        "run.yaml",
        &env,
    )
    .unwrap();
    let t = &c.telemetry;
    assert_eq!(
        (
            t.max_open_spans,
            t.max_open_bytes,
            t.sqlite_queue_max_bytes,
            t.otel_queue_max_bytes
        ),
        (500, 2 << 20, 4 << 20, 1 << 20)
    );
    // The effective config shows them, and reads back the same.
    let shown = load_from_str(&c.effective_yaml(), "effective", &env).unwrap();
    assert_eq!(shown.telemetry, c.telemetry);
    for (bad, key, says) in [
        ("max_open_spans: 0", "max_open_spans", "must be positive"),
        ("max_open_bytes: 1000", "max_open_bytes", "at least 1048576"),
        (
            "sqlite_queue_max_bytes: 65536",
            "sqlite_queue_max_bytes",
            "at least 1048576",
        ),
        (
            "otel_queue_max_bytes: 0",
            "otel_queue_max_bytes",
            "at least 1048576",
        ),
    ] {
        let e = load_from_str(&telemetry_yaml(bad), "run.yaml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("providers.telemetry[0].config.{key}")) && e.contains(says),
            "{bad}: {e}"
        );
    }
}

#[test]
fn the_seed_environment_variables_apply_with_and_without_a_file() {
    let env = env_of(&[
        ("OTEL_SERVICE_NAME", "my-app"),
        ("TELEMETRY_SINKS", "sqlite, otel_trace"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("SQLITE_STORE_DIR", "/var/lib/tt"),
    ]);
    for c in [
        load(None, &env).unwrap(),
        load_from_str("version: 2\n", "run.yaml", &env).unwrap(),
    ] {
        assert_eq!(c.telemetry.service_name, "my-app");
        assert_eq!(c.telemetry.sinks, [SinkKind::Sqlite, SinkKind::OtelTrace]);
        assert_eq!(
            c.telemetry.otel_exporter_otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(
            c.telemetry.sqlite_db_path.to_str().unwrap(),
            "/var/lib/tt/trace_store.db"
        );
    }
}

#[test]
fn substitution_forms() {
    let env = env_of(&[("SET", "x"), ("EMPTY", "")]);
    assert_eq!(substitute_env("a${env.SET}b", &env).unwrap(), "axb");
    assert_eq!(substitute_env("${env.UNSET:=dflt}", &env).unwrap(), "dflt");
    assert_eq!(substitute_env("${env.EMPTY:=dflt}", &env).unwrap(), "dflt");
    assert_eq!(substitute_env("${env.SET:=dflt}", &env).unwrap(), "x");
    assert_eq!(substitute_env("${env.SET:+on}", &env).unwrap(), "on");
    assert_eq!(substitute_env("${env.UNSET:+on}", &env).unwrap(), "");
    assert_eq!(
        substitute_env("${env.UNSET:=${env.SET}}/f", &env).unwrap(),
        "x/f"
    );
    let err = substitute_env("${env.NEEDED}", &env).unwrap_err();
    assert!(err.contains("NEEDED"), "{err}");
    assert!(substitute_env("${env.X", &env).is_err());
    assert!(substitute_env("${nope}", &env).is_err());
}

#[test]
fn a_variable_cannot_inject_yaml_structure() {
    let env = env_of(&[("NAME", "svc\nsinks: [otel_trace]")]);
    let c = load_from_str(
        &telemetry_yaml("service_name: ${env.NAME}"),
        "run.yaml",
        &env,
    )
    .unwrap();
    assert_eq!(c.telemetry.service_name, "svc\nsinks: [otel_trace]");
    assert_eq!(c.telemetry.sinks, [SinkKind::Console, SinkKind::Sqlite]);
}

#[test]
fn sinks_as_list_or_string() {
    let env = env_of(&[]);
    let c = load_from_str(
        &telemetry_yaml("sinks: [sqlite, console, sqlite]"),
        "f",
        &env,
    )
    .unwrap();
    assert_eq!(c.telemetry.sinks, [SinkKind::Sqlite, SinkKind::Console]);
    let c = load_from_str(&telemetry_yaml("sinks: 'console,,sqlite '"), "f", &env).unwrap();
    assert_eq!(c.telemetry.sinks, [SinkKind::Console, SinkKind::Sqlite]);
    let c = load_from_str(
        &telemetry_yaml("sinks: ${env.TELEMETRY_SINKS:=console,sqlite}"),
        "f",
        &env,
    )
    .unwrap();
    assert_eq!(c.telemetry.sinks, [SinkKind::Console, SinkKind::Sqlite]);
}

#[test]
fn errors_name_the_key_and_the_valid_values() {
    let env = env_of(&[]);
    let e = load_from_str(&telemetry_yaml("sinks: [console, kafka]"), "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("providers.telemetry[0].config.sinks")
            && e.contains("kafka")
            && e.contains("otel_metric"),
        "{e}"
    );

    let e = load(None, &env_of(&[("TELEMETRY_SINKS", "kafka")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("kafka") && e.contains("console, sqlite"), "{e}");

    let e = load_from_str(
        &telemetry_yaml("service_name: ${env.REQUIRED_NAME}"),
        "run.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("REQUIRED_NAME") && e.contains("service_name"),
        "{e}"
    );

    let e = load_from_str(&telemetry_yaml("sinkz: [console]"), "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sinkz") && e.contains("sqlite_db_path"), "{e}");

    let e = load_from_str("server:\n  port: 99999\n", "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.port"), "{e}");

    let e = load_from_str("server:\n  max_connections: 0\n", "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.max_connections") && e.contains("at least 1"),
        "{e}"
    );
    let c = load_from_str("server:\n  max_connections: 64\n", "run.yaml", &env).unwrap();
    assert_eq!(c.server.max_connections, 64);
    assert_eq!(load(None, &env).unwrap().server.max_connections, 1024);

    let e = load_from_str("server:\n  port: ${env.PORT:=eighty}\n", "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.port") && e.contains("eighty"), "{e}");

    let e = load_from_str(&telemetry_yaml("sinks: [otel_metric]"), "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("otel_exporter_otlp_endpoint") && e.contains("otel_metric"),
        "{e}"
    );

    let e = load_from_str(
        &telemetry_yaml("otel_exporter_otlp_endpoint: localhost:4318"),
        "run.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("http://"), "{e}");

    let e = load_from_str(
        "providers:\n  telemetry:\n  - provider_id: x\n    provider_type: remote::other\n",
        "run.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inline::meta-reference"), "{e}");

    let e = load_from_str("server: [1, 2\n", "run.yaml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("run.yaml") && e.contains("line"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn numbers_from_variables_home_expansion_and_unknown_top_level_keys() {
    let env = env_of(&[("PORT", "9000")]);
    let c = load_from_str(
        &format!(
            "image_name: x\napis: [telemetry]\nserver:\n  port: ${{env.PORT:=8321}}\n{}",
            telemetry_yaml("sqlite_db_path: ~/tt/trace.db\nconsole:\n  color: never")
        ),
        "run.yaml",
        &env,
    )
    .unwrap();
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.telemetry.console.color, ColorChoice::Never);
    let p = c.telemetry.sqlite_db_path.to_str().unwrap().to_string();
    assert!(p.ends_with("/tt/trace.db") && !p.starts_with('~'), "{p}");
}

#[test]
fn a_real_file_and_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.yaml");
    std::fs::write(
        &path,
        telemetry_yaml("service_name: from-file\nsinks: sqlite"),
    )
    .unwrap();
    let c = load(Some(&path), &env_of(&[])).unwrap();
    assert_eq!(c.telemetry.service_name, "from-file");
    assert_eq!(c.telemetry.sinks, [SinkKind::Sqlite]);
    let e = load(Some(&dir.path().join("nope.yaml")), &env_of(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.yaml"), "{e}");
}

#[test]
fn inference_providers_and_models() {
    use tokentrace_config::{ModelType, ProviderKind};
    let env = env_of(&[
        ("VLLM_URL", "http://gpu:8000/v1/"),
        ("OLLAMA_URL", "http://box:11434"),
    ]);
    let yaml = "providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config:
      url: ${env.VLLM_URL}
      api_token: secret
      tls_verify: true
      timeout_seconds: 5
  - provider_id: ollama
    provider_type: remote::ollama
    config:
      url: ${env.OLLAMA_URL}
models:
- model_id: llama
  provider_id: vllm
  provider_model_id: meta-llama/Llama-3.1-8B-Instruct
- model_id: nomic
  provider_id: ollama
  model_type: embedding
";
    let c = load_from_str(yaml, "run.yaml", &env).unwrap();
    let p = &c.inference.providers;
    assert_eq!(
        (
            p[0].kind,
            p[0].url.as_deref(),
            p[0].api_key.as_deref(),
            p[0].timeout_seconds
        ),
        (
            ProviderKind::OpenAiCompatible,
            Some("http://gpu:8000/v1"),
            Some("secret"),
            5
        )
    );
    assert_eq!(p[1].url.as_deref(), Some("http://box:11434/v1"));
    let m = &c.inference.models;
    assert_eq!(m[0].provider_model_id, "meta-llama/Llama-3.1-8B-Instruct");
    assert_eq!(
        (m[1].provider_model_id.as_str(), m[1].model_type),
        ("nomic", ModelType::Embedding)
    );

    let defaults = load(None, &env_of(&[])).unwrap();
    assert_eq!(defaults.inference.providers[0].kind, ProviderKind::Echo);
    assert_eq!(defaults.inference.models[0].model_id, "echo");
    assert!(defaults.telemetry.capture_content);

    let e = load_from_str(
        "providers:\n  inference:\n  - provider_id: x\n    provider_type: remote::bedrock\n",
        "run.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("providers.inference[0].provider_type") && e.contains("remote::vllm"),
        "{e}"
    );
    let e = load_from_str(
        "providers:\n  inference:\n  - provider_id: x\n    provider_type: remote::vllm\n",
        "run.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.url"), "{e}");
    let e = load_from_str("providers:\n  inference:\n  - provider_id: x\n    provider_type: inline::echo\nmodels:\n- model_id: m\n  provider_id: nope\n", "run.yaml", &env).unwrap_err().to_string();
    assert!(
        e.contains("models[0].provider_id") && e.contains("\"nope\""),
        "{e}"
    );
}

#[test]
fn indexed_attributes_default_to_the_keys_people_filter_by_and_bad_keys_are_named() {
    let c = load(None, &env_of(&[])).unwrap();
    for key in [
        "model_id",
        "user.id",
        "session.id",
        "gen_ai.conversation.id",
        "name",
        "status",
    ] {
        assert!(
            c.telemetry.indexed_attributes.iter().any(|k| k == key),
            "{key}"
        );
    }
    let c = load_from_str(
        &telemetry_yaml("indexed_attributes: [tenant]"),
        "t",
        &env_of(&[]),
    )
    .unwrap();
    assert_eq!(c.telemetry.indexed_attributes, ["tenant"]);
    for (bad, why) in [
        ("''", "empty"),
        ("'a\"b'", "quotes"),
        ("\"a\\tb\"", "control"),
    ] {
        let e = load_from_str(
            &telemetry_yaml(&format!("indexed_attributes: [ok, {bad}]")),
            "t",
            &env_of(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("providers.telemetry[0].config.indexed_attributes[1]") && e.contains(why),
            "{bad}: {e}"
        );
    }
}
