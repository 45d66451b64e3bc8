//! `tokentrace serve`: start-up (each configured sink built through its `SinkConfig` in one
//! loop), signal handling and orderly shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokentrace_config::RunConfig;
use tokentrace_pipeline::sinks::prometheus::{PrometheusSink, Registry};
use tokentrace_pipeline::sinks::{BuildError, SinkConfig};
use tokentrace_pipeline::{Pipeline, PipelineOptions, Sink};
use tokentrace_server::gateway::ProviderSetupError;
use tokentrace_server::{AppState, Settings};

/// How long a client may take to send a request's head (line and headers) once it connects or
/// after its last request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `tokentrace serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] tokentrace_config::ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{key}: not a socket address ({source})")]
    Address {
        key: &'static str,
        source: std::net::AddrParseError,
    },
    #[error(transparent)]
    Sink(#[from] BuildError),
    #[error("cannot start the telemetry pipeline: {0}")]
    Pipeline(std::io::Error),
    #[error(transparent)]
    Provider(#[from] ProviderSetupError),
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("server.auth.config.jwks.file: {0}")]
    Jwks(String),
    #[error("closing the trace store: {0}")]
    Close(tokentrace_store::StoreError),
    #[error("shutdown task failed: {0}")]
    Shutdown(tokio::task::JoinError),
    #[error(
        "server.host {0} is reachable from other machines and server.auth is not set: configure server.auth (docs/SECURITY.md), or set server.allow_unauthenticated: true to let anyone who reaches the port read every trace and use the providers"
    )]
    Unprotected(String),
}

pub fn serve(
    config_path: Option<PathBuf>,
    port: Option<u16>,
    host: Option<String>,
) -> Result<(), ServeError> {
    let mut config =
        tokentrace_config::load(config_path.as_deref(), &tokentrace_config::process_env)?;
    if let Some(port) = port {
        config.server.port = port;
    }
    if let Some(host) = host {
        config.server.host = host;
    }
    let server = &config.server;
    if server.auth.is_none()
        && !server.allow_unauthenticated
        && !tokentrace_server::guard::is_loopback(&server.host)
    {
        return Err(ServeError::Unprotected(server.host.clone()));
    }
    open_files_for(server.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(run(config))
}

/// Files the server holds besides its connections: the store's file, WAL and shared memory on
/// the writer's and every read connection, the listeners, the exporters' sockets, stdio.
const FILES_BESIDE_CONNECTIONS: u64 = 64;

/// Raises the soft limit of open files to the hard one, as servers commonly do (many systems
/// start processes with a soft limit of 1,024), and warns when even that leaves less than
/// `server.max_connections` need: connections past it would fail to be accepted.
#[cfg(unix)]
fn open_files_for(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let wanted = max_connections as u64 + FILES_BESIDE_CONNECTIONS;
    let limit = getrlimit(Resource::Nofile);
    let mut current = limit.current;
    if current.is_some_and(|c| c < wanted) && current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(
                    "open-file limit raised from {} to {}",
                    current.unwrap_or(u64::MAX),
                    limit.maximum.map_or("unlimited".into(), |m| m.to_string())
                );
                current = limit.maximum;
            }
            Err(e) => tracing::debug!("cannot raise the open-file limit: {e}"),
        }
    }
    if let Some(c) = current.filter(|c| *c < wanted) {
        tracing::warn!(
            "the open-file limit ({c}) is below server.max_connections ({max_connections}) plus {FILES_BESIDE_CONNECTIONS} for the store and listeners: connections past it cannot be accepted; raise `ulimit -n` (its hard limit) or lower server.max_connections"
        );
    }
}

#[cfg(not(unix))]
fn open_files_for(_max_connections: usize) {}

/// Binds `host:port`; `key` and `what` name the setting in messages.
async fn bind(
    host: &str,
    port: u16,
    key: &'static str,
    what: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|source| ServeError::Address { key, source })?;
    let listen = |source| ServeError::Listen { addr, what, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

async fn run(config: RunConfig) -> Result<(), ServeError> {
    let tc = &config.telemetry;
    // The prometheus sink is always on: it feeds `/metrics`.
    let registry = Arc::new(Registry::new());
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(PrometheusSink::new(registry.clone()))];
    let mut store = None;
    let mut exporters = Vec::new();
    let commits = tokentrace_pipeline::Commits::new();
    for kind in &tc.sinks {
        let built = SinkConfig::from_config(*kind, tc, &tokentrace_config::process_env)
            .build(&registry, &commits)?;
        sinks.push(built.sink);
        store = store.or(built.store);
        exporters.extend(built.exporter);
    }
    let pipeline = Pipeline::start(
        PipelineOptions {
            pricing: std::sync::Arc::new(config.pricing.clone()),
            commits,
            ..PipelineOptions::from_config(tc)
        },
        sinks,
    )
    .map_err(ServeError::Pipeline)?;

    let handles = store.as_ref().map(|s| (s.reader(), s.writer()));
    let retention = store.as_ref().map(|s| {
        tokentrace_server::spawn_retention(
            s.writer(),
            Duration::from_secs(tc.retention_interval_seconds.max(1)),
        )
    });
    let inference =
        tokentrace_server::Inference::new(&config.inference)?.with_pricing(config.pricing.clone());
    let mut state = AppState::new(
        pipeline.telemetry(),
        handles,
        inference,
        Settings::from_config(&config.server, tc),
    );
    state.metrics = registry;
    state.exporters = exporters;
    let server = &config.server;
    if let Some(jwt) = &state.settings.guard.jwt
        && jwt.uses_jwks()
    {
        // A key set file must be right now; an identity provider may be down a moment: tokens
        // are refused until its key set is fetched, tried again every 30 s.
        let from_file = server
            .auth
            .as_ref()
            .and_then(|a| a.oauth2.as_ref())
            .is_some_and(|o| o.jwks_file.is_some());
        match jwt.refresh().await {
            Ok(n) => tracing::info!("server.auth: oauth2_token with a key set of {n} keys"),
            Err(e) if from_file => return Err(ServeError::Jwks(e)),
            Err(e) => tracing::warn!(
                "server.auth: cannot fetch the key set yet ({e}); tokens are refused until it is"
            ),
        }
    }
    let tls = match &server.tls {
        Some(t) => {
            Some(crate::listen::tls_acceptor(&t.cert_file, &t.key_file).map_err(ServeError::Tls)?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (listener, local) = bind(&server.host, server.port, "server.host/server.port", "").await?;
    let sink_names: Vec<&str> = tc.sinks.iter().map(|s| s.as_str()).collect();
    let models: Vec<&str> = config
        .inference
        .models
        .iter()
        .map(|m| m.model_id.as_str())
        .collect();
    tracing::info!(
        "tokentrace listening on {scheme}://{local}  sinks: {}  models: {}  store: {}",
        sink_names.join(","),
        models.join(","),
        store
            .as_ref()
            .map_or("(none)".to_string(), |s| s.path().display().to_string())
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reader = store.as_ref().map(|s| s.reader());
    tokio::spawn(async move {
        shutdown_signal().await;
        // Queries still running are stopped (answered 503), so shutdown takes no longer than
        // the requests in flight need to answer.
        if let Some(reader) = reader {
            reader.interrupt_all();
        }
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let otlp = match server.otlp_port {
        Some(port) => {
            let (l, otlp_local) = bind(
                &server.host,
                port,
                "server.otlp_port",
                " (server.otlp_port)",
            )
            .await?;
            tracing::info!("OTLP/HTTP receiver listening on {scheme}://{otlp_local}");
            let app = tokentrace_server::otlp_router(state.clone());
            let rx = stop_rx.clone();
            Some(tokio::spawn(crate::listen::serve(
                l,
                app,
                rx,
                HEADER_TIMEOUT,
                tls.clone(),
                state.settings.connections.clone(),
            )))
        }
        None => None,
    };
    let signalled = stop_rx.clone();
    let connections = state.settings.connections.clone();
    let mut main = tokio::spawn(crate::listen::serve(
        listener,
        tokentrace_server::router(state),
        stop_rx,
        HEADER_TIMEOUT,
        tls,
        connections,
    ));
    // Once stopping, connections get as long as a request may take to finish; a client that
    // holds one open (a half-sent request, an endless stream) is then cut.
    let grace = Duration::from_secs(server.request_timeout_seconds);
    let served = tokio::select! {
        r = &mut main => r,
        () = stopped(signalled) => match tokio::time::timeout(grace, &mut main).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "connections still open {} s after the stop signal: closing them",
                    grace.as_secs()
                );
                main.abort();
                Ok(())
            }
        },
    };
    served.map_err(ServeError::Shutdown)?;
    if let Some(mut o) = otlp {
        match tokio::time::timeout(grace, &mut o).await {
            Ok(Err(e)) => tracing::error!("OTLP receiver task: {e}"),
            Ok(Ok(())) => {}
            Err(_) => o.abort(),
        }
    }
    if let Some(r) = retention {
        r.abort();
    }
    tracing::info!("stopping: flushing accepted telemetry");
    // Drain the pipeline and commit the store off the async runtime.
    tokio::task::spawn_blocking(move || {
        pipeline.shutdown();
        match store {
            Some(store) => store.close().map_err(ServeError::Close),
            None => Ok(()),
        }
    })
    .await
    .map_err(ServeError::Shutdown)??;
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
