//! `tokentrace check-config`: validates a run config and prints the settings in force.

use std::path::PathBuf;

use super::out;
use super::{CliError, CliResult};

/// Arguments of `tokentrace check-config`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit code 0 when the config is valid (its effective settings are printed, API keys masked),
1 with the reason when it is not.

Examples:
  tokentrace check-config --config deploy/run.yaml
  TELEMETRY_SINKS=console,sqlite tokentrace check-config"
)]
pub struct CheckArgs {
    /// The run config (YAML); without it, the embedded defaults and the environment.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Runs `tokentrace check-config`.
pub fn run(args: CheckArgs) -> CliResult {
    let cfg = tokentrace_config::load(args.config.as_deref(), &tokentrace_config::process_env)
        .map_err(|e| CliError(format!("config is not valid: {e}")))?;
    let what = args
        .config
        .as_ref()
        .map_or("the embedded defaults".to_string(), |p| {
            p.display().to_string()
        });
    eprintln!("{what}: valid; the settings in force:");
    print!("{}", cfg.effective_yaml());
    out::line("");
    Ok(())
}
