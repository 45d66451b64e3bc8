//! `tokentrace`: telemetry for LLM applications. `tokentrace serve` runs the server; the other
//! subcommands look at what it stored (`cli/`).

mod cli;
mod listen;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Events are built on the request threads and freed on the pipeline and store threads; glibc's
/// allocator handles that cross-thread pattern poorly (about a fifth of request-thread CPU in the
/// gateway benchmark), mimalloc well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc (v3) gives freed pages back to the system only after a delay, 1 s by default, so
/// under sustained ingest about a second's worth of freed memory (decoded requests, rows once
/// written) stays resident. Purging at once kept the server's peak RSS about 60-100 MiB lower
/// at the same throughput (BENCHMARKS.md, "Memory under load"). `MIMALLOC_PURGE_DELAY` in the
/// environment still decides when set.
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mimalloc's documented call to set an option, with a valid option and value;
        // the option is read when mimalloc decides to purge, so setting it now takes effect.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// `mi_option_purge_delay` in mimalloc.h (libmimalloc-sys 0.1.49, mimalloc v3); a test checks
/// that the option of this number has the purge delay's default.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an option of the linked mimalloc.
        let delay = unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            delay, 1000,
            "option 15 should be purge_delay, whose default is 1,000 ms"
        );
    }
}

#[derive(Parser)]
#[command(
    name = "tokentrace",
    version,
    about = "Telemetry for LLM applications",
    after_help = "Examples:
  tokentrace serve                         run the server (embedded defaults)
  tokentrace traces --since 1h             the last hour's traces
  tokentrace trace <TRACE_ID>              one trace as a tree
  tokentrace tail                          traces as they are stored
  tokentrace sql \"SELECT COUNT(*) FROM spans\"
  tokentrace export --since 24h > day.otlp.jsonl && tokentrace import day.otlp.jsonl --url …

Reading subcommands read the default store file, --db PATH, --config run.yaml's store,
or a running server with --url http://127.0.0.1:8321."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (telemetry API, gateway, trace store, sinks).
    #[command(after_help = "Examples:
  tokentrace serve                                   embedded defaults, 127.0.0.1:8321
  tokentrace serve --config deploy/run.yaml
  TELEMETRY_SINKS=console,sqlite,otel_trace OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 tokentrace serve")]
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
    /// Print the embedded default run config.
    #[command(after_help = "Examples:
  tokentrace default-config > run.yaml               a starting point to edit")]
    DefaultConfig,
    /// List traces, newest first: time, root, service, model, duration, tokens, status.
    Traces(cli::traces::TracesArgs),
    /// Show one trace as a tree with a waterfall of its spans.
    Trace(cli::trace::TraceArgs),
    /// Print traces as they are stored, until Ctrl-C.
    Tail(cli::tail::TailArgs),
    /// Run a read-only SQL statement on the store.
    Sql(cli::sql::SqlArgs),
    /// Totals and a chart of a metric per series over a window.
    Metrics(cli::metrics::MetricsArgs),
    /// LLM calls and tokens over a window, per model, provider, user, session or service.
    Usage(cli::usage::UsageArgs),
    /// Sessions with LLM calls, latest first: turns, calls, tokens, cost, users.
    Sessions(cli::sessions::SessionsArgs),
    /// Write whole traces (spans, events, links) as OTLP/JSON lines or span JSON lines.
    Export(cli::export::ExportArgs),
    /// Send what `export` wrote to a tokentrace server or any OTLP/HTTP receiver.
    Import(cli::export::ImportArgs),
    /// Validate a run config and print the settings in force (secrets masked).
    CheckConfig(cli::check::CheckArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  tokentrace completions bash > ~/.local/share/bash-completion/completions/tokentrace
  tokentrace completions zsh > ~/.zfunc/_tokentrace
  tokentrace completions fish > ~/.config/fish/completions/tokentrace.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    purge_freed_memory_at_once();
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
        Command::Serve { config, port, host } => {
            serve::serve(config, port, host).map_err(|e| e.to_string())
        }
        Command::DefaultConfig => {
            print!("{}", tokentrace_config::DEFAULT_CONFIG_YAML);
            Ok(())
        }
        Command::Traces(a) => cli::traces::run(a).map_err(|e| e.0),
        Command::Trace(a) => cli::trace::run(a).map_err(|e| e.0),
        Command::Tail(a) => cli::tail::run(a).map_err(|e| e.0),
        Command::Sql(a) => cli::sql::run(a).map_err(|e| e.0),
        Command::Metrics(a) => cli::metrics::run(a).map_err(|e| e.0),
        Command::Usage(a) => cli::usage::run(a).map_err(|e| e.0),
        Command::Sessions(a) => cli::sessions::run(a).map_err(|e| e.0),
        Command::Export(a) => cli::export::run_export(a).map_err(|e| e.0),
        Command::Import(a) => cli::export::run_import(a).map_err(|e| e.0),
        Command::CheckConfig(a) => cli::check::run(a).map_err(|e| e.0),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tokentrace",
                &mut std::io::stdout(),
            );
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
