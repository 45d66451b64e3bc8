//! `tokentrace`: telemetry for LLM applications. `tokentrace serve` runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokentrace_config::{RunConfig, SinkKind};
use tokentrace_pipeline::sinks::console::ConsoleSink;
use tokentrace_pipeline::sinks::otlp::{ExportConfig, OtlpMetricSink, OtlpTraceSink};
use tokentrace_pipeline::sinks::prometheus::{PrometheusSink, Registry, commit_observer};
use tokentrace_pipeline::sinks::sqlite::SqliteSink;
use tokentrace_pipeline::{Pipeline, PipelineOptions, Sink};
use tokentrace_server::AppState;
use tokentrace_store::{Store, StoreOptions};

/// Events are built on the request threads and freed on the pipeline and store threads; glibc's
/// allocator handles that cross-thread pattern poorly (about a fifth of request-thread CPU in the
/// gateway benchmark), mimalloc well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tokentrace", version, about = "Telemetry for LLM applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (telemetry API, trace store, sinks).
    Serve {
        /// Run config (YAML). Without it the embedded defaults apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this port instead of the config's `server.port`.
        #[arg(long, short)]
        port: Option<u16>,
        /// Listen on this address instead of the config's `server.host`.
        #[arg(long)]
        host: Option<String>,
    },
    /// Print the effective default run config.
    DefaultConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOKENTRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, port, host } => serve(config, port, host),
        Command::DefaultConfig => {
            print!("{}", tokentrace_config::DEFAULT_CONFIG_YAML);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tokentrace: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    config_path: Option<PathBuf>,
    port: Option<u16>,
    host: Option<String>,
) -> Result<(), String> {
    let mut config =
        tokentrace_config::load(config_path.as_deref(), &tokentrace_config::process_env)
            .map_err(|e| e.to_string())?;
    if let Some(port) = port {
        config.server.port = port;
    }
    if let Some(host) = host {
        config.server.host = host;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(run(config))
}

async fn run(config: RunConfig) -> Result<(), String> {
    let tc = &config.telemetry;
    let addr: SocketAddr = format!("{}:{}", config.server.host, config.server.port)
        .parse()
        .map_err(|e| format!("server.host/server.port: not a socket address ({e})"))?;

    let registry = Arc::new(Registry::new());
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(PrometheusSink::new(registry.clone()))];
    let mut store = None;
    let mut exporters = Vec::new();
    for kind in &tc.sinks {
        match kind {
            SinkKind::Console => sinks.push(Box::new(ConsoleSink::stderr(
                tc.console.color,
                tc.console.max_value_len,
            ))),
            SinkKind::Sqlite => {
                let options = StoreOptions {
                    retention_interval: Duration::from_secs(tc.retention_interval_seconds),
                    thread_nice: tc.thread_nice,
                    on_commit: Some(commit_observer(registry.clone())),
                    ..StoreOptions::default()
                };
                let opened = Store::open(&tc.sqlite_db_path, options).map_err(|e| {
                    format!(
                        "cannot open the trace store {}: {e}",
                        tc.sqlite_db_path.display()
                    )
                })?;
                sinks.push(Box::new(SqliteSink::new(opened.writer())));
                store = Some(opened);
            }
            SinkKind::OtelTrace => {
                let endpoint = tc
                    .otel_exporter_otlp_endpoint
                    .as_deref()
                    .unwrap_or_default();
                let config = ExportConfig {
                    thread_nice: tc.thread_nice,
                    ..ExportConfig::from_env(endpoint, "traces", &tokentrace_config::process_env)
                };
                tracing::info!("otel_trace: exporting spans to {}", config.url);
                let sink = OtlpTraceSink::start(config, &tc.service_name)
                    .map_err(|e| format!("cannot start the otel_trace exporter: {e}"))?;
                exporters.push(("traces", sink.stats()));
                sinks.push(Box::new(sink));
            }
            SinkKind::OtelMetric => {
                let endpoint = tc
                    .otel_exporter_otlp_endpoint
                    .as_deref()
                    .unwrap_or_default();
                let config = ExportConfig {
                    thread_nice: tc.thread_nice,
                    ..ExportConfig::from_env(endpoint, "metrics", &tokentrace_config::process_env)
                };
                let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .map_or(Duration::from_secs(60), Duration::from_millis);
                tracing::info!(
                    "otel_metric: exporting metrics to {} every {:?}",
                    config.url,
                    interval
                );
                let sink = OtlpMetricSink::start(config, &tc.service_name, interval)
                    .map_err(|e| format!("cannot start the otel_metric exporter: {e}"))?;
                exporters.push(("metrics", sink.stats()));
                sinks.push(Box::new(sink));
            }
        }
    }

    let pipeline = Pipeline::start(
        PipelineOptions {
            queue_capacity: tc.queue_capacity,
            span_timeout: Duration::from_secs(tc.span_timeout_seconds),
            default_ttl_seconds: tc.default_ttl_seconds,
            service_name: tc.service_name.clone(),
            thread_nice: tc.thread_nice,
            ..PipelineOptions::default()
        },
        sinks,
    )
    .map_err(|e| format!("cannot start the telemetry pipeline: {e}"))?;

    let handles = store.as_ref().map(|s| (s.reader(), s.writer()));
    let retention = store.as_ref().map(|s| {
        tokentrace_server::spawn_retention(
            s.writer(),
            Duration::from_secs(tc.retention_interval_seconds.max(1)),
        )
    });
    let inference = tokentrace_server::Inference::new(&config.inference)?;
    let mut state = AppState::new(
        pipeline.telemetry(),
        handles,
        config.server.max_body_bytes,
        inference,
    );
    state.request_timeout = Duration::from_secs(config.server.request_timeout_seconds);
    state.backpressure = Duration::from_millis(tc.backpressure_ms);
    state.capture_content = tc.capture_content;
    state.trace_telemetry_api = config.server.trace_telemetry_api;
    state.metrics = registry;
    state.otlp_max_body_bytes = config.server.otlp_max_body_bytes;
    state.exporters = exporters;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let sink_names: Vec<&str> = tc.sinks.iter().map(|s| s.as_str()).collect();
    let models: Vec<&str> = config
        .inference
        .models
        .iter()
        .map(|m| m.model_id.as_str())
        .collect();
    tracing::info!(
        "tokentrace listening on http://{local}  sinks: {}  models: {}  store: {}",
        sink_names.join(","),
        models.join(","),
        store
            .as_ref()
            .map_or("(none)".to_string(), |s| s.path().display().to_string())
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let otlp = match config.server.otlp_port {
        Some(port) => {
            let otlp_addr: SocketAddr = format!("{}:{port}", config.server.host)
                .parse()
                .map_err(|e| format!("server.otlp_port: not a socket address ({e})"))?;
            let l = tokio::net::TcpListener::bind(otlp_addr)
                .await
                .map_err(|e| format!("cannot listen on {otlp_addr} (server.otlp_port): {e}"))?;
            let otlp_local = l
                .local_addr()
                .map_err(|e| format!("cannot read the listening address: {e}"))?;
            tracing::info!("OTLP/HTTP receiver listening on http://{otlp_local}");
            let app = tokentrace_server::otlp_router(state.clone());
            let rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(stopped(rx))
                    .await
            }))
        }
        None => None,
    };
    let served = axum::serve(listener, tokentrace_server::router(state))
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
    if let Some(o) = otlp {
        match o.await {
            Ok(Err(e)) => tracing::error!("OTLP receiver: {e}"),
            Err(e) => tracing::error!("OTLP receiver task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(r) = retention {
        r.abort();
    }
    tracing::info!("stopping: flushing accepted telemetry");
    // Drain the pipeline and commit the store off the async runtime.
    tokio::task::spawn_blocking(move || {
        pipeline.shutdown();
        if let Some(store) = store {
            store
                .close()
                .map_err(|e| format!("closing the trace store: {e}"))?;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|e| format!("shutdown task failed: {e}"))??;
    served.map_err(|e| format!("server error: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
