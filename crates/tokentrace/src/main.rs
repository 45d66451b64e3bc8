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

/// mimalloc (v3) keeps freed memory for later: pages freed wait 1 s before they go back to the
/// system (`purge_delay`), and each thread keeps two empty pages of every small size class
/// (`page_full_retain`). Under sustained ingest that kept a second's worth of decoded requests
/// and written rows resident, and pages of every size class on every thread. The server sets
/// both to 0 at start-up: purging at once kept the peak RSS 60-100 MiB lower at the same
/// throughput, retaining no empty page another 6-10 MiB (BENCHMARKS.md, "Memory under load").
/// `MIMALLOC_PURGE_DELAY` and `MIMALLOC_PAGE_FULL_RETAIN` in the environment still decide when
/// set.
#[allow(unsafe_code)]
fn return_freed_memory_at_once() {
    for (option, variable) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
        (MI_OPTION_PAGE_FULL_RETAIN, "MIMALLOC_PAGE_FULL_RETAIN"),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mimalloc's documented call to set an option, with a valid option and
            // value. `purge_delay` is read at each purge; `page_full_retain` by a thread's heap
            // when the thread starts: the main thread's has, every thread spawned after this
            // (the runtime's, the pipeline's, the writer's) reads 0.
            unsafe { mi_option_set(option, 0) };
        }
    }
}

/// `mi_option_purge_delay` and `mi_option_page_full_retain` in mimalloc.h (libmimalloc-sys
/// 0.1.49, mimalloc v3); a test checks that the options of these numbers have those options'
/// defaults.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
const MI_OPTION_PAGE_FULL_RETAIN: std::ffi::c_int = 36;

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
    fn the_options_set_are_mimallocs_purge_delay_and_page_full_retain() {
        for (option, variable, default, name) in [
            (
                super::MI_OPTION_PURGE_DELAY,
                "MIMALLOC_PURGE_DELAY",
                1000,
                "purge_delay",
            ),
            (
                super::MI_OPTION_PAGE_FULL_RETAIN,
                "MIMALLOC_PAGE_FULL_RETAIN",
                2,
                "page_full_retain",
            ),
        ] {
            if std::env::var_os(variable).is_some() {
                continue;
            }
            // SAFETY: reads an option of the linked mimalloc.
            let value = unsafe { super::mi_option_get(option) };
            assert_eq!(
                value, default,
                "option {option} should be {name}, whose default is {default}"
            );
        }
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
    return_freed_memory_at_once();
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
